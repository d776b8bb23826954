"""Issue 17.10: no traceback ever reaches the user.

A corpus of broken inputs (each built once, small, under a module temp folder) runs through every
verb that reads that kind of input: broken packages through every verb that opens a package
(and ``python -m medfuse.runtime``), broken prediction inputs through predict (both runtimes),
explain and the runtime, broken manifests through train (spec and ``--table``) and the verbs
with ``--data``, broken specs and ``--set`` values through train and distill, outputs that cannot
be written, and nonsense numbers. Every (verb, case) must end with a MedfuseError's exit code
(``medfuse.core.errors``: 1 a failed check, 2 usage/spec, 3 data, 4 package), no traceback on
stdout, stderr or the log, and a message naming what is wrong and where.

Verbs run in-process (``medfuse.cli.main``: an exception other than a user error would come out
as exit 70, which fails the test as surely as a traceback); a few run in a subprocess to prove
it at the process level. ``serve`` runs its startup checks only: ``uvicorn.run`` is replaced by
a function that fails the test, so a broken package must be refused before any port is bound.

Outputs: a file output (``predict --out``, ``evaluate --output``, ...) needs an existing,
writable folder; a directory output (a package, ``explain -o``, ``benchmark -o``) is created
with its parents, so only a file in its way or a read-only folder is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from medfuse.cli import main as cli_main
from medfuse.core.errors import INTERNAL_ERROR, DataError, PackageError, SpecError
from medfuse.core.package import seal_meta
from medfuse.runtime import main as runtime_main

USER_CODES = {1, 2, 3, 4}
DATA, PACKAGE, USAGE = DataError.exit_code, PackageError.exit_code, SpecError.exit_code


def test_the_exit_codes_are_those_documented() -> None:
    assert (USAGE, DATA, PACKAGE) == (2, 3, 4)
    assert INTERNAL_ERROR not in USER_CODES


# ---- the corpus ----------------------------------------------------------------------------


@dataclass
class Corpus:
    root: Path
    good: Path  # an exported package (never damaged)
    inputs: Path  # a good .npz for the package
    key: Path  # a private signing key
    student: Path  # a student spec for distill
    spec: Path  # a tiny training spec
    pkgs: dict[str, Path]
    files: dict[str, Path]
    manifests: dict[str, Path]
    specs: dict[str, Path]
    spec_manifest: Path  # a spec whose data is a manifest (set per case with --set)
    file_in_the_way: Path
    read_only: Path | None  # None when permissions do not bind (root)


def _rehash(pkg: Path, name: str) -> None:
    """Record the current sha256 of ``name`` (a damaged file the checksums no longer catch)."""
    meta = json.loads((pkg / "medfuse.json").read_text())
    meta["files"][name] = hashlib.sha256((pkg / name).read_bytes()).hexdigest()
    (pkg / "medfuse.json").write_text(json.dumps(seal_meta(meta)))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _drop_key(key: str) -> Callable[[Path], None]:
    def damage(pkg: Path) -> None:
        meta = json.loads((pkg / "medfuse.json").read_text())
        meta.pop(key)
        (pkg / "medfuse.json").write_text(json.dumps(seal_meta(meta)))

    return damage


PACKAGE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "medfuse.json deleted": lambda p: (p / "medfuse.json").unlink(),
    "medfuse.json truncated": lambda p: _truncate(p / "medfuse.json"),
    "medfuse.json 0 bytes": lambda p: _truncate(p / "medfuse.json", 0),
    "medfuse.json not JSON": lambda p: (p / "medfuse.json").write_text("not json {"),
    "medfuse.json a list": lambda p: (p / "medfuse.json").write_text("[1, 2]"),
    "medfuse.json not UTF-8": lambda p: (p / "medfuse.json").write_bytes(b'\xff\xfe{"a"'),
    **{
        f"key {k} deleted": _drop_key(k)
        for k in ("labels", "task", "spec", "preprocessing", "threshold")
    },
    "weights truncated": lambda p: _truncate(p / "model.safetensors"),
    "weights deleted": lambda p: (p / "model.safetensors").unlink(),
    "weights truncated, checksum updated": lambda p: (
        _truncate(p / "model.safetensors"),
        _rehash(p, "model.safetensors"),
    ),
    "model.onnx truncated, checksum updated": lambda p: (
        _truncate(p / "model.onnx"),
        _rehash(p, "model.onnx"),
    ),
    "verification.npz truncated, checksum updated": lambda p: (
        _truncate(p / "verification.npz"),
        _rehash(p, "verification.npz"),
    ),
}
#: what a message must name for each package case (besides the package's own path)
PACKAGE_WORDS = {
    "missing": [],
    "a file": [],
    **{k: ["medfuse.json"] for k in PACKAGE_DAMAGE if k.startswith("medfuse.json")},
    **{f"key {k} deleted": [k] for k in ("labels", "task", "spec", "preprocessing", "threshold")},
    "weights truncated": ["model.safetensors"],
    "weights deleted": ["model.safetensors"],
    "weights truncated, checksum updated": ["model.safetensors"],
    "model.onnx truncated, checksum updated": ["model.onnx"],
    "verification.npz truncated, checksum updated": ["verification.npz"],
}


def _png(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(path)


def _manifest_rows(image: Callable[[int], str], n: int = 24) -> str:
    """A manifest laid out like the tiny package's data: image, signal (empty: missing), the
    three tabular columns, patient and a negative/positive label."""
    head = "id,patient_id,image,signal,age,bmi,marker,label\n"
    rows = "".join(
        f"c{i},p{i},{image(i)},,{40 + i},{22 + i % 5},{i % 3},{('negative', 'positive')[i % 2]}\n"
        for i in range(n)
    )
    return head + rows


@pytest.fixture(scope="module")
def corpus(
    adv_exported: Path,
    keys: tuple[Path, Path],
    tiny_synthetic: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Corpus:
    from medfuse.data.examples import write_dicom

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    good = root / "good"
    shutil.copytree(adv_exported, good)

    pkgs = {"missing": root / "no-such-package", "a file": root / "a-file.txt"}
    pkgs["a file"].write_text("not a package")
    for name, damage in PACKAGE_DAMAGE.items():
        p = root / "pkg" / name.replace(" ", "_").replace(",", "")
        shutil.copytree(adv_exported, p)
        damage(p)
        pkgs[name] = p

    # prediction inputs (predict, explain, the runtime)
    d = root / "in"
    d.mkdir()
    inputs = d / "good.npz"
    np.savez(
        inputs,
        image=rng.random((2, 1, 16, 16), dtype=np.float32),
        signal=rng.random((2, 2, 32), dtype=np.float32),
        tabular=rng.random((2, 3), dtype=np.float32),
    )
    raw = inputs.read_bytes()
    files = {
        "npz truncated": d / "truncated.npz",
        "npz not a zip": d / "garbage.npz",
        "npz 0 bytes": d / "empty.npz",
        "npz missing every modality": d / "ids-only.npz",
        "npz unknown array": d / "unknown.npz",
        "npz object array": d / "object.npz",
        "npz wrong shape": d / "shape.npz",
        "input missing": d / "no-such-input.csv",
        "input a folder": d,
        "csv 0 bytes": d / "empty.csv",
        "csv header only": d / "header.csv",
        "csv too many cells": d / "cells.csv",
        "csv unclosed quote": d / "quote.csv",
        "csv not UTF-8": d / "bytes.csv",
        "csv missing a column": d / "column.csv",
        "csv names a missing file": d / "missing-file.csv",
        "csv names a truncated PNG": d / "png.csv",
        "csv names a truncated DICOM": d / "dcm.csv",
        "truncated PNG": d / "truncated.png",
        "truncated DICOM": d / "truncated.dcm",
    }
    files["npz truncated"].write_bytes(raw[: len(raw) // 2])
    files["npz not a zip"].write_bytes(b"this is not a zip archive")
    files["npz 0 bytes"].write_bytes(b"")
    np.savez(files["npz missing every modality"], id=np.array(["a", "b"]))
    np.savez(files["npz unknown array"], picture=np.zeros((1, 1, 16, 16), np.float32))
    np.savez(files["npz object array"], image=np.array([{"x": 1}, None], dtype=object))
    np.savez(files["npz wrong shape"], image=np.zeros((2, 5, 7, 9, 3), np.float32))
    _png(d / "ok.png", rng)
    png = (d / "ok.png").read_bytes()
    files["truncated PNG"].write_bytes(png[: len(png) // 2])
    write_dicom(d / "ok.dcm", (rng.random((16, 16)) * 1000).astype(np.uint16))
    dcm = (d / "ok.dcm").read_bytes()
    files["truncated DICOM"].write_bytes(dcm[: len(dcm) // 2])
    head = "id,image,signal,age,bmi,marker\n"
    files["csv 0 bytes"].write_bytes(b"")
    files["csv header only"].write_text(head)
    files["csv too many cells"].write_text(head + "1,ok.png,,50,22,1,surplus\n")
    files["csv unclosed quote"].write_text(head + '1,"ok.png,,50,22,1\n2,ok.png,,51,23,0\n')
    files["csv not UTF-8"].write_bytes(head.encode() + b"1,\xff\xfe.png,,50,22,1\n")
    files["csv missing a column"].write_text("id,image,signal,age,bmi\n1,ok.png,,50,22\n")
    files["csv names a missing file"].write_text(head + "1,no-such.png,,50,22,1\n")
    files["csv names a truncated PNG"].write_text(head + "1,truncated.png,,50,22,1\n")
    files["csv names a truncated DICOM"].write_text(head + "1,truncated.dcm,,50,22,1\n")

    # manifests with labels (train, --data)
    m = root / "man"
    m.mkdir()
    for i in range(24):
        _png(m / f"{i}.png", rng)
        write_dicom(m / f"{i}.dcm", (rng.random((16, 16)) * 1000).astype(np.uint16))
    shutil.copy(files["truncated PNG"], m / "truncated.png")
    shutil.copy(files["truncated DICOM"], m / "truncated.dcm")
    ok = _manifest_rows(lambda i: f"{i}.png")
    manifests = {
        "manifest 0 bytes": "",
        "manifest header only": ok.splitlines(keepends=True)[0],
        "manifest row with too many cells": ok.replace("c3,p3,", "c3,p3,surplus,", 1),
        "manifest unclosed quote": ok.replace("c3,p3,", 'c3,"p3,', 1),
        "manifest not UTF-8": ok,
        "manifest names a missing file": _manifest_rows(
            lambda i: "no-such.png" if i == 3 else f"{i}.png"
        ),
        "manifest names a truncated PNG": _manifest_rows(
            lambda i: "truncated.png" if i == 3 else f"{i}.png"
        ),
        "manifest names a truncated DICOM": _manifest_rows(
            lambda i: "truncated.dcm" if i == 3 else f"{i}.dcm"
        ),
        "manifest without a label column": ok.replace(",label\n", ",outcome\n", 1),
    }
    paths: dict[str, Path] = {}
    for name, text in manifests.items():
        paths[name] = m / (name.replace(" ", "-") + ".csv")
        paths[name].write_text(text)
    bad = paths["manifest not UTF-8"]
    bad.write_bytes(bad.read_bytes().replace(b"c5,p5,", b"c5,p\xff\xfe5,", 1))

    # specs
    s = root / "spec"
    s.mkdir()
    spec = s / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_synthetic))
    spec_manifest = s / "manifest.yaml"
    spec_manifest.write_text(
        yaml.safe_dump(
            {
                "name": "m",
                "task": {"type": "binary", "positive": "positive"},
                "data": {"source": "manifest:REPLACED"},
                "modalities": {
                    "image": {"kind": "image", "channels": 1, "size": [16, 16]},
                    "clinical": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
                },
                "branches": {
                    "image": {"type": "cnn", "width": 2, "depth": 1, "out_features": 4},
                    "clinical": {"type": "mlp", "hidden": 4, "out_features": 4},
                },
                "fusion": {"type": "concat"},
                "train": {"epochs": 1, "batch_size": 8, "early_stopping": None},
            }
        )
    )
    specs = {
        "spec YAML syntax error": s / "syntax.yaml",
        "spec JSON syntax error": s / "syntax.json",
        "spec unknown key": s / "unknown.yaml",
        "spec 0 bytes": s / "empty.yaml",
        "spec a list": s / "list.yaml",
        "spec not UTF-8": s / "bytes.yaml",
        "spec missing": s / "no-such-spec.yaml",
        "spec a folder": s,
    }
    specs["spec YAML syntax error"].write_text("name: x\nbranches: [a, b\n  c: {\n")
    specs["spec JSON syntax error"].write_text('{"name": "x",,}')
    specs["spec unknown key"].write_text(yaml.safe_dump({**tiny_synthetic, "bogus_key": 1}))
    specs["spec 0 bytes"].write_text("")
    specs["spec a list"].write_text("- 1\n- 2\n")
    specs["spec not UTF-8"].write_bytes(b"name: \xff\xfe\n")
    student = s / "student.yaml"
    student.write_text(
        yaml.safe_dump(
            {
                "name": "student",
                "branches": {"image": {"type": "cnn", "width": 2, "depth": 1, "out_features": 4}},
                "fusion": {"type": "concat"},
                "train": {"epochs": 1},
            }
        )
    )

    file_in_the_way = root / "a-file"
    file_in_the_way.write_text("x")
    ro = root / "read-only"
    ro.mkdir()
    ro.chmod(0o500)
    try:  # root writes anyway: the read-only case cannot be built here
        (ro / "probe").write_text("x")
        (ro / "probe").unlink()
        read_only = None
    except OSError:
        read_only = ro
    return Corpus(
        root=root,
        good=good,
        inputs=inputs,
        key=keys[0],
        student=student,
        spec=spec,
        pkgs=pkgs,
        files=files,
        manifests=paths,
        specs=specs,
        spec_manifest=spec_manifest,
        file_in_the_way=file_in_the_way,
        read_only=read_only,
    )


# ---- running a verb ------------------------------------------------------------------------


@pytest.fixture
def no_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve`` must refuse a broken package before it binds a port: reaching uvicorn fails."""
    import uvicorn

    def bound(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("serve reached uvicorn.run: the broken input was not refused")

    monkeypatch.setattr(uvicorn, "run", bound)


@dataclass
class Result:
    code: int
    err: str
    text: str  # stdout + stderr + the log


@pytest.fixture
def run(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, no_bind: None
) -> Callable[..., Result]:
    def _run(argv: list[str], *, runtime: bool = False) -> Result:
        caplog.clear()
        capsys.readouterr()
        try:
            code = (runtime_main if runtime else cli_main)([str(a) for a in argv])
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code if isinstance(stop.code, int) else 2
        out = capsys.readouterr()
        return Result(int(code), out.err, out.out + out.err + caplog.text)

    return _run


def check(res: Result, argv: list[Any], words: list[str], codes: set[int] | int) -> None:
    """A user error: its exit code, no traceback anywhere, a message naming ``words``."""
    want = {codes} if isinstance(codes, int) else codes
    shown = " ".join(map(str, argv))
    assert res.code in want and res.code in USER_CODES, (
        f"`medfuse {shown}` exited {res.code}, wanted {sorted(want)}:\n{res.text[-3000:]}"
    )
    assert "Traceback" not in res.text, f"`medfuse {shown}` showed a traceback:\n{res.text}"
    assert "internal error" not in res.text, res.text
    for w in words:
        assert w in res.text, f"`medfuse {shown}`: the message does not name {w!r}:\n{res.text}"


# ---- broken packages through every verb that opens one ---------------------------------------

#: verb -> argv for a package P (C: the corpus; O: a fresh output path)
PACKAGE_VERBS: dict[str, Callable[[Path, Corpus, Path], list[Any]]] = {
    "predict": lambda p, c, o: ["predict", p, "--input", c.inputs, "--runtime", "torch"],
    "predict --runtime onnx": lambda p, c, o: [
        "predict",
        p,
        "--input",
        c.inputs,
        "--runtime",
        "onnx",
    ],
    "runtime": lambda p, c, o: [p, "--input", c.inputs],
    "verify": lambda p, c, o: ["verify", p],
    "evaluate": lambda p, c, o: ["evaluate", p, "--no-ci"],
    "explain": lambda p, c, o: ["explain", p, "--input", c.inputs, "-o", o, "--steps", "2"],
    "export": lambda p, c, o: ["export", p],
    "sign": lambda p, c, o: ["sign", p, "--key", c.key],
    "serve": lambda p, c, o: ["serve", p, "--port", "8765"],
    "serve --runtime torch": lambda p, c, o: ["serve", p, "--port", "8765", "--runtime", "torch"],
    "quantize": lambda p, c, o: ["quantize", p, "-o", o, "--calibration", "8"],
    "prune": lambda p, c, o: ["prune", p, "-o", o, "--finetune-epochs", "0"],
    "distill": lambda p, c, o: ["distill", p, "--student", c.student, "-o", o, "--device", "cpu"],
    "benchmark": lambda p, c, o: ["benchmark", p, "--repeats", "1"],
    "compare (first)": lambda p, c, o: ["compare", p, c.good, "--bootstrap", "10"],
    "calibrate": lambda p, c, o: ["calibrate", p, "--out", o],
    "report": lambda p, c, o: ["report", p, "-o", o.with_suffix(".html"), "--bootstrap", "10"],
}
#: the damaged files a verb does not read leave it working: only these pairs must fail
READS = {
    "weights truncated, checksum updated": {
        v
        for v in PACKAGE_VERBS
        if v not in ("predict --runtime onnx", "runtime", "serve", "sign", "verify")
    }
    | {"verify"},
    "model.onnx truncated, checksum updated": {
        "predict --runtime onnx",
        "runtime",
        "serve",
        "verify",
        "benchmark",
    },
    "verification.npz truncated, checksum updated": {"verify", "export", "calibrate"},
}
PACKAGE_PAIRS = [
    pytest.param(case, verb, id=f"{verb}|{case}")
    for case in ("missing", "a file", *PACKAGE_DAMAGE)
    for verb in PACKAGE_VERBS
    if verb in READS.get(case, PACKAGE_VERBS)
]


@pytest.mark.parametrize(("case", "verb"), PACKAGE_PAIRS)
def test_a_broken_package_is_refused_by_every_verb(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, case: str, verb: str
) -> None:
    pkg = corpus.pkgs[case]
    argv = PACKAGE_VERBS[verb](pkg, corpus, tmp_path / "out")
    res = run(argv, runtime=verb == "runtime")
    # verify reports a runtime that cannot load its file as a failed check (exit 1)
    codes = {PACKAGE, 1} if verb == "verify" else PACKAGE
    names = [*PACKAGE_WORDS[case], pkg.name] if verb != "verify" or res.code == PACKAGE else []
    check(res, argv, names or PACKAGE_WORDS[case], codes)


def test_a_broken_second_package_is_refused_by_compare_and_benchmark(
    corpus: Corpus, run: Callable[..., Result]
) -> None:
    for case in ("missing", "key labels deleted", "weights truncated"):
        pkg = corpus.pkgs[case]
        for argv in (
            ["compare", corpus.good, pkg, "--bootstrap", "10"],
            ["benchmark", corpus.good, pkg, "--repeats", "1"],
            ["distill", corpus.good, pkg, "--student", corpus.student, "-o", corpus.root / "x"],
        ):
            check(run(argv), argv, [pkg.name, *PACKAGE_WORDS[case]], PACKAGE)


# ---- broken prediction inputs: predict (both runtimes), explain, the runtime ---------------

INPUT_VERBS: dict[str, Callable[[Path, Corpus, Path], list[Any]]] = {
    "predict": lambda i, c, o: ["predict", c.good, "--input", i, "--runtime", "torch"],
    "predict --runtime onnx": lambda i, c, o: [
        "predict",
        c.good,
        "--input",
        i,
        "--runtime",
        "onnx",
    ],
    "explain": lambda i, c, o: ["explain", c.good, "--input", i, "-o", o, "--steps", "2"],
    "runtime": lambda i, c, o: [c.good, "--input", i],
}
#: what a message must name besides the input itself
INPUT_WORDS = {
    "npz unknown array": ["picture"],
    "csv missing a column": ["marker"],
    "csv names a missing file": ["no-such.png"],
    "csv names a truncated PNG": ["truncated.png"],
    "csv names a truncated DICOM": ["truncated.dcm"],
}


@pytest.mark.parametrize("verb", list(INPUT_VERBS))
@pytest.mark.parametrize(
    "case",
    [
        "npz truncated",
        "npz not a zip",
        "npz 0 bytes",
        "npz missing every modality",
        "npz unknown array",
        "npz object array",
        "npz wrong shape",
        "input missing",
        "input a folder",
        "csv 0 bytes",
        "csv header only",
        "csv too many cells",
        "csv unclosed quote",
        "csv not UTF-8",
        "csv missing a column",
        "csv names a missing file",
        "csv names a truncated PNG",
        "csv names a truncated DICOM",
        "truncated PNG",
        "truncated DICOM",
    ],
)
def test_a_broken_input_is_refused_by_every_verb_that_predicts(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, case: str, verb: str
) -> None:
    path = corpus.files[case]
    argv = INPUT_VERBS[verb](path, corpus, tmp_path / "out")
    res = run(argv, runtime=verb == "runtime")
    check(res, argv, [path.name, *INPUT_WORDS.get(case, [])], DATA)
    assert not (tmp_path / "out").exists() or verb == "explain"  # nothing written


#: what the Python API is given instead of samples, on both runtimes
BAD_SAMPLES: dict[str, Any] = {
    "a string that is no file": "no such file",
    "an int": 42,
    "None": None,
    "a list of ints": [1, 2],
    "an empty dict": {},
    "bytes that are no image": b"\x00\x01",
    "an image path that does not exist": {"image": "no-such.png"},
    "an object array": {"image": np.array([object()])},
    "a complex image": {"image": np.zeros((1, 16, 16), complex)},
    "a mapping as an image": {"image": {"a": 1}},
    "a string as tabular": {"tabular": "abc"},
    "a tabular list of the wrong length": {"tabular": [1, 2]},
    "an unknown column": {"age": 50, "weight": 3},
    "an age that is an object": {"age": object()},
    "masks of the wrong length": {"image": np.zeros((2, 1, 16, 16)), "mask": {"image": np.ones(3)}},
    "a mask that is a string": {"image": np.zeros((2, 1, 16, 16)), "mask": "x"},
    "an id that is a number": {"image": np.zeros((2, 1, 16, 16)), "id": 5},
    "an image of NaN": {"image": np.full((1, 16, 16), np.nan)},
}


@pytest.fixture(scope="module")
def predictors(corpus: Corpus) -> dict[str, Any]:
    from medfuse.inference.predictor import load as load_torch
    from medfuse.runtime import load as load_onnx

    return {"torch": load_torch(corpus.good), "onnx": load_onnx(corpus.good)}


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_prediction_inputs_are_input_errors_on_both_runtimes(
    predictors: dict[str, Any], runtime: str, case: str
) -> None:
    """The API raises a DataError (an InputError naming the field), never a TypeError or a
    numpy error, whichever runtime predicts."""
    for method in ("predict_proba", "predict"):
        with pytest.raises(DataError):
            getattr(predictors[runtime], method)(BAD_SAMPLES[case])


# ---- broken keys: sign and verify ----------------------------------------------------------


@pytest.mark.parametrize("key", ["missing", "not PEM", "0 bytes", "a folder"])
@pytest.mark.parametrize("verb", ["sign", "verify", "serve --require-signature"])
def test_a_broken_key_is_refused(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, key: str, verb: str
) -> None:
    path = {
        "missing": tmp_path / "no-such-key.pem",
        "not PEM": tmp_path / "garbage.pem",
        "0 bytes": tmp_path / "empty.pem",
        "a folder": tmp_path,
    }[key]
    if key == "not PEM":
        path.write_text("not a key")
    if key == "0 bytes":
        path.write_bytes(b"")
    pkg = tmp_path / "pkg"
    shutil.copytree(corpus.good, pkg)
    if verb != "sign":  # a signed package: the key is what is wrong
        from medfuse.core.signing import sign_package

        sign_package(pkg, key=corpus.key)
    argv: list[Any] = {
        "sign": ["sign", pkg, "--key", path],
        "verify": ["verify", pkg, "--key", path],
        "serve --require-signature": ["serve", pkg, "--require-signature", "--key", path],
    }[verb]
    check(run(argv), argv, [path.name], USER_CODES)
    assert (pkg / "model.sig").exists() == (verb != "sign")


# ---- broken manifests: train (spec and --table) and the verbs with --data ------------------

MANIFEST_VERBS: dict[str, Callable[[Path, Corpus, Path], list[Any]]] = {
    "train (spec)": lambda m, c, o: [
        "train",
        c.spec_manifest,
        "--set",
        f"data.source=manifest:{m}",
        "--out",
        o,
        "--device",
        "cpu",
    ],
    "train (spec, data.stream)": lambda m, c, o: [
        "train",
        c.spec_manifest,
        "--set",
        f"data.source=manifest:{m}",
        "--set",
        "data.stream=true",
        "--out",
        o,
        "--device",
        "cpu",
    ],
    "train --table": lambda m, c, o: [
        "train",
        "--table",
        m,
        "--label",
        "label",
        "--positive",
        "positive",
        "--out",
        o,
    ],
    "evaluate --data": lambda m, c, o: ["evaluate", c.good, "--data", m, "--no-ci"],
    "evaluate --data (CIs)": lambda m, c, o: ["evaluate", c.good, "--data", m, "--bootstrap", "10"],
    "report --data": lambda m, c, o: ["report", c.good, "--data", m, "-o", o.with_suffix(".html")],
    "calibrate --data": lambda m, c, o: ["calibrate", c.good, "--data", m, "--out", o],
    "compare --data": lambda m, c, o: ["compare", c.good, c.good, "--data", m, "--bootstrap", "10"],
}
MANIFEST_WORDS = {
    "manifest names a missing file": ["no-such.png", "row 5"],
    "manifest names a truncated PNG": ["truncated.png", "row 5"],
    "manifest names a truncated DICOM": ["truncated.dcm"],
    "manifest row with too many cells": ["line 5"],
    "manifest not UTF-8": ["line 7"],
    "manifest without a label column": ["label"],
}


@pytest.mark.parametrize("verb", list(MANIFEST_VERBS))
@pytest.mark.parametrize(
    "case",
    [
        "manifest 0 bytes",
        "manifest header only",
        "manifest row with too many cells",
        "manifest unclosed quote",
        "manifest not UTF-8",
        "manifest names a missing file",
        "manifest names a truncated PNG",
        "manifest names a truncated DICOM",
        "manifest without a label column",
    ],
)
def test_a_broken_manifest_is_refused_by_every_verb_that_reads_one(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, case: str, verb: str
) -> None:
    path = corpus.manifests[case]
    argv = MANIFEST_VERBS[verb](path, corpus, tmp_path / "out")
    words = [path.name] if verb != "train --table" or "DICOM" not in case else []
    check(run(argv), argv, [*words, *MANIFEST_WORDS.get(case, [])], DATA)
    assert not (tmp_path / "out").exists()


# ---- broken specs and --set values: train and distill --------------------------------------

SPEC_WORDS = {
    "spec YAML syntax error": ["line 3"],
    "spec JSON syntax error": ["line 1"],
    "spec unknown key": ["bogus_key"],
    "spec not UTF-8": ["UTF-8"],
}


@pytest.mark.parametrize("verb", ["train", "distill"])
@pytest.mark.parametrize(
    "case",
    [
        "spec YAML syntax error",
        "spec JSON syntax error",
        "spec unknown key",
        "spec 0 bytes",
        "spec a list",
        "spec not UTF-8",
        "spec missing",
        "spec a folder",
    ],
)
def test_a_broken_spec_is_refused(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, case: str, verb: str
) -> None:
    path = corpus.specs[case]
    if verb == "train":
        argv: list[Any] = ["train", path, "--out", tmp_path / "out"]
    else:
        argv = ["distill", corpus.good, "--student", path, "-o", tmp_path / "out"]
    words = [path.name] if case != "spec unknown key" else []
    check(run(argv), argv, [*words, *SPEC_WORDS.get(case, [])], USAGE)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["train", "distill"])
