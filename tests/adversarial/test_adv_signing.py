"""17.3b: a signed package verifies; any changed byte of medfuse.json fails ``verify --key`` and
is refused by ``serve --require-signature`` before the port is bound."""

from __future__ import annotations

import pytest

from medfuse.cli import main
from medfuse.core.errors import PackageError


def _flip_one_byte(path) -> None:
    f = path / "medfuse.json"
    data = bytearray(f.read_bytes())
    i = data.index(b'"name"') + 9  # inside the package's name: still valid JSON and schema
    data[i] = data[i] ^ 0x01
    f.write_bytes(bytes(data))


def test_sign_then_verify_then_tamper(pkg, keys, cli) -> None:
    private, public = keys
    code, out = cli("sign", str(pkg), "--key", str(private))
    assert code == 0, out
    assert (pkg / "model.sig").is_file()
    code, out = cli("verify", str(pkg), "--key", str(public), "--runtime", "onnx")
    assert code == 0 and "signature ok" in out, out
    _flip_one_byte(pkg)
    code, out = cli("verify", str(pkg), "--key", str(public), "--runtime", "onnx")
    assert code == PackageError.exit_code and "signature check FAILED" in out
    assert "medfuse.json" in out


def test_another_key_is_refused(pkg, keys, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from medfuse.core.signing import Trust, sign_package, verify_signature

    private, _ = keys
    sign_package(pkg, key=private)
    other = tmp_path / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(PackageError, match="FAILED"):
        verify_signature(pkg, Trust(key=other))


def test_an_added_file_breaks_the_signature(pkg, keys) -> None:
    from medfuse.core.signing import Trust, sign_package, verify_signature

    private, public = keys
    sign_package(pkg, key=private)
    (pkg / "extra.bin").write_bytes(b"x")
    with pytest.raises(PackageError, match="FAILED"):
        verify_signature(pkg, Trust(key=public))


def test_serve_refuses_unsigned_and_altered_packages_before_binding(pkg, keys, capsys) -> None:
    """main() returns instead of serving: the refusal comes before uvicorn binds anything."""
    private, public = keys
    args = ["serve", str(pkg), "--port", "1", "--require-signature", "--key", str(public)]
    assert main(args) == PackageError.exit_code  # unsigned
    assert "not signed" in capsys.readouterr().err
    main(["sign", str(pkg), "--key", str(private)])
    _flip_one_byte(pkg)
    assert main(args) == PackageError.exit_code  # altered after signing
    assert "signature check FAILED" in capsys.readouterr().err


def test_the_app_itself_checks_the_signature(pkg, keys) -> None:
    """Each uvicorn worker builds the app again: it checks the signature again."""
    from medfuse.serve.app import create_app

    private, public = keys
    with pytest.raises(PackageError, match="not signed"):
        create_app(pkg, trust={"key": str(public)})
    main(["sign", str(pkg), "--key", str(private)])
    assert create_app(pkg, trust={"key": str(public)}, extensions=False).state.service


def test_require_signature_needs_a_key(pkg) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve", str(pkg), "--require-signature"])
    assert e.value.code == 2


def test_any_byte_of_medfuse_json_breaks_the_signature(pkg, keys) -> None:
    import random

    from medfuse.core.signing import Trust, sign_package, verify_signature

    private, public = keys
    sign_package(pkg, key=private)
    f = pkg / "medfuse.json"
    original = f.read_bytes()
    rng = random.Random(0)
    for i in [0, len(original) - 1, *rng.sample(range(len(original)), 6)]:
        data = bytearray(original)
        data[i] ^= 0x20
        f.write_bytes(bytes(data))
        with pytest.raises(PackageError, match="signature check FAILED"):
            verify_signature(pkg, Trust(key=public))
    f.write_bytes(original)
    assert verify_signature(pkg, Trust(key=public)).startswith("signature ok")


def test_an_identity_that_cannot_be_checked_is_a_refusal(pkg, keys) -> None:
    """``--identity`` (Sigstore) on a key-signed package, offline or not: refused, no traceback."""
    from medfuse.core.signing import Trust, sign_package, verify_signature

    sign_package(pkg, key=keys[0])
    with pytest.raises(PackageError, match="signature check FAILED"):
        verify_signature(pkg, Trust(identity="someone@example.org"))
