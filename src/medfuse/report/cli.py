"""Clinical evaluation verbs: ``medfuse compare``, ``medfuse calibrate``, ``medfuse report``, and
the options that turn ``medfuse evaluate`` into an evaluation with confidence intervals
(``--ci`` default, ``--bootstrap N``, ``--subgroup COL``, ``--threshold-method ... --target``)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from medfuse.core.console import (
    Handler,
    command_line,
    console,
    data_arg,
    data_dir_arg,
    overwrite_arg,
)
from medfuse.core.paths import output_file, write_output

if TYPE_CHECKING:
    from collections.abc import Callable

    from medfuse.report.clinical import Evaluation

THRESHOLD_CHOICES = ["youden", "sensitivity", "specificity", "fixed"]


def _bootstrap_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples (default 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def _threshold_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--threshold-method",
        choices=THRESHOLD_CHOICES,
        help=f"re-choose the operating point on validation ({what}; binary tasks)",
    )
    p.add_argument(
        "--target", type=float, help="target sensitivity/specificity, e.g. 0.95 for screening"
    )
    p.add_argument("--value", type=float, help="the threshold for --threshold-method fixed")


# ---- evaluate (the core verb in cli.py calls these) ------------------------------------------


def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """The clinical options of ``medfuse evaluate``."""
    p.add_argument(
        "--ci",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="95%% bootstrap CIs for every metric (default on; --no-ci: point metrics only)",
    )
    _bootstrap_args(p)
    p.add_argument(
        "--subgroup",
        metavar="COL",
        help="metrics per value of a metadata column (sex, site, ...) or tabular input (age: "
        "quartile bands)",
    )
    _threshold_args(p, "for this evaluation only; `medfuse calibrate` stores one")


def clinical_requested(a: argparse.Namespace) -> bool:
    return bool(getattr(a, "ci", False) or a.subgroup or a.threshold_method)


def check_evaluate_options(a: argparse.Namespace) -> None:
    """The clinical options of ``medfuse evaluate``, checked before the evaluation runs."""
    if clinical_requested(a):
        from medfuse.report.clinical import check_options  # lazy: the data stack

        check_options(a.bootstrap, a.threshold_method, a.target, a.value)


def run_clinical_evaluate(
    a: argparse.Namespace, announce: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """``medfuse evaluate`` with CIs: the core metrics dict (``medfuse.api.evaluate``'s keys)
    plus ``ci``, ``bootstrap``, ``threshold``, ``subgroups``, ``per_modality`` and
    ``calibration``; ``announce``d before it is printed, and returned. The split is scored once
    for both (the core rows are computed from the clinical evaluation's scores). With
    ``--threshold-method`` every row (fused, each branch, each modality removed, paired and
    partial) is at the re-chosen operating point, so no row of the output is at another
    threshold than the one it reports."""
    # lazy: torch and the data stack, only when the verb runs
    from medfuse.api import evaluation_record
    from medfuse.report.clinical import clinical_evaluation, jsonable

    reading = {"split": a.split, "data_dir": a.data_dir, "device": a.device, "data": a.data}
    ev = clinical_evaluation(
        a.package,
        **reading,
        n_boot=a.bootstrap,
        seed=a.seed,
        subgroup=a.subgroup,
        threshold_method=a.threshold_method,
        target=a.target,
        threshold_value=a.value,
    )
    s = ev.summary
    scores = ev.predictions.scores
    assert scores is not None  # predict_split keeps them
    # at the re-chosen operating point, when there is one: every row
    thr = s["threshold"]["value"] if a.threshold_method else None
    out = evaluation_record(ev.predictor, ev.bundle, a.split, scores, thr)
    if s["threshold"].get("caution"):  # the stored one's, or the re-chosen one's
        out["threshold_caution"] = s["threshold"]["caution"]
    if a.threshold_method:
        out.update({k: v["value"] for k, v in s["metrics"].items()})
        out["confusion_matrix"] = s["confusion_matrix"]
        out["threshold"] = s["threshold"]["value"]
    out["ci"] = {k: [v["lo"], v["hi"]] for k, v in s["metrics"].items()}
    for k in ("bootstrap", "threshold", "calibration", "subgroups", "per_modality"):
        if k in s:
            out[k if k != "threshold" else "operating_point"] = s[k]
    out["calibration"] = {
        k: v
        for k, v in out.get("calibration", {}).items()
        if k not in ("before_after", "reliability")
    }
    announce(out)
    text = json.dumps(jsonable(out), indent=2)
    if a.output:
        write_output(a.output, text, "--output")
    if a.json:
        print(text)
        return out
    print_evaluation(ev)
    return out


def print_evaluation(ev: Evaluation) -> None:
    from rich.markup import escape  # lazy: as console(); the user's words are never markup
    from rich.table import Table  # lazy: rich, only to print

    # lazy: torch and the data stack, only when the verb runs
    from medfuse.report.ci import fmt_interval

    s = ev.summary
    c = console()
    t = Table(title=f"{s['package']['path']} ({s['split']}, n={s['n']})")
    t.add_column("metric")
    t.add_column("estimate (95% CI)", justify="right")
    for k, iv in s["metrics"].items():
        t.add_row(k, fmt_interval(iv))
    c.print(t)
    b = s["bootstrap"]
    thr = s["threshold"]
    c.print(
        f"CIs: exact (Clopper-Pearson) for proportions, else {b['resamples']} percentile "
        f"bootstrap resamples of {b['unit']} (seed {b['seed']}); n/a: too few of a class; "
        f"threshold {thr['value']:.4f} ({thr.get('method')}, {thr.get('source', 'package')})"
    )
    pm = s.get("per_modality")
    if pm:
        t = Table(title="per modality")
        t.add_column("")
        for k in ("auroc", "auprc"):
            t.add_column(k, justify="right")
        for name, m in pm["rows"].items():
            label = f"{name} (n={m['n']})" if "n" in m else name
            t.add_row(label, *[fmt_interval(m[k]) if k in m else "" for k in ("auroc", "auprc")])
        c.print(t)
    sg = s.get("subgroups") or {}
    if sg.get("column"):
        t = Table(title=f"subgroups: {sg['column']}")
        for col in ("group", "n", "auroc", "sensitivity", "specificity"):
            t.add_column(col)
        for g, d in sg["groups"].items():
            m = d["metrics"]
            t.add_row(
                g,
                str(d["n"]),
                *[
                    fmt_interval(m[k]) if k in m else ""
                    for k in ("auroc", "sensitivity", "specificity")
                ],
            )
        c.print(t)
        if sg.get("gap"):
            gap = sg["gap"]
            c.print(f"gap ({gap['metric']}, {gap['best']} - {gap['worst']}): {fmt_interval(gap)}")
        if sg.get("macro_note"):  # the groups' macro means over different classes
            c.print("[bold yellow]subgroups:[/] " + escape(sg["macro_note"]))
    elif sg.get("note") and sg.get("note") != "subgroup analysis not requested":
        c.print(sg["note"])


# ---- compare -----------------------------------------------------------------------------------


def setup_compare(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("packages", nargs="+", help="two or more packages; the first is the reference")
    p.add_argument("--split", default="test", choices=["test", "val"])
    data_dir_arg(p)
    data_arg(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--metric", default="auroc", help="metric compared (default auroc)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    _bootstrap_args(p)
    p.add_argument("--json", action="store_true", help="print JSON only")
    p.add_argument("-o", "--output", help="also write the JSON to this file")

    def run(a: argparse.Namespace) -> int:
        from rich.table import Table  # lazy: rich, only to print

        # lazy: torch and the data stack, only when the verb runs
        from medfuse.report.ci import fmt_interval

        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.report.clinical import jsonable

        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.report.compare import compare_packages

        if a.output:  # before the comparison: a folder that is missing or not writable
            output_file(a.output, "--output")
        res = compare_packages(
            a.packages,
            split=a.split,
            data_dir=a.data_dir,
            device=a.device,
            metric=a.metric,
            n_boot=a.bootstrap,
            seed=a.seed,
            alpha=a.alpha,
            data=a.data,
        )
        text = json.dumps(jsonable(res), indent=2)
        if a.output:
            write_output(a.output, text, "--output")
        if a.json:
            print(text)
            return 0
        c = console()
        keys = ("auroc", "auprc", "sensitivity", "specificity", "ece")
        t = Table(title=f"{a.split} set, n={res['n']} (95% CI)")
        t.add_column("package")
        t.add_column("modalities")
        t.add_column("model")
        for k in keys:
            t.add_column(k, justify="right")
        for m in res["models"]:
            t.add_row(
                m["name"],
                "+".join(m["modalities"]),
                f"{m['model']['precision']} {m['model']['file']}",
                *[fmt_interval(m["metrics"][k]) if k in m["metrics"] else "" for k in keys],
            )
        c.print(t)
        for cmp in res["comparisons"]:
            b = cmp["bootstrap"]
            head = f"{cmp['a']} - {cmp['b']}: {a.metric} difference {b['diff']:+.4f}"
            if cmp["p"] != cmp["p"]:  # NaN: too few of a class for an interval or a test
                why = (cmp.get("delong") or {}).get("note") or b.get("method", "")
                c.print(f"{head}; no {cmp['test']} test ({why})")
                continue
            verdict = "SIGNIFICANT" if cmp["significant"] else "not significant"
            holm = f", Holm-adjusted p={cmp['p_holm']:.4g}" if "p_holm" in cmp else ""
            c.print(
                f"{head} (95% CI {b['lo']:+.4f} to {b['hi']:+.4f}); {cmp['test']} "
                f"p={cmp['p']:.4g}{holm} -> {verdict} at alpha={a.alpha}"
            )
        c.print(f"resampling: {res['bootstrap']['unit']}, {a.bootstrap} resamples, seed {a.seed}")
        return 0

    return run


# ---- calibrate ---------------------------------------------------------------------------------


def setup_calibrate(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("--out", help="write a calibrated copy here (default: update in place)")
    overwrite_arg(p)
    data_dir_arg(p)
    data_arg(p)
    p.add_argument("--device", default="cpu")
    _threshold_args(p, "stored in the package")
    p.add_argument("--figure", help="also write the before/after reliability diagrams (PNG)")
    p.add_argument("--json", action="store_true", help="print JSON only")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch and the data stack, only when the verb runs
        from medfuse.report.calibration import calibrate_package

        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.report.clinical import jsonable

        if a.figure:  # before the calibration: a folder that is missing or not writable
            output_file(a.figure, "--figure")
        res = calibrate_package(
            a.package,
            out=a.out,
            data_dir=a.data_dir,
            device=a.device,
            threshold_method=a.threshold_method,
            target=a.target,
            value=a.value,
            command=command_line(),
            data=a.data,
            overwrite=a.overwrite,
        )
        if a.figure:
            _calibration_figure(res["package"], a.data_dir, a.device, a.figure, a.data)
        if a.json:
            print(json.dumps(jsonable(res), indent=2))
            return 0
        r, thr = res["calibration"], res["threshold"]
        c = console()
        c.print(f"temperature T = {r['temperature']:.4f} (fitted on validation, NLL)")
        if r.get("model"):  # the logits it was fitted on: the model the package deploys
            from rich.markup import escape  # lazy: as console()

            from medfuse.core.predictor import scored_text  # lazy: numpy, not for --help

            c.print(escape(scored_text(r["model"], "fitted on the logits of")))
        c.print(
            f"val  ECE {r['ece_before']:.4f} -> {r['ece_after']:.4f}   Brier "
            f"{r['brier_before']:.4f} -> {r['brier_after']:.4f}   NLL {r['nll_before']:.4f} -> "
            f"{r['nll_after']:.4f}   ({r['binning']})"
        )
        if "test_ece_before" in r:
            c.print(
                f"test ECE {r['test_ece_before']:.4f} -> {r['test_ece_after']:.4f}   Brier "
                f"{r['test_brier_before']:.4f} -> {r['test_brier_after']:.4f}"
            )
        if "value" in thr:
            c.print(
                f"threshold {thr.get('value_before_calibration', thr['value']):.4f} -> "
                f"{thr['value']:.4f} ({thr.get('method')}"
                + (f", target {thr['target']}" if thr.get("target") else "")
                + (f"; {thr['note']}" if thr.get("note") else "")
                + ")"
            )
        if r.get("note"):  # a temperature at a bound; a multiclass AUROC that moved
            from rich.markup import escape  # lazy: as console()

            c.print("[bold yellow]note:[/] " + escape(r["note"]))
        c.print(f"package: {res['package']}" + (f"; figure: {a.figure}" if a.figure else ""))
        return 0

    return run


def _calibration_figure(
    package: str, data_dir: str | None, device: str, out: str, data: str | None = None
) -> None:
    # lazy: torch and the data stack, only when the verb runs
    from medfuse.core.decision import probabilities

    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.inference.helpers import package_data

    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.inference.predictor import load

    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.report import calibration as cal

    # lazy: medfuse's heavier layers, off the --help and torch-free paths
    from medfuse.report.plots import reliability_png

    pred = load(package, device=device, deployed=True)
    bundle = package_data(pred.spec, pred.meta, data_dir, data=data, split="val")
    lg = pred.logits(bundle.val)
    y = bundle.val.y
    t = pred.temperature
    png = reliability_png(
        [
            ("val: before (T=1)", cal.reliability(pred.task, y, probabilities(pred.task, lg, 1.0))),
            (
                f"val: after (T={t:.3g})",
                cal.reliability(pred.task, y, probabilities(pred.task, lg, t)),
            ),
        ]
    )
    write_output(out, png, "--figure")


# ---- report ------------------------------------------------------------------------------------


def setup_report(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("package")
    p.add_argument("-o", "--output", default="report.html", help="HTML file (default report.html)")
    p.add_argument("--split", default="test", choices=["test", "val"])
    data_dir_arg(p)
    data_arg(p)
    p.add_argument("--device", default="cpu")
    _bootstrap_args(p)
    p.add_argument(
        "--subgroup",
        default="auto",
        metavar="COL",
        help="subgroup column (default: auto, e.g. sex when the metadata has it; 'none' to skip)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the evaluation summary as JSON")

    def run(a: argparse.Namespace) -> int:
        # lazy: torch and the data stack, only when the verb runs
        from medfuse.report.ci import fmt_interval

        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.report.clinical import jsonable

        # lazy: medfuse's heavier layers, off the --help and torch-free paths
        from medfuse.report.html import write_report

        if a.json:  # before the evaluation: a folder that is missing or not writable
            output_file(a.json, "--json")
        path, ev = write_report(
            a.package,
            a.output,
            split=a.split,
            data_dir=a.data_dir,
            device=a.device,
            n_boot=a.bootstrap,
            seed=a.seed,
            subgroup=None if a.subgroup == "none" else a.subgroup,
            command=command_line(),
            data=a.data,
        )
        if a.json:
            write_output(a.json, json.dumps(jsonable(ev.summary), indent=2), "--json")
        s = ev.summary
        print(
            f"{s['split']} AUROC {fmt_interval(s['metrics']['auroc'], 4)} "
            f"[95% CI, {s['bootstrap']['resamples']} bootstrap resamples of "
            f"{s['bootstrap']['unit']}]"
        )
        print(f"report: {path}")
        return 0

    return run
