"""``medfuse export`` and ``medfuse verify``."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from medfuse.core.console import Handler, console
from medfuse.core.trust import add_trust_arguments, trust_from_args
from medfuse.export import DEFAULT_OPSET

if TYPE_CHECKING:
    from rich.table import Table

    from medfuse.export.verify import VerifyReport


def report_table(report: VerifyReport) -> Table:
    from rich.table import Table  # lazy: rich, only to print

    sig = report.signature or "signature not checked"
    t = Table(
        title=f"verify {report.package}  (checksums ok; {sig}; digest {report.digest[:16]}...; "
        f"inputs: {report.inputs})"
    )
    for col in ("runtime", "device", "precision", "n", "max |diff|", "labels agree", "criterion"):
        t.add_column(col, justify="right" if col in ("n", "max |diff|", "labels agree") else "left")
    t.add_column("result")
    t.add_column("note", overflow="fold")
    for c in report.checks:
        colour = {"ok": "green", "fail": "red"}.get(c.status, "yellow")
        t.add_row(
            c.runtime,
            c.device,
            c.precision,
            str(c.n or ""),
            "" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}",
            "" if c.label_agreement is None else f"{c.label_agreement:.2%}",
            c.criterion,
            f"[{colour}]{c.status}[/{colour}]",
            c.note,
        )
    return t


def _print_report(report: VerifyReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        c = console()
        c.print(report_table(report))
        c.print("[green]verified[/green]" if report.ok else "[red]verification FAILED[/red]")
    return 0 if report.ok else 1


def setup_export(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--format", default="onnx", choices=["onnx", "pt2"])
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument("--samples", type=int, default=16, help="verification samples (default 16)")
    p.add_argument("--refresh", action="store_true", help="rebuild verification.npz")
    p.add_argument("--data-dir", help="data root for the verification inputs (validation split)")
    p.add_argument("--device", default="cpu", help="device for the verification run (default cpu)")
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch and onnx, only when the verb runs
        from medfuse.export.exporter import export_package

        res = export_package(
            a.package,
            format=a.format,
            opset=a.opset,
            data_dir=a.data_dir,
            device=a.device,
            samples=a.samples,
            refresh=a.refresh,
        )
        if not a.json:
            c = console()
            for note in res.notes:
                c.print(note)
            if res.written:
                c.print(f"wrote {', '.join(res.written)} into {res.package}")
        assert res.report is not None  # export_package verifies unless told not to
        return _print_report(res.report, a.json)

    return run


def setup_verify(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument(
        "--runtime",
        default="all",
        choices=["all", "torch", "onnx", "pt2"],
        help="all (default: every runtime present here) or one",
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--tolerance", type=float, default=None, help="fp32 max |diff| (1e-4)")
    p.add_argument(
        "--split",
        choices=["val", "test", "train"],
        help="verify on a whole split of the package's data (reference computed by PyTorch)",
    )
    p.add_argument("--data-dir", help="data root (with --split)")
    add_trust_arguments(p)
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from medfuse.export.verify import (  # lazy: ONNX Runtime and the package reader, only to verify
            TOLERANCE,
            verify_package,
        )

        report = verify_package(
            a.package,
            runtimes="all" if a.runtime == "all" else [a.runtime],
            device=a.device,
            tolerance=a.tolerance if a.tolerance is not None else TOLERANCE,
            split=a.split,
            data_dir=a.data_dir,
            trust=trust_from_args(a),
        )
        return _print_report(report, a.json)

    return run


def setup_sign(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--key", help="elliptic-curve private key (PEM; P-256, P-384 or P-521)")
    p.add_argument("--password-env", help="environment variable holding the key's password")
    p.add_argument(
        "--sigstore",
        action="store_true",
        help="keyless signing with your Sigstore identity (browser login; needs the network)",
    )

    def run(a: argparse.Namespace) -> int:
        # lazy: stdlib, kept off the --help path
        import os

        from medfuse.core.signing import (  # lazy: model-signing, only when signing
            package_digest,
            sign_package,
        )

        password = os.environ.get(a.password_env) if a.password_env else None
        sig = sign_package(a.package, key=a.key, password=password, sigstore=a.sigstore)
        console().print(f"signed {a.package}: {sig.name} (digest {package_digest(a.package)})")
        return 0

    return run
