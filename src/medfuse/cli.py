"""``medfuse <verb>``: each verb is a thin call into one API function.

Verbs live in small modules that register themselves with ``@command``; ``COMMAND_MODULES`` lists
the modules to import (one line per area, so areas do not collide).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfuse.core.errors import MedfuseError

Handler = Callable[[argparse.Namespace], int | None]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}

#: modules whose import registers more verbs (each area adds its own line)
COMMAND_MODULES: list[str] = [
    "medfuse.explain.cli",
    "medfuse.export.cli",
    "medfuse.serve.cli",
    "medfuse.compress.cli",
    "medfuse.report.cli",
]


def command(
    name: str, help: str
) -> Callable[
    [Callable[[argparse.ArgumentParser], Handler]], Callable[[argparse.ArgumentParser], Handler]
]:
    """Register a verb: the decorated function adds its arguments and returns the handler."""

    def deco(
        setup: Callable[[argparse.ArgumentParser], Handler],
    ) -> Callable[[argparse.ArgumentParser], Handler]:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        holder: dict[str, Handler] = {}

        def add(p: argparse.ArgumentParser) -> None:
            holder["h"] = setup(p)

        _COMMANDS[name] = (help, add, lambda a: holder["h"](a))
        return setup

    return deco


def console():
    from rich.console import Console

    c = Console(soft_wrap=True)
    if not c.is_terminal:  # pipes and CI logs: wide enough that metric tables are not truncated
        c = Console(soft_wrap=True, width=160)
    return c


def metrics_table(title: str, rows: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> Any:
    from rich.table import Table

    t = Table(title=title)
    t.add_column("")
    for k in keys:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(
            name,
            *[f"{m[k]:.4f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in keys],
        )
    return t


def command_line() -> str:
    """This invocation as a shell-quoted ``medfuse ...`` line (recorded in packages)."""
    return " ".join(shlex.quote(x) for x in ["medfuse", *sys.argv[1:]])


def data_dir_arg(p: argparse.ArgumentParser) -> None:
    """The ``--data-dir`` option every verb that reads a package's data shares."""
    p.add_argument("--data-dir", help="data root (default: $MEDFUSE_DATA_DIR or ~/.cache/medfuse)")


