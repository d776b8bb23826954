"""The text modality: a tokenizer trained on the training texts, stored in the package, applied
by the one input contract; raw text in, the same prediction from PyTorch, ONNX Runtime and the
torch-free runtime (python -m medfuse.runtime)."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medfuse.core.errors import DataError, SpecError
from medfuse.core.optional import unusable
from medfuse.core.spec import parse_spec
from medfuse.inference.package import save_package
from medfuse.models import build_model

REPO = Path(__file__).resolve().parents[2]
WORDS = ["fever", "cough", "stable", "pain", "normal", "worse", "improved", "acute", "chronic"]


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 9))) for _ in range(n)]


def _package(tmp_path: Path, branch: str = "gru_text") -> Path:
    """A package with a text and a tabular modality: the text branch a ``gru_text`` over a
    trained word-level tokenizer, or (``hf``) the tiny BERT with its own tokenizer."""
    if reason := unusable(("tokenizers", "transformers") if branch == "hf" else ("tokenizers",)):
        pytest.skip(reason)
    from medfuse.core.text import train_tokenizer, vocab_size

    tok = train_tokenizer(_texts(40), vocab=64)
    assert vocab_size(tok) <= 64
    assert train_tokenizer(_texts(40), vocab=64) == tok  # the same texts, the same tokenizer
    note: dict = {"type": "gru_text", "vocab_size": 64, "embedding": 8, "hidden": 8}
    if branch == "hf":
        from medfuse.models.branches.pretrained import tiny_hf_text_model

        note = {"type": "hf", "model": str(tiny_hf_text_model())}
    spec = parse_spec(
        {
            "name": "notes",
            "data": {"source": "manifest:/nonexistent/notes.csv"},
            "task": {"labels": ["n", "p"]},
            "modalities": {
                "note": {"kind": "text", "length": 12, "vocab": 64},
                "vitals": {"kind": "tabular", "columns": ["hr", "temp"]},
            },
            "branches": {"note": note, "vitals": {"type": "mlp", "hidden": 4, "out_features": 4}},
            "head": {"hidden": 4},
        }
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    from medfuse.data import own_tokenizers

    reading = own_tokenizers(spec).get("note") or {"tokenizer": tok}  # hf: the model's own
    stats = {
        "note": {"mean": [0.0], "std": [1.0], "channel_axis": 0, **reading},
        "vitals": {"mean": [80.0, 37.0], "std": [10.0, 1.0], "channel_axis": 0},
    }
    return save_package(
        tmp_path / "pkg",
        model=model,
        spec=spec,
        preprocessing=stats,
        threshold={"method": "fixed", "value": 0.5},
        metrics={},
    )


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _other_rows(n: int = 24) -> list[dict]:
    """Data unlike the training texts (``_texts``): the rarest words most frequent; one sex
    ("M", code 1 of the package's ["F", "M"], not 0)."""
    rng = np.random.default_rng(1)
    return [
        {
            "id": i,
            "note": " ".join(rng.choice(WORDS[::-1][:4], size=5, p=[0.55, 0.25, 0.15, 0.05])),
            "hr": 60 + i,
            "temp": 37.0,
            "sex": "M",
            "label": "p" if i % 2 else "n",
            "split": ("train", "val", "test")[i % 3],
        }
        for i in range(n)
    ]


ROWS = [
    {"id": "a", "note": "Acute fever, worse cough", "hr": 100, "temp": 39.0},
    {"id": "b", "note": "stable and improved", "hr": 70, "temp": 36.8},
    {"id": "c", "note": "", "hr": 75, "temp": 37.1},  # no note: a missing modality
    {"id": "d", "note": "unheard-of words only zzz", "hr": 90, "temp": 38.0},
]


def test_raw_text_predicts_the_same_in_torch_onnx_and_the_runtime(tmp_path: Path) -> None:
    if reason := unusable(("onnx", "onnxscript")):
        pytest.skip(reason)
    pkg = _package(tmp_path)
    from medfuse.core.onnx import load as load_onnx
    from medfuse.export.exporter import export_package
    from medfuse.inference.package import load_package
    from medfuse.inference.predictor import load as load_torch

    torch_pred = load_torch(pkg)
    batch = torch_pred.inputs(ROWS)
    assert batch.masks["note"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert batch.arrays["note"].shape == (4, 12) and batch.arrays["note"][0, 0] > 1  # known word
    p_torch = torch_pred.predict_proba(ROWS)
    # the package round trip: same weights, same tokenizer
    again = load_package(pkg)
    assert json.loads((pkg / "medfuse.json").read_text())["preprocessing"]["note"]["tokenizer"]
    assert again.spec.modalities["note"].shape == (12,)

    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    p_onnx = load_onnx(pkg).predict_proba(ROWS)
    assert np.abs(p_onnx - p_torch).max() <= 1e-5
    # batched form: a list of texts, one per sample
    cols = {"note": [r["note"] for r in ROWS], "vitals": [[r["hr"], r["temp"]] for r in ROWS]}
    assert np.abs(load_onnx(pkg).predict_proba(cols) - p_torch).max() <= 1e-5

    runtime_p = _runtime_probabilities(pkg, ROWS, tmp_path)
    assert np.abs(runtime_p - p_torch).max() <= 1e-5, (runtime_p, p_torch)


def _runtime_probabilities(pkg: Path, rows: list[dict], tmp_path: Path) -> np.ndarray:
    """python -m medfuse.runtime (no torch) on a manifest of ``rows``, the second row's note
    as a .txt file: the probabilities of the positive class."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "b.txt").write_text(rows[1]["note"], encoding="utf-8")
    manifest = _write_csv(
        tmp_path / "in.csv",
        [dict(r, note="notes/b.txt") if i == 1 else r for i, r in enumerate(rows)],
    )
    out = tmp_path / "pred.csv"
    path = os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path)  # src first, the caller's own path kept
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "medfuse.runtime",
            str(pkg),
            "--input",
            str(manifest),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    with out.open() as f:
        got = list(csv.DictReader(f))
    key = next(k for k in got[0] if k.startswith("p_") or k.startswith("prob"))
    return np.array([float(row[key]) for row in got])


def test_text_spec_and_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"a text modality needs 'length'"):
        parse_spec({"data": {"source": "synthetic"}, "modalities": {"t": {"kind": "text"}}})
    with pytest.raises(SpecError, match=r"'vocab' applies to text modalities only"):
        parse_spec(
            {
                "data": {"source": "synthetic"},
                "modalities": {"t": {"kind": "tabular", "columns": ["a"], "vocab": 9}},
            }
        )
    pkg = _package(tmp_path)
    from medfuse.core.onnx import load as load_onnx

    del load_onnx
    from medfuse.inference.predictor import load as load_torch

    with pytest.raises(DataError, match=r"is not text"):
        load_torch(pkg).predict_proba([{"note": 3.5, "hr": 80, "temp": 37}])


def test_train_on_synthetic_notes_then_predict_from_raw_text(tmp_path: Path) -> None:
    """Synthetic notes (data.options.text): the tokenizer is fit on the training split, stored in
    the package, and the package predicts from raw text."""
    if reason := unusable(("tokenizers",)):
        pytest.skip(reason)
    from medfuse.api import train
    from medfuse.data.synthetic import generate
    from medfuse.inference.predictor import load as load_torch

    spec = {
        "name": "notes",
        "data": {
            "source": "synthetic",
            "options": {"n_train": 96, "n_val": 48, "n_test": 48, "text": True, "text_length": 16},
        },
        "modalities": {
            "text": {"kind": "text", "length": 16, "vocab": 256},
            "tabular": {"kind": "tabular", "columns": ["age", "bmi", "marker"]},
        },
        "branches": {
            "text": {"type": "gru_text", "vocab_size": 256, "embedding": 8, "hidden": 8},
            "tabular": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 4},
        "train": {"epochs": 2, "batch_size": 32, "early_stopping": None},
    }
    pkg = train(spec, out=tmp_path / "pkg", device="cpu", progress=False).package
    meta = json.loads((pkg / "medfuse.json").read_text())
    st = meta["preprocessing"]["text"]
    assert st["mean"] == [0.0] and st["std"] == [1.0] and "range" not in st
    from medfuse.core.text import vocab_size

    assert 8 < vocab_size(st["tokenizer"]) <= 256
    s = generate(4, seed=99, text=True)
    rows = [
        {"text": s.arrays["text"][i], "age": float(t[0]), "bmi": float(t[1]), "marker": float(t[2])}
        for i, t in enumerate(s.arrays["tabular"])
    ]
    rows[1]["text"] = None  # no note: predicted from the tabular branch alone
    pred = load_torch(pkg)
    p = pred.predict_proba(rows)
    assert np.isfinite(p).all() and pred.inputs(rows).masks["text"].tolist() == [1, 0, 1, 1]
    # every prediction says what its text was read as: cut at the model's length, or mostly
    # words the vocabulary does not hold (the training texts' share is in the package)
    assert 0.0 <= st["unknown_p99"] < 0.25
    words = str(s.arrays["text"][0]).split()
    texts = [
        " ".join(words[:5]),
        " ".join(words * 4),
        "Der Kranke klagt seit gestern Abend über Schwindel und Übelkeit",
    ]
    flags = [r["flags"] for r in pred.predict_table([dict(rows[0], text=t) for t in texts])]
    assert "text:" not in flags[0]
    assert "text: the text fills all 16 tokens the model reads" in flags[1]
    assert "vocabulary does not hold" not in flags[1]
    assert re.search(r"text: 1\d of 1\d tokens are words the model's vocabulary does not", flags[2])


def test_text_reading_cut_and_unknown_shares() -> None:
    """``filled``: a text that fills every position (cut there); ``unknown_shares``: the share
    of a text's tokens that are the unknown token."""
    if reason := unusable(("tokenizers",)):
        pytest.skip(reason)
    from medfuse.core.text import encode, filled, train_tokenizer, unknown_shares, unknown_value

    tok = train_tokenizer(_texts(40), vocab=64)
    ids = encode(["fever cough", "fever zzz qqq www", " ".join(["pain"] * 20), ""], tok, 12)
    assert filled(ids).tolist() == [False, False, True, False]
    np.testing.assert_allclose(unknown_shares(ids, tok), [0.0, 0.75, 0.0, 0.0])
    assert unknown_value(tok) == 1 and unknown_value(tok, 1) == 2


@pytest.mark.slow  # about 15 s each: an ONNX export and the HTTP app
@pytest.mark.parametrize("branch", ["gru_text", "hf"])
def test_http_service_predicts_raw_text_like_torch(tmp_path: Path, branch: str) -> None:
    """POST /v1/predict with the note as a JSON string: the ONNX service tokenizes it through
    the same contract (a trained word-level tokenizer, or the hf model's own); a string is
    never read as a path on the server."""
    if reason := unusable(("onnx", "onnxscript", "fastapi", "httpx")):
        pytest.skip(reason)
    from fastapi.testclient import TestClient

    from medfuse.core.inputs import Upload
    from medfuse.export.exporter import export_package
    from medfuse.inference.predictor import load as load_torch
    from medfuse.serve.app import create_app

    pkg = _package(tmp_path, branch)
    export_package(pkg, format="onnx", samples=4)
    client = TestClient(create_app(pkg, token="t"))
    secret = tmp_path / "secret.txt"
    secret.write_text("fever fever fever")
    body = {
        "instances": [
            {"note": r["note"], "vitals": {"hr": r["hr"], "temp": r["temp"]}} for r in ROWS
        ]
        + [{"note": str(secret), "vitals": {"hr": 80, "temp": 37}}]
    }
    r = client.post("/v1/predict", json=body, headers={"Authorization": "Bearer t"})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    got = np.array([x["probabilities"]["p"] for x in preds])
    ref = load_torch(pkg).predict_proba(
        [{"note": r["note"], "hr": r["hr"], "temp": r["temp"]} for r in ROWS]
        + [{"note": Upload(str(secret).encode(), ".txt"), "hr": 80, "temp": 37}]
    )
    assert np.abs(got - ref).max() <= 1e-5  # the path's words, not the file's
    assert preds[2]["missing"] == ["note"]
    info = client.get("/v1/model", headers={"Authorization": "Bearer t"}).json()
    assert info["input_schema"]["properties"]["note"]["anyOf"][0]["type"] == "string"


def test_manifest_text_column_and_text_files(tmp_path: Path) -> None:
    """A manifest's text column: the text itself or a .txt file per row; empty is missing."""
    if reason := unusable(("tokenizers",)):
        pytest.skip(reason)
    from medfuse.api import prepare_data

    rng = np.random.default_rng(0)
    (tmp_path / "notes").mkdir()
    rows = []
    for i in range(40):
        y = int(rng.random() < 0.5)
        note = " ".join(rng.choice(WORDS[:4] if y else WORDS[4:], 4))
        if i % 5 == 0:
            (tmp_path / "notes" / f"{i}.txt").write_text(note, encoding="utf-8")
            note = f"notes/{i}.txt"
        rows.append({"id": i, "note": "" if i % 7 == 3 else note, "hr": 60 + i, "label": y})
    _write_csv(tmp_path / "m.csv", rows)
    spec = parse_spec(
        {
            "data": {"source": f"manifest:{tmp_path / 'm.csv'}", "options": {"labels": ["0", "1"]}},
            "modalities": {
                "note": {"kind": "text", "length": 6, "vocab": 32},
                "vitals": {"kind": "tabular", "columns": ["hr"]},
            },
        }
    )
    spec, bundle = prepare_data(spec)
    assert spec.branches["note"].type == "gru_text"  # the default branch of a text modality
    tok = bundle.info["tokenizers"]["note"]
    from medfuse.core.text import encode

    ids = {str(i): a for s in (bundle.train, bundle.val, bundle.test) if s is not None
           for i, a in zip(s.meta["id"], s.arrays["note"])}  # fmt: skip
    masks = {str(i): k for s in (bundle.train, bundle.val, bundle.test) if s is not None
             for i, k in zip(s.meta["id"], s.masks["note"])}  # fmt: skip
    assert masks["3"] == 0 and masks["0"] == 1  # empty cell: missing; a .txt file: read
    txt = (tmp_path / "notes" / "0.txt").read_text()
    assert np.array_equal(ids["0"], encode([txt], tok, 6)[0])


def test_evaluate_reads_other_data_with_the_packages_tokenizer_and_categories(
    tmp_path: Path,
) -> None:
    """Data read for an existing package (evaluate, report, calibrate, compress, verify) is
    encoded with the package's tokenizer and category codes: refitting them on the new data's
    word frequencies (or on the categories it happens to hold) would give the model other ids
    than it was trained on, a silent wrong answer."""
    if reason := unusable(("tokenizers",)):
        pytest.skip(reason)
    from medfuse.api import evaluate
    from medfuse.core.text import encode, train_tokenizer
    from medfuse.inference.predictor import load as load_torch
    from medfuse.training.metrics import compute_metrics

    tok = train_tokenizer(_texts(40), vocab=64)  # trained on WORDS' frequencies
    spec = parse_spec(
        {
            "name": "notes",
            "data": {"source": "manifest:/nonexistent/notes.csv"},
            "task": {"type": "binary", "labels": ["n", "p"], "positive": "p"},
            "modalities": {
                "note": {"kind": "text", "length": 8, "vocab": 64},
                "vitals": {"kind": "tabular", "columns": ["hr", "sex"]},
            },
            "branches": {
                "note": {"type": "gru_text", "vocab_size": 64, "embedding": 8, "hidden": 8},
                "vitals": {"type": "mlp", "hidden": 4, "out_features": 4},
            },
            "head": {"hidden": 4},
        }
    )
    torch.manual_seed(0)
    stats = {
        "note": {"mean": [0.0], "std": [1.0], "channel_axis": 0, "tokenizer": tok},
        "vitals": {
            "mean": [80.0, 0.5],
            "std": [10.0, 0.5],
            "channel_axis": 0,
            "categories": {"sex": ["F", "M"]},
        },
    }
    pkg = save_package(
        tmp_path / "pkg",
        model=build_model(spec).eval(),
        spec=spec,
        preprocessing=stats,
        threshold={"method": "fixed", "value": 0.5},
        metrics={},
    )
    rows = _other_rows()
    csv_path = _write_csv(tmp_path / "other.csv", rows)
    assert train_tokenizer([r["note"] for r in rows], 64) != tok  # refitting would differ

    pred = load_torch(pkg)
    from medfuse.inference.helpers import package_data

    test_rows = [r for r in rows if r["split"] == "test"]
    bundle = package_data(
        pred.spec, pred.meta, data=csv_path
    )  # report, calibrate, compare, clinical
    ids = bundle.test.arrays["note"]
    assert np.array_equal(ids, encode([r["note"] for r in test_rows], tok, 8))
    assert (bundle.test.arrays["vitals"][:, 1] == 1).all()  # "M" is the package's code 1
    got = evaluate(pkg, data=csv_path, device="cpu")
    p = pred.predict_proba([{"note": r["note"], "hr": r["hr"], "sex": r["sex"]} for r in test_rows])
    y = np.array([1.0 if r["label"] == "p" else 0.0 for r in test_rows])
    ref = compute_metrics("binary", y, p, 0.5)
    assert got["n"] == len(test_rows)
    assert abs(got["brier"] - ref["brier"]) < 1e-6 and abs(got["auroc"] - ref["auroc"]) < 1e-9
    # a value the model never saw is refused, naming it, the row and what is allowed
    unseen = [dict(r, sex="X") if i == 3 else r for i, r in enumerate(rows)]
    with pytest.raises(
        DataError, match=r"'sex'.*first at row 5,.*never saw.*: X\. Allowed: \['F', 'M'\]"
    ):
        evaluate(pkg, data=_write_csv(tmp_path / "unseen.csv", unseen), device="cpu")


def test_hf_text_branch_trains_with_its_own_tokenizer_and_predicts_raw_text_everywhere(
    tmp_path: Path,
) -> None:
    """``branches.note: {type: hf, model: DIR}`` on a text modality: training reads the texts
    with the model's own tokenizer.json (ids + 1, [CLS] ... [SEP] kept within the length), the
    package stores it and the weights' record, and PyTorch, ONNX Runtime and the torch-free
    runtime give the same probabilities from raw text, without the model directory."""
    if reason := unusable(("transformers", "tokenizers", "onnx", "onnxscript")):
        pytest.skip(reason)
    import hashlib
    import shutil

    import tokenizers

    from medfuse.api import evaluate, train
    from medfuse.core.onnx import load as load_onnx
    from medfuse.export.exporter import export_package
    from medfuse.inference.predictor import load as load_torch
    from medfuse.models.branches.pretrained import tiny_hf_text_model

    bert = tiny_hf_text_model(tmp_path / "bert")
    tok_text = (bert / "tokenizer.json").read_text()
    rng = np.random.default_rng(0)
    pos, neg = ["fever", "cough", "worse", "acute", "severe"], ["normal", "stable", "improved"]
    rows = []
    for i in range(36):
        y = i % 2
        words = [*rng.choice(pos if y else neg, 3), "patient", "reports"]
        note = "" if i % 9 == 4 else " ".join(rng.permutation(words))
        rows.append({"id": i, "note": note, "hr": 70 + 10 * y + float(rng.normal(0, 5)),
                     "label": y, "split": ("train", "train", "val", "test")[i // 2 % 4]})  # fmt: skip
    data = _write_csv(tmp_path / "notes.csv", rows)
    spec = {
        "name": "bert-notes",
        "data": {"source": f"manifest:{data}", "options": {"labels": ["0", "1"]}},
        "modalities": {
            "note": {"kind": "text", "length": 10},
            "vitals": {"kind": "tabular", "columns": ["hr"]},
        },
        "branches": {
            "note": {"type": "hf", "model": str(bert), "pool": "cls"},
            "vitals": {"type": "mlp", "hidden": 4, "out_features": 4},
        },
        "head": {"hidden": 4},
        "train": {"epochs": 1, "batch_size": 8, "early_stopping": None},
    }
    pkg = train(spec, out=tmp_path / "pkg", device="cpu", progress=False).package
    meta = json.loads((pkg / "medfuse.json").read_text())
    st = meta["preprocessing"]["note"]
    assert st["tokenizer"] == tok_text and st["token_offset"] == 1  # the model's own
    rec = meta["pretrained"]["note"]
    assert rec["tokenizer"]["sha256"] == hashlib.sha256(tok_text.encode()).hexdigest()
    assert rec["weights"]["license"] == "apache-2.0" and rec["preprocess"]["pool"] == "cls"
    own = tokenizers.Tokenizer.from_file(str(bert / "tokenizer.json"))
    shutil.rmtree(bert)  # the package needs the model directory no more

    probe = [
        {"id": "a", "note": "Acute fever, worse coughs", "hr": 95.0},
        {"id": "b", "note": "stable and improved", "hr": 70.0},
        {"id": "c", "note": "", "hr": 75.0},  # no note: a missing modality
        {"id": "d", "note": "zzz unheard of", "hr": 88.0},  # unknown words: [UNK], present
        {"id": "e", "note": " ".join(["fever"] * 30), "hr": 90.0},  # truncated, [SEP] kept
    ]
    torch_pred = load_torch(pkg)
    batch = torch_pred.inputs(probe)
    assert batch.masks["note"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    first = np.array(own.encode(probe[0]["note"]).ids, np.float32) + 1
    assert np.array_equal(batch.arrays["note"][0, : len(first)], first)
    assert (batch.arrays["note"][0, len(first) :] == 0).all()
    assert batch.arrays["note"][4, -1] == own.token_to_id("[SEP]") + 1
    p_torch = torch_pred.predict_proba(probe)
    other_words = torch_pred.predict_proba([dict(probe[0], note="stable and improved")])
    assert abs(float(other_words[0]) - float(p_torch[0])) > 1e-6  # the words reach the output
    # the other data paths read the package's stored tokenizer (the model directory is gone)
    assert evaluate(pkg, device="cpu")["n"] == sum(r["split"] == "test" for r in rows)

    res = export_package(pkg, format="onnx", samples=8)
    assert res.report is not None and res.report.ok, res.report.to_dict()
    assert np.abs(load_onnx(pkg).predict_proba(probe) - p_torch).max() <= 1e-5
    runtime_p = _runtime_probabilities(pkg, probe, tmp_path)
    assert np.abs(runtime_p - p_torch).max() <= 1e-5, (runtime_p, p_torch)


def test_hf_text_branch_errors_and_the_hub_cache(tmp_path: Path, monkeypatch) -> None:
    """No tokenizer.json, an image model on text (and the reverse), too long a text: each a
    SpecError saying what to do. A hub id's tokenizer is read from the local hub cache."""
    if reason := unusable(("transformers", "tokenizers", "huggingface_hub")):
        pytest.skip(reason)
    import huggingface_hub

    from medfuse.core.text import model_tokenizer
    from medfuse.data import own_tokenizers
    from medfuse.models.branches.pretrained import tiny_hf_model, tiny_hf_text_model

    bert = tiny_hf_text_model(tmp_path / "bert")

    def spec(model: Path, modality: dict, **branch: str) -> object:
        return parse_spec(
            {
                "data": {"source": "synthetic"},
                "task": {"labels": ["n", "p"]},
                "modalities": {"x": modality},
                "branches": {"x": {"type": "hf", "model": str(model), **branch}},
            }
        )

    text = {"kind": "text", "length": 8}
    with pytest.raises(
        SpecError, match=r"'branches\.x\.model'.*no tokenizer\.json.*save_pretrained"
    ):
        (bert / "tokenizer.json").rename(tmp_path / "moved.json")
        own_tokenizers(spec(bert, text))
    (tmp_path / "moved.json").rename(bert / "tokenizer.json")
    assert own_tokenizers(spec(bert, text))["x"]["token_offset"] == 1
    with pytest.raises(SpecError, match=r"is an image model.*the modality is a text one"):
        build_model(spec(tiny_hf_model(tmp_path / "vit"), text))
    image = {"kind": "image", "channels": 1, "size": [16, 16]}
    with pytest.raises(SpecError, match=r"is a text model.*the modality is an image one"):
        build_model(spec(bert, image))
    with pytest.raises(SpecError, match=r"pool 'cls' applies to text models"):
        build_model(spec(tmp_path / "vit", image, pool="cls"))
    with pytest.raises(SpecError, match=r"reads at most 64 tokens.*length is 100"):
        build_model(spec(bert, {"kind": "text", "length": 100}))

    # the hub cache's layout (what huggingface-cli download leaves): snapshots/<rev>/ + refs/main
    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny-bert" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "tokenizer.json").write_text((bert / "tokenizer.json").read_text())
    (cache / "models--org--tiny-bert" / "refs").mkdir()
    (cache / "models--org--tiny-bert" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    tok, where = model_tokenizer("org/tiny-bert")
    assert tok == (bert / "tokenizer.json").read_text() and where.startswith(str(snap))
    with pytest.raises(SpecError, match=r"nobody/none: no tokenizer\.json.*huggingface-cli"):
        model_tokenizer("nobody/none")


def test_train_init_reads_texts_with_the_source_packages_tokenizer(tmp_path: Path) -> None:
    """``train.init`` copying a text branch from another package: its embedding rows are that
    package's token ids, so the new data is read with that package's tokenizer, not one fit on
    the new texts (which would map every word to another row)."""
    from medfuse.api import prepare_data
    from medfuse.core.package import read_meta
    from medfuse.core.text import encode, train_tokenizer

    src = _package(tmp_path)  # gru_text over a tokenizer fit on _texts
    tok = read_meta(src)["preprocessing"]["note"]["tokenizer"]
    rows = _other_rows()
    assert train_tokenizer([r["note"] for r in rows], 64) != tok
    spec = parse_spec(
        {
            "data": {"source": f"manifest:{_write_csv(tmp_path / 'new.csv', rows)}"},
            "task": {"type": "binary", "labels": ["n", "p"], "positive": "p"},
            "modalities": {
                "note": {"kind": "text", "length": 12, "vocab": 64},
                "vitals": {"kind": "tabular", "columns": ["hr", "temp"]},
            },
            "branches": {"note": dict(read_meta(src)["spec"]["branches"]["note"])},
            "train": {"init": {"package": str(src), "modules": ["branches.note"]}},
        }
    )
    _, bundle = prepare_data(spec)
    assert bundle.info["tokenizers"]["note"] == tok
    train_notes = [r["note"] for r in rows if r["split"] == "train"]
    assert np.array_equal(bundle.train.arrays["note"], encode(train_notes, tok, 12))


@pytest.mark.parametrize("branch", ["gru_text", "hf"])
def test_explain_attributes_each_token_by_removing_it(tmp_path: Path, branch: str) -> None:
    """Token ids are not differentiable: a text's map is leave-one-token-out on the explained
    logit, each token named by the package's tokenizer; checked against the model itself."""
    if reason := unusable(("captum", "matplotlib")):
        pytest.skip(reason)
    pkg = _package(tmp_path, branch)
    from medfuse.core.text import tokens
    from medfuse.explain.explainer import explain_file
    from medfuse.inference.predictor import load as load_torch

    pred = load_torch(pkg)
    batch = pred.inputs(ROWS)
    doc = explain_file(pkg, _write_csv(tmp_path / "rows.csv", ROWS), out=tmp_path / "exp")
    by_id = {s["id"]: s for s in doc["samples"]}
    assert "note" not in by_id["c"]["maps"]  # no note: nothing to attribute
    assert (tmp_path / "exp" / "a_note.png").is_file()
    stat = json.loads((pkg / "medfuse.json").read_text())["preprocessing"]["note"]
    arrays = {m: np.asarray(v) for m, v in batch.arrays.items()}
    masks = {m: np.asarray(v) for m, v in batch.masks.items()}
    full = pred._batch_logits(arrays, masks)[:, 0]
    for i, row_id in ((0, "a"), (3, "d")):
        entry = by_id[row_id]["maps"]["note"]
        assert entry["method"] == "token-occlusion"
        ids = arrays["note"][i]
        words = tokens(ids, stat["tokenizer"], int(stat.get("token_offset", 0)))
        assert [f["display"] for f in entry["features"]] == words and len(words) >= 2
        if branch == "gru_text" and row_id == "a":
            assert words[:2] == ["acute", "fever"]
        for f in entry["features"]:
            j = int(f["name"].split(":", 1)[0])
            occluded = {**arrays, "note": arrays["note"].copy()}
            occluded["note"][i, j] = 0
            expected = full[i] - pred._batch_logits(occluded, masks)[i, 0]
            assert abs(f["attribution"] - expected) <= 1e-4, (f, expected)
        assert abs(entry["total"] - sum(f["attribution"] for f in entry["features"])) <= 1e-4


def test_an_uploaded_text_is_never_read_as_a_path(tmp_path: Path) -> None:
    """A note sent to the HTTP service (an upload: bytes) that ends in '.txt' was read from the
    server's disk as a file (any path, relative to its working directory too), and scored on
    that file's words without a word."""
    if reason := unusable(("tokenizers",)):
        pytest.skip(reason)
    from medfuse.core.inputs import Modality, Upload, _text_value
    from medfuse.core.text import encode, train_tokenizer

    tok = train_tokenizer(["fever cough worse", "calm rest stable", "secret txt tmp"], 64)
    m = Modality("note", "text", (8,), length=8, tokenizer=tok)
    secret = tmp_path / "secret.txt"
    secret.write_text("fever fever fever")
    got = _text_value(Upload(str(secret).encode(), ".txt"), m, tmp_path)
    assert np.array_equal(got, encode([str(secret)], tok, 8))  # the string's own words
    assert not np.array_equal(got, encode(["fever fever fever"], tok, 8))  # not the file's


def test_web_page_predicts_and_explains_a_text(tmp_path: Path, browser, serving) -> None:
    """The web page had no field for a text modality (a text model's page could not be used):
    a textarea now sends the text itself, and the page shows what ``/v1/explain`` gives for it,
    with its token map."""
    import httpx

    from medfuse.serve.app import create_app

    pkg = _package(tmp_path)
    row = ROWS[0]
    with serving(create_app(pkg, runtime="torch")) as url:
        inst = {"note": row["note"], "vitals": {"hr": row["hr"], "temp": row["temp"]}}
        ref = httpx.post(
            url + "/v1/explain", json={"instances": [inst], "pictures": False}, timeout=60
        ).json()["explanations"][0]
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        try:
            page.goto(url + "/")
            page.locator("[data-testid=text-note]").fill(row["note"])
            page.locator("[data-testid=field-hr]").fill(str(row["hr"]))
            page.locator("[data-testid=field-temp]").fill(str(row["temp"]))
            page.locator("#submit").click()
            tokens = page.locator("[data-testid=tokens-note]")
            tokens.wait_for(state="visible", timeout=60_000)
            prob = page.locator("[data-testid=probability]").inner_text()
            caption = page.locator("#maps figcaption").first.inner_text()
            assert page.locator("#error").is_hidden()
        finally:
            page.close()
    p = ref["prediction"]["probabilities"]["p"]
    assert f"P(p) = {p:.3f}" in prob, (prob, p)
    assert "each token replaced by padding" in caption and "undefined" not in caption
