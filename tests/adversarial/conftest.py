"""Adversarial probes of issue 17: packages edited, crafted or unsigned, and hostile HTTP input.

Each probe starts from a fresh copy of one exported tiny package (never the shared fixture)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def adv_exported(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medfuse.export.exporter import export_package

    dst = tmp_path_factory.mktemp("adv") / "tiny"
    shutil.copytree(tiny_package, dst)
    res = export_package(dst, format="onnx", refresh=True)
    assert res.report is not None and res.report.ok, res.report
    return dst


@pytest.fixture
def pkg(adv_exported: Path, tmp_path: Path) -> Path:
    """A private copy of the exported package to damage."""
    dst = tmp_path / "pkg"
    shutil.copytree(adv_exported, dst)
    return dst


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An elliptic-curve (P-256) key pair in PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    (d / "private.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "public.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return d / "private.pem", d / "public.pem"


def _edit_meta(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit medfuse.json as an attacker would: the checksums of the other files untouched, its
    own digest (``meta_sha256``) recomputed, so the checks behind it are what refuses the edit
    (a careless hand edit, digest untouched, is refused by the digest:
    ``test_adv_schema.py::test_a_hand_edit_of_medfuse_json_is_refused``)."""
    from medfuse.core.package import seal_meta

    f = path / "medfuse.json"
    meta = json.loads(f.read_text())
    change(meta)
    f.write_text(json.dumps(seal_meta(meta), indent=2))


def _cli(*args: str) -> tuple[int, str]:
    """``medfuse ARGS`` in a subprocess: (exit status, stdout + stderr)."""
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "medfuse", *args], capture_output=True, text=True, timeout=300
    )
    return r.returncode, r.stdout + r.stderr


@pytest.fixture
def edit() -> Callable[[Path, Callable[[dict[str, Any]], None]], None]:
    return _edit_meta


@pytest.fixture
def cli() -> Callable[..., tuple[int, str]]:
    return _cli
