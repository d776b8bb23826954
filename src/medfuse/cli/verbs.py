"""The verbs that span applications: ``train``, ``evaluate``, ``predict``, ``models``, ``demo``.

Setting up a verb's arguments imports the standard library only (``medfuse <verb> --help`` stays
well under a second); each handler imports what it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from medfuse.core.console import (
    Handler,
    command_line,
    console,
    data_arg,
    data_dir_arg,
    device_arg,
    metrics_table,
)
from medfuse.core.optional import RUNTIMES
from medfuse.core.paths import output_file, write_output
from medfuse.distributed.launch import add_launch_arguments, launch_from_cli
from medfuse.report.cli import (
    add_evaluate_options,
    check_evaluate_options,
    clinical_requested,
    run_clinical_evaluate,
)
from medfuse.report.tracking import tracking


def _data_and_device(p: argparse.ArgumentParser) -> None:
    data_dir_arg(p)
    device_arg(p)


class _Failed(Exception):
    """A training run that ended with a non-zero exit code (a torchrun launch)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _bad_row(a: argparse.Namespace) -> list[str]:
    """``--on-bad-row`` as the spec override it stands for."""
    return [f"data.on_bad_row={a.on_bad_row}"] if a.on_bad_row else []


def setup_train(p: argparse.ArgumentParser) -> Handler:
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
    _data_and_device(p)
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
    p.add_argument(
        "--resume-override",
        action="append",
        default=[],
        metavar="KEY.PATH",
        help="with --resume: a train.*/threshold.* field allowed to differ from the checkpoint's "
        "spec (repeatable; recorded in the package)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the package already in --out")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_launch_arguments(p)  # --strategy, --nproc, --nnodes, --node-rank, --rdzv-endpoint, ...
    p.add_argument(
        "--track",
        choices=["mlflow"],
        help="log params, per-epoch metrics and the package to MLflow (pip install "
        "medfuse[tracking]); off by default",
    )
    p.add_argument("--track-uri", help="MLflow tracking URI (default: local file store ./mlruns)")

    def run(a: argparse.Namespace) -> int:
        if (a.table is None) == (a.config is None):
            p.error("give a spec (CONFIG) or --table CSV --label COLUMN, not both")
        if a.table is None:
            if a.label or a.positive or a.id_column or a.patient_column:
                p.error("--label, --positive, --id-column and --patient-column go with --table")
            return train_run(a, a.overrides + _bad_row(a))
        if not a.label:
            p.error("--table needs --label COLUMN")
        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.data.table import table_run
        from medfuse.training.pipeline import left_checkpoint  # lazy: torch, as training

        # infer and save <out>.spec.yaml, then train from it; a failed run puts back the files
        # beside the package it kept
        try:
            with table_run(
                a.table,
                label=a.label,
                positive=a.positive,
                out=a.out,
                overwrite=a.overwrite,
                id_column=a.id_column,
                patient_column=a.patient_column,
                seed=0 if a.seed is None else a.seed,
                overrides=a.overrides + _bad_row(a),
                resumable=left_checkpoint,
            ) as (ts, out, spec_file):
                a.out, a.config = str(out), str(spec_file)
                # the workers of --nproc run the saved spec (worker_argv rebuilds the command
                # from these: with --table left in, every rank refused "not both")
                a.table = a.label = a.positive = a.id_column = a.patient_column = None
                report = sys.stderr if a.json else sys.stdout  # --json: stdout is the JSON only
                print(f"{ts.describe()}\nspec saved: {a.config}", file=report, flush=True)
                code = train_run(a, [])
                if code:
                    raise _Failed(code)
                return 0
        except _Failed as failed:
            return failed.code

    def train_run(a: argparse.Namespace, overrides: list[str]) -> int:
        from medfuse.api import train  # lazy: the training stack (torch) loads only to train
        from medfuse.core.decision import SUMMARY_KEYS  # lazy: numpy, not for --help
        from medfuse.core.spec import load_spec  # lazy: pydantic, not for --help

        launched = launch_from_cli(p, a)  # --nproc/--nnodes: torchrun starts the workers
        if launched is not None:
            return launched
        params = None
        if a.track:
            params = {**load_spec(a.config, overrides).to_dict(), "cli": {"seed": a.seed}}
        with tracking(a.track, a.track_uri, params=params) as tracker:
            res = train(
                a.config,
                out=a.out,
                data_dir=a.data_dir,
                device=a.device,
                seed=a.seed,
                resume=a.resume,
                resume_overrides=a.resume_override,
                overwrite=a.overwrite,
                overrides=overrides,
                command=command_line(),
                strategy=a.strategy,
                on_epoch=tracker.on_epoch if tracker else None,
            )
            if tracker:
                tracker.finish(res)
        from medfuse.distributed.strategies import is_main_process  # lazy: torch (as train)

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
        rows: dict[str, Any] = {s: res.metrics[s] for s in ("val", "test") if s in res.metrics}
        c.print(metrics_table("metrics", rows, SUMMARY_KEYS))
        c.print(f"package: {res.package}  ({res.seconds:.1f} s)")
        return 0

    return run