@pytest.mark.parametrize(
    "value",
    [
        "train.epochs=[1",
        "train.epochs={a: [}",
        "train.epochs=*alias",
        "train.lr=!!python/name:os.system",
    ],
)
def test_a_yaml_error_in_set_is_a_spec_error_naming_the_field(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, value: str, verb: str
) -> None:
    if verb == "train":
        argv: list[Any] = ["train", corpus.spec, "--set", value, "--out", tmp_path / "out"]
    else:
        argv = ["distill", corpus.good, "--student", corpus.student, "--set", value]
        argv += ["-o", tmp_path / "out"]
    check(run(argv), argv, [value.split("=")[0], "YAML"], USAGE)
    assert not (tmp_path / "out").exists()


# ---- outputs that cannot be written --------------------------------------------------------

#: verb -> argv writing a FILE at O
FILE_OUTPUTS: dict[str, Callable[[Corpus, Path], list[Any]]] = {
    "predict --out": lambda c, o: ["predict", c.good, "--input", c.inputs, "--out", o],
    "predict --runtime onnx --out": lambda c, o: [
        "predict", c.good, "--input", c.inputs, "--runtime", "onnx", "--out", o
    ],
    "runtime --out": lambda c, o: [c.good, "--input", c.inputs, "--out", o],
    "evaluate --output": lambda c, o: ["evaluate", c.good, "--no-ci", "--output", o],
    "evaluate (CIs) --output": lambda c, o: ["evaluate", c.good, "--bootstrap", "10", "-o", o],
    "report --output": lambda c, o: ["report", c.good, "-o", o, "--bootstrap", "10"],
    "report --json": lambda c, o: [
        "report", c.good, "-o", c.root / "r.html", "--json", o, "--bootstrap", "10"
    ],
    "compare --output": lambda c, o: ["compare", c.good, c.good, "-o", o, "--bootstrap", "10"],
    "calibrate --figure": lambda c, o: [
        "calibrate", c.good, "--out", c.root / "cal-copy", "--figure", o
    ],
}  # fmt: skip
#: verb -> argv writing a DIRECTORY at O (created with its parents when missing)
DIR_OUTPUTS: dict[str, Callable[[Corpus, Path], list[Any]]] = {
    "train --out": lambda c, o: ["train", c.spec, "--out", o, "--set", "train.epochs=1"],
    "demo --out": lambda c, o: ["demo", "--out", o, "--device", "cpu"],
    "explain -o": lambda c, o: ["explain", c.good, "--input", c.inputs, "-o", o],
    "benchmark -o": lambda c, o: ["benchmark", c.good, "-o", o, "--repeats", "1"],
    "quantize -o": lambda c, o: ["quantize", c.good, "-o", o, "--calibration", "8"],
    "prune -o": lambda c, o: ["prune", c.good, "-o", o, "--finetune-epochs", "0"],
    "distill -o": lambda c, o: ["distill", c.good, "--student", c.student, "-o", o],
    "calibrate --out": lambda c, o: ["calibrate", c.good, "--out", o],
}


