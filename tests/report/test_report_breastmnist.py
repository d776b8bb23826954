"""Real data: a short BreastMNIST run, then ``medfuse report``; the printed test AUROC CI holds
the point estimate and is as wide as 156 test images allow (no subgroup columns: said so)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch

from medfuse.cli import main


@pytest.mark.data("medmnist/breastmnist.npz")
@pytest.mark.slow
def test_breastmnist_report(data_dir, tmp_path) -> None:
    from medfuse.api import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pkg = train(
            "breastmnist",
            out=tmp_path / "bm",
            data_dir=data_dir,
            device="cpu",
            progress=False,
            overrides=["train.epochs=4", "train.early_stopping=null"],
        ).package
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "bm.html"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["report", str(pkg), "--data-dir", str(data_dir), "-o", str(out)])
    assert rc == 0, buf.getvalue()
    m = re.search(r"test AUROC (\d\.\d+) \((\d\.\d+)-(\d\.\d+)\)", buf.getvalue())
    assert m, buf.getvalue()
    v, lo, hi = map(float, m.groups())
    assert lo < v < hi
    assert 0.03 < hi - lo < 0.30  # 156 test images (42 / 114): a few hundredths to ~0.2
    html = out.read_text()
    assert "156" in html and "MedMNIST" in html
    assert "provides none" in html  # no subgroup columns in MedMNIST, said plainly
