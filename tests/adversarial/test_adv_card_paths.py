"""17.12: the model card shows label strings as text (no raw HTML); manifest paths stay inside the
manifest's folder or the data root."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from medfuse.core.card import model_card
from medfuse.core.errors import DataError
from medfuse.core.paths import contained


def test_label_strings_are_escaped_in_the_card(adv_exported: Path) -> None:
    from medfuse.core.package import read_meta

    meta = copy.deepcopy(read_meta(adv_exported))
    meta["labels"] = ["<img src=x onerror=alert(1)>", "[click](javascript:alert(1))"]
    meta["name"] = "<script>steal()</script>"
    card = model_card(meta, {})
    assert "<img" not in card and "<script" not in card
    assert "&lt;img src=x onerror=alert(1)&gt;" in card
    assert "\\[click\\](javascript" in card


def test_contained(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path / "outside")
    root = tmp_path / "data"
    assert contained(root / "a.png", [root])
    assert not contained(root / ".." / "outside" / "a.png", [root])
    assert not contained("/etc/passwd", [root])
    assert not contained(root / "link" / "a.png", [root])  # a link out is outside too


def test_predict_refuses_a_manifest_path_outside(adv_exported: Path, tmp_path: Path) -> None:
    from medfuse.core.inputs import Schema, iter_batches
    from medfuse.core.package import read_meta

    meta = read_meta(adv_exported)
    secret = tmp_path / "secret"
    secret.mkdir()
    np.save(secret / "x.npy", np.zeros((2, 32), np.float32))
    here = tmp_path / "cases"
    here.mkdir()
    np.save(here / "ok.npy", np.zeros((2, 32), np.float32))
    cols = ",".join(meta["spec"]["modalities"]["tabular"]["columns"])
    head = f"id,image,signal,{cols}\n"
    blanks = "," * (len(meta["spec"]["modalities"]["tabular"]["columns"]) - 1)
    (here / "m.csv").write_text(head + f"1,,../secret/x.npy,{blanks}\n")
    schema = Schema.from_meta(meta)
    with pytest.raises(DataError, match="outside the allowed folders"):  # even with "missing"
        list(iter_batches(here / "m.csv", schema, on_bad_row="missing"))
    (here / "m.csv").write_text(head + f"1,,ok.npy,{blanks}\n")  # inside: not refused
    (b,) = iter_batches(here / "m.csv", schema)
    assert b.masks["signal"][0] == 1.0


def test_the_predict_verb_refuses_a_manifest_path_outside(adv_exported, tmp_path, cli) -> None:
    from medfuse.core.package import read_meta

    meta = read_meta(adv_exported)
    secret = tmp_path / "secret"
    secret.mkdir()
    np.save(secret / "x.npy", np.zeros((2, 32), np.float32))
    here = tmp_path / "cases"
    here.mkdir()
    cols = meta["spec"]["modalities"]["tabular"]["columns"]
    blanks = "," * (len(cols) - 1)
    (here / "m.csv").write_text(
        f"id,image,signal,{','.join(cols)}\n1,,{secret / 'x.npy'},{blanks}\n"
    )
    code, out = cli("predict", str(adv_exported), "--input", str(here / "m.csv"))
    assert code != 0 and "outside the allowed folders" in out, out