def _common_data(p: argparse.ArgumentParser) -> None:
    data_dir_arg(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")


# ---- core verbs ---------------------------------------------------------------------------


@command("train", "train a composite model from a spec and save a package")
def _train(p: argparse.ArgumentParser) -> Handler:
    p.add_argument(
        "config",
        nargs="?",
        help="spec YAML/JSON (or a shipped config name: synthetic, breastmnist, ...); "
        "not with --table",
    )
    t = p.add_argument_group("a table in (instead of a spec; README: Your own data)")
    t.add_argument("--table", help="CSV, one row per sample: file paths, clinical values, label")
    t.add_argument("--label", help="the label column (with --table)")
    t.add_argument("--positive", help="the positive class of a binary string label")
    t.add_argument("--id-column", help="the id column (default: by name, e.g. id, case_id)")
    t.add_argument(
        "--patient-column", help="the patient column (default: by name, e.g. patient_id)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec field (repeatable)",
    )
    p.add_argument("--out", help="package directory (default runs/<name>)")
    _common_data(p)
    p.add_argument("--seed", type=int, help="overrides train.seed")
    p.add_argument(
        "--on-bad-row",
        choices=["fail", "missing"],
        help="a manifest row whose file is missing or unreadable: fail the run, or treat that "
        "modality as missing and count it (sets data.on_bad_row)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    from medfuse.distributed.launch import add_launch_arguments, launch_from_cli

    add_launch_arguments(p)  # --strategy, --nproc, --nnodes, --node-rank, --rdzv-endpoint, ...
    p.add_argument(
        "--track",
        choices=["mlflow"],
        help="log params, per-epoch metrics and the package to MLflow (pip install "
        "medfuse[tracking]); off by default",
    )
    p.add_argument("--track-uri", help="MLflow tracking URI (default: local file store ./mlruns)")

    def run(a: argparse.Namespace) -> int:
        from medfuse.api import train
        from medfuse.report.tracking import tracking
        from medfuse.training.metrics import SUMMARY_KEYS

        overrides = a.overrides + ([f"data.on_bad_row={a.on_bad_row}"] if a.on_bad_row else [])
        if (a.table is None) == (a.config is None):
            p.error("give a spec (CONFIG) or --table CSV --label COLUMN, not both")
        if a.table is not None:  # infer and save <out>.spec.yaml, then train from it
            from medfuse.data.table import write_table_spec

            if not a.label:
                p.error("--table needs --label COLUMN")
            ts, out, a.config = write_table_spec(
                a.table,
                label=a.label,
                positive=a.positive,
                out=a.out,
                id_column=a.id_column,
                patient_column=a.patient_column,
                seed=0 if a.seed is None else a.seed,
                overrides=overrides,
            )
            a.out, overrides = str(out), []
            report = sys.stderr if a.json else sys.stdout  # --json: stdout is the JSON only
            print(f"{ts.describe()}\nspec saved: {a.config}", file=report, flush=True)
        elif a.label or a.positive or a.id_column or a.patient_column:
            p.error("--label, --positive, --id-column and --patient-column go with --table")
        launched = launch_from_cli(p, a)  # --nproc/--nnodes: torchrun starts the workers
        if launched is not None:
            return launched
        params = None
        if a.track:
            from medfuse.core.spec import load_spec

            params = {**load_spec(a.config, overrides).to_dict(), "cli": {"seed": a.seed}}
        with tracking(a.track, a.track_uri, params=params) as tracker:
            res = train(
                a.config,
                out=a.out,
                data_dir=a.data_dir,
                device=a.device,
                seed=a.seed,
                resume=a.resume,
                overrides=overrides,
                command=command_line(),
                strategy=a.strategy,
                on_epoch=tracker.on_epoch if tracker else None,
            )
            if tracker:
                tracker.finish(res)
        from medfuse.distributed.strategies import is_main_process

        if not is_main_process():  # other ranks: rank 0 prints and writes the package
            return 0
        if a.json:
            print(
                json.dumps(
                    {"package": str(res.package), "metrics": res.metrics}, indent=2, default=str
                )
            )
            return 0
        c = console()
        rows = {s: res.metrics[s] for s in ("val", "test") if s in res.metrics}
        c.print(metrics_table("metrics", rows, SUMMARY_KEYS))
        c.print(f"package: {res.package}  ({res.seconds:.1f} s)")
        return 0

    return run


@command("evaluate", "metrics of a package on its data's test or val split")
def _evaluate(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    _common_data(p)
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("-o", "--output", help="also write the metrics JSON to this file")
    from medfuse.report.cli import add_evaluate_options, clinical_requested

    add_evaluate_options(p)  # --ci/--no-ci, --bootstrap, --subgroup, --threshold-method, --target

    def run(a: argparse.Namespace) -> int:
        from medfuse.api import evaluate
        from medfuse.training.metrics import SUMMARY_KEYS

        m = evaluate(a.package, split=a.split, data_dir=a.data_dir, device=a.device)
        if clinical_requested(a):  # CIs, operating point, subgroups (medfuse.report)
            from medfuse.report.cli import run_clinical_evaluate

            rc = run_clinical_evaluate(a, m)
            if not a.json and "paired" in m:  # some samples miss a modality
                rows = {"all": m, **{f"{k} (n={m[k]['n']})": m[k] for k in ("paired", "partial")}}
                console().print(
                    metrics_table("fully paired vs partial samples", rows, SUMMARY_KEYS)
                )
            return rc
        text = json.dumps(m, indent=2, default=str)
        if a.output:
            Path(a.output).write_text(text)
        if a.json:
            print(text)
            return 0
        rows = {
            "fused": m,
            **{f"{k} only": v for k, v in m.get("branches", {}).items()},
            **{f"without {k}": v for k, v in m.get("without", {}).items()},
            **{
                f"{k} (n={m[k]['n']})": m[k]
                for k in ("paired", "partial")  # all modalities present / some missing
                if k in m
            },
        }
        console().print(
            metrics_table(f"{a.package} ({a.split}, n={m.get('n')})", rows, SUMMARY_KEYS)
        )
        return 0

    return run


@command("predict", "probabilities and labels for new samples")
def _predict(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument(
        "--input",
        required=True,
        help="manifest .csv, .npz with one array per modality, or one image/signal file",
    )
    p.add_argument("--out", help="output .csv or .parquet (default: print)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--runtime",
        default="torch",
        choices=["torch", "onnx"],
        help="torch (the weights) or onnx (model.onnx via ONNX Runtime; run medfuse export first)",
    )

    def run(a: argparse.Namespace) -> int:
        # streams a manifest in chunks (constant memory), progress bar on a terminal
        from medfuse.serve.batch import predict_stream

        n = predict_stream(
            a.package,
            a.input,
            a.out,
            runtime=a.runtime,
            device=a.device,
            batch_size=a.batch_size,
        )
        if a.out:
            console().print(f"{n} predictions -> {Path(a.out)}")
        return 0

    return run


@command("models", "the registered branches and fusions, with their parameters")
def _models(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from medfuse.models import BRANCHES, FUSIONS

        out = {
            "branches": {
                n: {"doc": BRANCHES.doc(n), "params": BRANCHES.params(n, skip=("input_shape",))}
                for n in BRANCHES.names()
            },
            "fusions": {
                n: {
                    "doc": FUSIONS.doc(n),
                    "params": FUSIONS.params(n, skip=("feature_dims", "num_outputs")),
                }
                for n in FUSIONS.names()
            },
        }
        if a.json:
            print(json.dumps(out, indent=2, default=str))
            return 0
        from rich.table import Table

        for family, items in out.items():
            t = Table(title=family)
            for col in ("name", "parameters (defaults)", "what"):
                t.add_column(col)
            for n, d in items.items():
                t.add_row(n, ", ".join(f"{k}={v}" for k, v in d["params"].items()), d["doc"])
            console().print(t)
        return 0

    return run


@command(
    "demo", "the main job on built-in defaults: a synthetic three-modality composite, end to end"
)
def _demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--out", default="runs/demo", help="package directory (default runs/demo)")
    p.add_argument("--device", default="auto")

    def run(a: argparse.Namespace) -> int:
        from medfuse.demo import run_demo

        run_demo(out=a.out, device=a.device, console=console())
        return 0

    return run


# ---- entry point --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    for mod in COMMAND_MODULES:
        importlib.import_module(mod)
    parser = argparse.ArgumentParser(
        prog="medfuse",
        description="Compose, train, compress and migrate multimodal medical models.",
    )
    from medfuse import __version__

    parser.add_argument("--version", action="version", version=f"medfuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (help_, add, _) in _COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s" if args.verbose else "%(message)s",
        stream=sys.stderr,
    )
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return int(_COMMANDS[args.verb][2](args) or 0)
    except MedfuseError as err:
        print(f"medfuse {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
