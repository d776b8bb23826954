"""17.1: no code runs from a package. A crafted model.pt2 whose pickled member writes a marker
file: neither ``medfuse verify`` nor ``--runtime pt2`` may run it; the user gets a PackageError."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest

from medfuse.core.errors import PackageError
from medfuse.core.package import update_package


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker puts in the archive
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _crafted_pt2(pkg: Path, marker: Path) -> bytes:
    """A real torch.export archive of the package's model whose sample inputs are a pickle that
    writes ``marker`` (torch 2.13 retries them with weights_only=False)."""
    import torch

    from medfuse.export.pt2 import export_pt2_bytes
    from medfuse.inference.package import load_package

    p = load_package(pkg)
    inputs = {m: torch.zeros(2, *s.shape) for m, s in p.spec.modalities.items()}
    masks = {m: torch.ones(2) for m in p.spec.modalities}
    data = export_pt2_bytes(p.model, p.spec, (inputs, masks))
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            body = src.read(item.filename)
            if "/data/sample_inputs/" in item.filename:
                body = pickle.dumps(_Payload(marker))
            dst.writestr(item, body)
    return out.getvalue()


@pytest.fixture
def crafted(pkg: Path, tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "MARKER"
    # the attacker rewrites medfuse.json's checksums too: update_package does exactly that
    update_package(pkg, add={"model.pt2": _crafted_pt2(pkg, marker)})
    return pkg, marker


def test_verify_does_not_run_a_crafted_pt2(crafted, cli) -> None:
    pkg, marker = crafted
    code, out = cli("verify", str(pkg), "--runtime", "pt2")
    assert not marker.exists(), "code from the package ran"
    assert code == PackageError.exit_code and "model.pt2 not loaded" in out
    assert "Traceback" not in out
    code, out = cli("verify", str(pkg))  # all runtimes: pt2 is skipped with the reason
    assert not marker.exists()
    assert "model.pt2 not loaded" in out


def test_even_a_trusted_pt2_with_pickled_members_is_refused(crafted) -> None:
    from medfuse.export.pt2 import load_pt2, pickled_members

    pkg, marker = crafted
    bad = pickled_members((pkg / "model.pt2").read_bytes())
    assert any("sample_inputs" in b for b in bad)
    with pytest.raises(PackageError, match="pickled"):
        load_pt2(pkg / "model.pt2", trusted=True)
    with pytest.raises(PackageError, match="signature"):
        load_pt2(pkg / "model.pt2")
    assert not marker.exists()


def test_a_signed_honest_pt2_is_verified(pkg, keys, cli) -> None:
    from medfuse.core.signing import sign_package
    from medfuse.export.exporter import export_package

    res = export_package(pkg, format="pt2")
    assert res.report is not None and res.report.ok  # its own export is trusted
    private, public = keys
    sign_package(pkg, key=private)
    code, out = cli("verify", str(pkg), "--runtime", "pt2", "--key", str(public), "--json")
    assert code == 0, out
    assert '"signature": "signature ok' in out
