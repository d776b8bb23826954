"""``medfuse <verb>``: each verb is a thin call into one application.

``VERBS`` is the static table of verbs: name -> (module, setup function, one-line help, extra).
Only the module of the verb being run is imported (as git and pip do), so ``medfuse --help`` and
``medfuse <verb> --help`` start in a fraction of a second and import neither torch nor pandas.
Each application keeps its verbs in its own ``cli.py`` (``medfuse.export.cli``, ...); the
verbs that span applications (train, evaluate, predict, models, demo) are ``medfuse.cli.verbs``.
A verb's setup function adds its arguments to its parser and returns the handler that runs it.

A verb whose optional dependencies are not installed exits 2 naming the extra to install
(``pip install 'medfuse[train]'``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from typing import NamedTuple

from medfuse import __version__
from medfuse.core.console import Handler, Setup, broken_pipe
from medfuse.core.errors import INTERNAL_ERROR, MedfuseError, internal_error
from medfuse.core.optional import extra_for


class Verb(NamedTuple):
    """One row of the verb table."""

    module: str
    setup: str
    help: str
    #: the pip extra the verb needs (None: the base install)
    extra: str | None


VERBS: dict[str, Verb] = {
    "train": Verb(
        "medfuse.cli.verbs",
        "setup_train",
        "train a composite model from a spec and save a package",
        "train",
    ),
    "evaluate": Verb(
        "medfuse.cli.verbs",
        "setup_evaluate",
        "metrics of a package on its data's test or val split",
        "train",
    ),
    "predict": Verb(
        "medfuse.cli.verbs",
        "setup_predict",
        "probabilities and labels for new samples",
        None,
    ),
    "models": Verb(
        "medfuse.cli.verbs",
        "setup_models",
        "the registered branches and fusions, with their parameters",
        "train",
    ),
    "demo": Verb(
        "medfuse.cli.verbs",
        "setup_demo",
        "the main job on built-in defaults: a synthetic three-modality composite, end to end",
        "train",
    ),
    "explain": Verb(
        "medfuse.explain.cli",
        "setup_explain",
        "explain predictions: Grad-CAM, integrated gradients, modality Shapley values",
        "explain",
    ),
    "export": Verb(
        "medfuse.export.cli",
        "setup_export",
        "write an ONNX or torch.export program into a package, then verify it",
        "export",
    ),
    "verify": Verb(
        "medfuse.export.cli",
        "setup_verify",
        "check a package's checksums and its runtimes' parity on this device",
        None,
    ),
    "sign": Verb(
        "medfuse.export.cli",
        "setup_sign",
        "sign a package (every file, medfuse.json included) into its model.sig",
        "signing",
    ),
    "serve": Verb(
        "medfuse.serve.cli",
        "setup_serve",
        "serve a package over HTTP (FastAPI on uvicorn; ONNX Runtime by default)",
        "serve",
    ),
    "quantize": Verb(
        "medfuse.compress.cli",
        "setup_quantize",
        "INT8 ONNX model of a package (static QDQ for CNNs, dynamic for RNN/linear)",
        "compress",
    ),
    "prune": Verb(
        "medfuse.compress.cli",
        "setup_prune",
        "structured (per-branch channels) or unstructured pruning, then fine-tuning",
        "compress",
    ),
    "distill": Verb(
        "medfuse.compress.cli",
        "setup_distill",
        "knowledge distillation from a package (or an ensemble) into a student spec",
        "compress",
    ),
    "benchmark": Verb(
        "medfuse.compress.cli",
        "setup_benchmark",
        "one table of size, MACs, latency and metrics for packages; Pareto plot",
        "compress",
    ),
    "compare": Verb(
        "medfuse.report.cli",
        "setup_compare",
        "packages on the same test set: metrics with CIs and a paired AUROC test",
        "train",
    ),
    "calibrate": Verb(
        "medfuse.report.cli",
        "setup_calibrate",
        "fit temperature scaling on validation and store it (and the threshold)",
        "train",
    ),
    "report": Verb(
        "medfuse.report.cli",
        "setup_report",
        "a self-contained HTML evaluation report (plots embedded) for a package",
        "train",
    ),
}


def missing_extra(verb: str, err: ModuleNotFoundError) -> str | None:
    """The extra that provides the module ``err`` says is missing (the verb's own extra when it
    includes it), or None when that module is not an optional dependency of medfuse (then the
    error is a defect, not an install)."""
    return extra_for(err.name or "", VERBS[verb].extra if verb in VERBS else None)


def _build(only: Iterable[str] | None) -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="medfuse",
        description="Compose, train, compress and migrate multimodal medical models.",
    )
    parser.add_argument("--version", action="version", version=f"medfuse {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; the traceback of an internal error",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    wanted = set(VERBS) if only is None else set(only)
    handlers: dict[str, Handler] = {}
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.help)
        if name in wanted:
            handlers[name] = load_setup(name)(p)
    return parser, handlers


def load_setup(name: str) -> Setup:
    """The setup function of verb ``name`` (imports its module)."""
    verb = VERBS[name]
    setup: Setup = getattr(importlib.import_module(verb.module), verb.setup)
    return setup


def build_parser(verbs: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``medfuse`` parser; ``verbs`` (default: all) get their arguments, the others only
    their name and help (what ``medfuse --help`` shows)."""
    return _build(verbs)[0]


def _verb_of(argv: list[str]) -> str | None:
    """The verb in ``argv`` (the top-level options take no value, so the first positional)."""
    first = next((x for x in argv if not x.startswith("-")), None)
    return first if first in VERBS else None


def _verbose(argv: list[str], verb: str | None) -> bool:
    """``-v``/``--verbose`` among the top-level options (before the verb)."""
    top = argv[: argv.index(verb)] if verb in argv else argv
    return any(x in ("-v", "--verbose") for x in top)


def _internal(verb: str | None, err: Exception, argv: list[str]) -> int:
    """An unexpected exception: one line naming it and how to get the traceback (exit 70)."""
    if _verbose(argv, verb):
        raise err
    rerun = f"medfuse -v {verb} ..." if verb else "medfuse -v ..."
    print(internal_error(f"medfuse {verb}" if verb else "medfuse", err, rerun), file=sys.stderr)
    return INTERNAL_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Every failure a user's input can cause is a ``MedfuseError`` (its message
    on stderr, its exit code: ``medfuse.core.errors``); anything else is a defect, reported on
    one line with exit code 70 (``-v``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _verb_of(argv)
    try:
        parser, handlers = _build([verb] if verb else [])
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s"
            if args.verbose
            else "%(message)s",
            stream=sys.stderr,
        )
        if not args.verb:
            parser.print_help()
            return 2
        return int(handlers[args.verb](args) or 0)
    except MedfuseError as err:
        print(f"medfuse {verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as err:
        extra = missing_extra(verb or "", err)
        if extra is None:
            return _internal(verb, err, argv)
        print(
            f"medfuse {verb}: needs {err.name}, which is not installed here; install the "
            f"{extra!r} extra: pip install 'medfuse[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # whoever read stdout went away (`medfuse models | head`)
        return broken_pipe()
    except Exception as err:  # after every user-caused failure above: a defect
        return _internal(verb, err, argv)


if __name__ == "__main__":
    sys.exit(main())