def _where(corpus: Corpus, where: str) -> Path:
    if where == "missing folder":
        return corpus.root / "no-such-folder" / "sub" / "out.csv"
    if where == "under a file":
        return corpus.file_in_the_way / "out.csv"
    if corpus.read_only is None:
        pytest.skip("running as root: a read-only folder does not stop writes")
    return corpus.read_only / "out.csv"


@pytest.mark.parametrize("where", ["missing folder", "under a file", "read-only folder"])
@pytest.mark.parametrize("verb", list(FILE_OUTPUTS))
def test_a_file_output_that_cannot_be_written_is_refused_before_any_work(
    corpus: Corpus, run: Callable[..., Result], verb: str, where: str
) -> None:
    out = _where(corpus, where)
    argv = FILE_OUTPUTS[verb](corpus, out)
    check(run(argv, runtime=verb.startswith("runtime")), argv, [str(out)], USAGE)
    assert not out.parent.exists() or not out.exists()


@pytest.mark.parametrize("where", ["under a file", "read-only folder"])
@pytest.mark.parametrize("verb", list(DIR_OUTPUTS))
def test_a_directory_output_that_cannot_be_written_is_refused_before_any_work(
    corpus: Corpus, run: Callable[..., Result], verb: str, where: str
) -> None:
    out = _where(corpus, where).with_suffix("")
    argv = DIR_OUTPUTS[verb](corpus, out)
    check(run(argv), argv, [str(out)], USAGE)