def setup_evaluate(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    _data_and_device(p)
    data_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("-o", "--output", help="also write the metrics JSON to this file")
    add_evaluate_options(p)  # --ci/--no-ci, --bootstrap, --subgroup, --threshold-method, --target

    def run(a: argparse.Namespace) -> int:
        from medfuse.api import evaluate  # lazy: torch and the data stack, only to evaluate
        from medfuse.core.decision import SUMMARY_KEYS  # lazy: numpy, not for --help

        if a.output:  # before the evaluation: a folder that is missing or not writable
            output_file(a.output, "--output")
        check_evaluate_options(a)  # before the evaluation: --bootstrap, --target, --value
        if clinical_requested(a):  # CIs, operating point, subgroups (medfuse.report)
            m = run_clinical_evaluate(a, _data_lines)  # the split scored once for every table
            if not a.json and "paired" in m:  # some samples miss a modality
                rows = {"all": m, **{f"{k} (n={m[k]['n']})": m[k] for k in ("paired", "partial")}}
                thr = m.get("threshold")
                title = "fully paired vs partial samples" + (
                    f" (threshold {thr:.4g})" if isinstance(thr, float) else ""
                )
                console().print(metrics_table(title, rows, SUMMARY_KEYS))
            return 0
        m = evaluate(a.package, split=a.split, data_dir=a.data_dir, device=a.device, data=a.data)
        _data_lines(m)
        text = json.dumps(m, indent=2, default=str)
        if a.output:
            write_output(a.output, text, "--output")
        if a.json:
            print(text)
            return 0
        rows = {
            f"fused (n={m.get('n')})": m,
            **{f"{k} only (n={v['n']})": v for k, v in m.get("branches", {}).items()},
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


def _data_lines(m: dict[str, Any]) -> None:
    """The positive class, whether the data is the one the package recorded, and how many of a
    manifest's rows were evaluated (stderr)."""
    from rich.markup import escape  # lazy: as console(); the user's words are never markup

    c = console()
    c.stderr = True
    if m.get("positive"):
        c.print(f"positive class: {m['positive']!r} (probabilities are P({m['positive']}))")
    if m.get("model"):
        from medfuse.core.inputs import missing_text, plausibility_text  # lazy: not for --help
        from medfuse.core.predictor import scored_text

        c.print(escape(scored_text(m["model"])))
        if (m.get("missing_values") or {}).get("rows"):  # column names: the user's words
            c.print(escape(f"data: {missing_text(m['missing_values'])}"))
        if (m.get("plausibility") or {}).get("rows"):
            c.print("[bold yellow]data:[/] " + escape(plausibility_text(m["plausibility"])))
    # a threshold chosen on little or inseparable validation data; a multilabel macro mean
    # leaving a label out; a split that chose the epoch, threshold or temperature, or fitted
    for key, head in CAUTIONS:
        if m.get(key):
            c.print(f"[bold yellow]{head}:[/] " + escape(m[key]))
    chk = m.get("data_check") or {}
    if chk.get("same") is True:
        c.print("data: the same as recorded in the package for this split")
    elif chk.get("same") is False:
        c.print(
            "[bold yellow]data DIFFERS from what the package recorded for this split:[/] "
            + "; ".join(chk.get("differences", []))
        )
    rows = m.get("data_rows") or {}
    if rows.get("text"):  # a manifest: how many of its rows, chosen how
        seeded = rows.get("column") is None
        c.print(("[bold yellow]data:[/] " if seeded else "data: ") + escape(rows["text"]))


#: evaluation keys that qualify its numbers, and the head of the line each gets (stderr)
CAUTIONS = (
    ("threshold_caution", "threshold caution"),
    ("macro_note", "macro"),
    ("optimistic", "optimistic"),
)


def setup_predict(p: argparse.ArgumentParser) -> Handler:
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
        default="auto",
        choices=list(RUNTIMES),
        help="torch (the weights), onnx (model.onnx via ONNX Runtime; run medfuse export first) "
        "or auto (default): onnx for an INT8 package (its INT8 model.onnx, as medfuse serve), "
        "else torch when PyTorch is installed and the package has weights, else onnx",
    )
    p.add_argument(
        "--on-bad-row",
        default="fail",
        choices=["fail", "missing"],
        help="an unusable input (unreadable file, NaN values, a non-finite result): fail (the "
        "default, as in training) or missing (predict without it; the row says why)",
    )
    p.add_argument(
        "--base-dir",
        help="directory that relative file paths in the input resolve against (default: the "
        "manifest's own directory)",
    )
    p.add_argument(
        "--issues",
        help="file listing affected rows when more than 20 (default: OUT.issues.csv; with no --out the first 20 are printed)",
    )

    def run(a: argparse.Namespace) -> int:
        from medfuse.runtime import choose_runtime, predict_file  # lazy: numpy, not for --help

        runtime = choose_runtime(a.package, a.runtime)
        from medfuse.core.package import package_id, read_meta  # lazy: as choose_runtime
        from medfuse.core.predictor import scored_model, scored_text

        meta = read_meta(a.package, verify=False)
        model = scored_model(meta, runtime)
        where = ""
        if runtime == "onnx" and a.device.startswith("cuda"):
            from medfuse.core.onnx import onnx_device  # lazy: as choose_runtime

            if onnx_device(model["precision"], a.device) == "cpu":  # OnnxPredictor's rule
                where = f" on the CPU (not {a.device}: INT8 kernels are CPU kernels)"
        print(
            scored_text(model, "predictions of") + where + f"; package {package_id(meta)}",
            file=sys.stderr,
        )
        if caution := (meta.get("threshold") or {}).get("caution"):  # decisions at a weak threshold
            print(f"threshold caution: {caution}", file=sys.stderr)
        try:
            # lazy: pandas (absent in the base install); streams manifests, Parquet out
            from medfuse.serve.batch import predict_stream
        except ModuleNotFoundError as err:
            parquet = a.out is not None and Path(a.out).suffix.lower() != ".csv"
            if err.name != "pandas" or runtime != "onnx" or parquet:
                raise  # exit 2, naming the extra with pandas
            # the base install (no pandas, no torch): the torch-free runtime, CSV out
            res = predict_file(
                a.package,
                a.input,
                a.out,
                device=a.device,
                batch_size=a.batch_size,
                on_bad_row=a.on_bad_row,
                base_dir=a.base_dir,
                issues_out=a.issues,
            )
        else:
            res = predict_stream(
                a.package,
                a.input,
                a.out,
                runtime=runtime,
                device=a.device,
                batch_size=a.batch_size,
                on_bad_row=a.on_bad_row,
                base_dir=a.base_dir,
                issues_out=a.issues,
            )
        for line in res.summary():
            print(line, file=sys.stderr)
        if a.out:
            console().print(f"{res.rows} predictions -> {Path(a.out)}")
        return 0

    return run


def setup_models(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--json", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from medfuse.models import BRANCHES, FUSIONS  # lazy: torch, only for this verb

        out: dict[str, dict[str, dict[str, Any]]] = {
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
        from rich.table import Table  # lazy: rich, only for the table

        for family, items in out.items():
            t = Table(title=family)
            for col in ("name", "parameters (defaults)", "what"):
                t.add_column(col)
            for n, d in items.items():
                t.add_row(n, ", ".join(f"{k}={v}" for k, v in d["params"].items()), d["doc"])
            console().print(t)
        return 0

    return run


def setup_demo(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--out", default="runs/demo", help="package directory (default runs/demo)")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--text",
        action="store_true",
        help="a fourth modality: generated clinical notes (needs the tokenizers library)",
    )

    def run(a: argparse.Namespace) -> int:
        from medfuse.demo import run_demo  # lazy: the training stack, only for the demo

        run_demo(out=a.out, device=a.device, console=console(), text=a.text)
        return 0

    return run