def test_an_output_into_a_missing_folder_names_it(
    corpus: Corpus, run: Callable[..., Result]
) -> None:
    out = corpus.root / "no-such-folder" / "preds.csv"
    res = run(["predict", corpus.good, "--input", corpus.inputs, "--out", out])
    check(res, ["predict"], [str(out.parent), "does not exist"], USAGE)


@pytest.mark.parametrize("verb", ["predict --out", "report --output", "train --out", "explain -o"])
def test_a_folder_the_user_cannot_write_is_refused_even_when_run_as_root(
    corpus: Corpus, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    """The read-only case where permissions do not bind (root): the check asks the OS whether
    the folder is writable, so a folder the OS says is not is refused before any work."""
    import medfuse.core.paths as paths

    folder = corpus.root / "locked"
    folder.mkdir(exist_ok=True)
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)

    monkeypatch.setattr(paths.os, "access", access)
    out = folder / "out.csv"
    argv = {**FILE_OUTPUTS, **DIR_OUTPUTS}[verb](corpus, out)
    check(run(argv), argv, [str(folder), "not writable"], USAGE)
    assert not out.exists()


# ---- nonsense numbers ----------------------------------------------------------------------

NUMBERS: dict[str, Callable[[Corpus, Path], list[Any]]] = {
    "predict --batch-size 0": lambda c, o: ["predict", c.good, "--input", c.inputs, "--batch-size", "0"],
    "predict --batch-size -3 (onnx)": lambda c, o: [
        "predict", c.good, "--input", c.inputs, "--batch-size", "-3", "--runtime", "onnx"
    ],
    "predict --batch-size x": lambda c, o: ["predict", c.good, "--input", c.inputs, "--batch-size", "x"],
    "predict --device gpu7": lambda c, o: ["predict", c.good, "--input", c.inputs, "--device", "gpu7"],
    "predict --device gpu7 (onnx)": lambda c, o: [
        "predict", c.good, "--input", c.inputs, "--device", "gpu7", "--runtime", "onnx"
    ],
    "serve --port 70000": lambda c, o: ["serve", c.good, "--port", "70000"],
    "serve --port 0": lambda c, o: ["serve", c.good, "--port", "0"],
    "serve --threads -1": lambda c, o: ["serve", c.good, "--port", "8765", "--threads", "-1"],
    "serve --workers 0": lambda c, o: ["serve", c.good, "--workers", "0"],
    "serve --max-body-mb nan": lambda c, o: ["serve", c.good, "--max-body-mb", "nan"],
    "serve --device gpu7": lambda c, o: ["serve", c.good, "--port", "8765", "--device", "gpu7"],
    "benchmark --threads -1": lambda c, o: ["benchmark", c.good, "--threads", "-1"],
    "benchmark --repeats 0": lambda c, o: ["benchmark", c.good, "--repeats", "0"],
    "explain --steps 0": lambda c, o: ["explain", c.good, "--input", c.inputs, "-o", o, "--steps", "0"],
    "explain --max-samples -1": lambda c, o: [
        "explain", c.good, "--input", c.inputs, "-o", o, "--max-samples", "-1"
    ],
    "explain --rows 99": lambda c, o: ["explain", c.good, "--input", c.inputs, "-o", o, "--rows", "99"],
    "export --samples 0": lambda c, o: ["export", c.good, "--samples", "0"],
    "export --opset 999": lambda c, o: ["export", c.good, "--opset", "999"],
    "export --opset 0": lambda c, o: ["export", c.good, "--opset", "0"],
    "quantize --calibration 0": lambda c, o: ["quantize", c.good, "-o", o, "--calibration", "0"],
    "prune --amount 2": lambda c, o: ["prune", c.good, "-o", o, "--amount", "2"],
    "prune --finetune-epochs -1": lambda c, o: ["prune", c.good, "-o", o, "--finetune-epochs", "-1"],
    "distill --temperature 0": lambda c, o: [
        "distill", c.good, "--student", c.student, "-o", o, "--temperature", "0"
    ],
    "distill --alpha 2": lambda c, o: ["distill", c.good, "--student", c.student, "-o", o, "--alpha", "2"],
    "evaluate --bootstrap 0": lambda c, o: ["evaluate", c.good, "--bootstrap", "0"],
    "evaluate --device gpu7": lambda c, o: ["evaluate", c.good, "--device", "gpu7", "--no-ci"],
    "evaluate --target 2": lambda c, o: [
        "evaluate", c.good, "--threshold-method", "sensitivity", "--target", "2"
    ],
    "report --bootstrap 0": lambda c, o: ["report", c.good, "-o", o, "--bootstrap", "0"],
    "compare --alpha 2": lambda c, o: ["compare", c.good, c.good, "--alpha", "2"],
    "compare --bootstrap -5": lambda c, o: ["compare", c.good, c.good, "--bootstrap", "-5"],
    "calibrate --value 7": lambda c, o: [
        "calibrate", c.good, "--out", o, "--threshold-method", "fixed", "--value", "7"
    ],
    "verify --tolerance -1": lambda c, o: ["verify", c.good, "--tolerance", "-1"],
    "verify --device tpu": lambda c, o: ["verify", c.good, "--device", "tpu"],
    "train --device tpu": lambda c, o: ["train", c.spec, "--out", o, "--device", "tpu"],
    "train --nproc 0": lambda c, o: ["train", c.spec, "--out", o, "--nproc", "0"],
    "train --seed x": lambda c, o: ["train", c.spec, "--out", o, "--seed", "x"],
}  # fmt: skip
NUMBER_WORDS = {
    "predict --batch-size 0": ["--batch-size"],
    "predict --batch-size -3 (onnx)": ["--batch-size"],
    "predict --device gpu7": ["gpu7"],
    "predict --device gpu7 (onnx)": ["gpu7"],
    "serve --port 70000": ["70000"],
    "serve --threads -1": ["--threads"],
    "serve --device gpu7": ["gpu7"],
    "export --opset 999": ["--opset"],
    "explain --max-samples -1": ["--max-samples"],
    "compare --alpha 2": ["--alpha"],
    "verify --tolerance -1": ["--tolerance"],
    "verify --device tpu": ["tpu"],
    "train --device tpu": ["tpu"],
    "train --nproc 0": ["--nproc"],
    "calibrate --value 7": ["threshold.value"],
}
RUNTIME_NUMBERS: dict[str, list[str]] = {
    "--batch-size 0": ["--batch-size", "0"],
    "--threads -1": ["--threads", "-1"],
    "--batch-size x": ["--batch-size", "x"],
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_nonsense_numbers_are_usage_errors(
    corpus: Corpus, run: Callable[..., Result], tmp_path: Path, case: str
) -> None:
    argv = NUMBERS[case](corpus, tmp_path / "out")
    # a CUDA device asked for where there is none: exit 1 (MedfuseError), not a usage error
    codes = {USAGE, 1} if "gpu7" in case or "tpu" in case else USAGE
    check(run(argv), argv, NUMBER_WORDS.get(case, []), codes)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", list(RUNTIME_NUMBERS))
def test_nonsense_numbers_are_usage_errors_in_the_runtime(
    corpus: Corpus, run: Callable[..., Result], case: str
) -> None:
    argv = [corpus.good, "--input", corpus.inputs, *RUNTIME_NUMBERS[case]]
    check(run(argv, runtime=True), argv, [RUNTIME_NUMBERS[case][0]], USAGE)


# ---- at the process level ------------------------------------------------------------------


def _proc(*args: Any, module: str = "medfuse") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_no_traceback_reaches_the_user_of_a_real_process(corpus: Corpus, tmp_path: Path) -> None:
    # verbs that start without importing torch (a process with torch takes ~10 s here)
    cases = [
        (
            ["predict", corpus.good, "--input", corpus.files["npz truncated"], "--runtime", "onnx"],
            DATA,
        ),
        (["verify", corpus.pkgs["key threshold deleted"]], PACKAGE),
        (["serve", corpus.pkgs["medfuse.json not JSON"], "--port", "8765"], PACKAGE),
        (
            ["predict", corpus.good, "--input", corpus.inputs, "--out", tmp_path / "no" / "p.csv"],
            USAGE,
        ),
    ]
    for argv, code in cases:
        r = _proc(*argv)
        shown = " ".join(map(str, argv))
        assert r.returncode == code, f"medfuse {shown}: {r.returncode}\n{r.stderr}"
        assert "Traceback" not in r.stdout + r.stderr, r.stderr
        assert r.stderr.strip().count("\n") < 3, r.stderr  # one message, not a dump
    r = _proc(
        corpus.pkgs["model.onnx truncated, checksum updated"],
        "--input",
        corpus.inputs,
        module="medfuse.runtime",
    )
    assert r.returncode == PACKAGE and "Traceback" not in r.stderr and "model.onnx" in r.stderr


# ---- a defect is still a defect --------------------------------------------------------------


def test_an_unexpected_exception_is_an_internal_error_not_a_user_error(
    corpus: Corpus, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The top-level handler maps user errors only; anything else is reported as a defect
    (exit 70, one line naming the exception and how to see the traceback), and ``-v`` shows
    the traceback."""
    import medfuse.export.verify as verify_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(verify_module, "verify_package", broken)
    res = run(["verify", corpus.good])
    assert res.code == INTERNAL_ERROR and res.code not in USER_CODES
    assert "internal error: ZeroDivisionError: a bug" in res.err
    assert "medfuse -v verify" in res.err and "Traceback" not in res.text
    with pytest.raises(ZeroDivisionError):
        cli_main(["-v", "verify", str(corpus.good)])


def test_an_unexpected_exception_in_the_runtime_is_an_internal_error(
    corpus: Corpus, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    import medfuse.runtime as runtime_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(runtime_module, "predict_file", broken)
    res = run([corpus.good, "--input", corpus.inputs], runtime=True)
    assert res.code == INTERNAL_ERROR and "internal error: ValueError: a bug" in res.err
    assert "-v" in res.err and "Traceback" not in res.text


def test_a_closed_pipe_is_not_an_internal_error(
    corpus: Corpus, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``medfuse models | head``: the reader of stdout went away; exit 141 (SIGPIPE), quietly."""
    import medfuse.export.verify as verify_module

    def closed(*args: Any, **kwargs: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    import medfuse.runtime as runtime_module

    monkeypatch.setattr(verify_module, "verify_package", closed)
    monkeypatch.setattr(runtime_module, "predict_file", closed)
    for res in (
        run(["verify", corpus.good]),
        run([corpus.good, "--input", corpus.inputs], runtime=True),
    ):
        assert res.code == 141 and "internal error" not in res.text and "Traceback" not in res.text
