"""Package digest and signatures (OpenSSF ``model-signing``): who wrote this package, unchanged.

A package's checksums live in ``medfuse.json``, so whoever edits a file can rewrite them: they
catch damage, not tampering. A signature can: ``sign_package`` hashes EVERY file of the package
directory (``medfuse.json`` included; only the signature file ``model.sig`` itself is left out)
with the OpenSSF model-signing library and signs that manifest with an elliptic-curve private key
(PEM) or a Sigstore identity; ``verify_signature`` re-hashes the directory and checks the
signature against a public key or an expected identity. Any changed, added or removed byte fails.

``package_digest`` is the same idea without a key: one sha256 over the names and contents of
every file (shown by ``medfuse verify``; compare it with a digest published elsewhere).

``model-signing`` is an optional dependency, imported only when a signature is made or checked.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from medfuse.core.errors import PackageError
from medfuse.core.package import META, SIGNATURE, read_meta, sha256_file
from medfuse.core.trust import DEFAULT_ISSUER, Trust, add_trust_arguments, trust_from_args

__all__ = [
    "DEFAULT_ISSUER",
    "Trust",
    "add_trust_arguments",
    "package_digest",
    "sign_package",
    "trust_from_args",
    "verify_signature",
]


def _files(root: Path) -> list[Path]:
    """Every file of the package directory except the signature; refuses links and sub-folders
    (a package is flat: anything else was put there by hand)."""
    out = []
    for p in sorted(root.iterdir()):
        if p.name == SIGNATURE:
            continue
        if p.is_symlink() or not p.is_file():
            raise PackageError(
                f"{root}: {p.name} is not a plain file; a package holds only plain files"
            )
        out.append(p)
    return out


def package_digest(path: str | Path) -> str:
    """sha256 over ``name NUL sha256(content) NUL`` of every file (sorted), ``model.sig`` left out:
    equal digests mean byte-identical packages."""
    root = Path(path)
    h = hashlib.sha256()
    for p in _files(root):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode() + b"\0")
    return h.hexdigest()


def _model_signing() -> Any:
    try:  # deferred: an optional dependency (medfuse[signing]), needed only to sign or check
        # lazy: model-signing (medfuse[signing]), only to sign or check (optional: its absence is handled here)
        import model_signing
    except ImportError:
        raise PackageError(
            "signing needs the OpenSSF model-signing package: pip install model-signing"
        ) from None
    return model_signing


def _hashing(ms: Any) -> Any:
    return ms.hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)


def sign_package(
    path: str | Path,
    *,
    key: str | Path | None = None,
    password: str | None = None,
    sigstore: bool = False,
) -> Path:
    """Write ``model.sig`` into the package: a signature over every other file. The package is
    verified first (checksums, schema): a damaged package is never signed."""
    root = Path(path)
    read_meta(root)
    if (key is None) == (not sigstore):
        raise PackageError("sign with exactly one of a private key (--key) or --sigstore")
    _files(root)
    ms = _model_signing()
    config = ms.signing.Config().set_hashing_config(_hashing(ms))
    if key is not None:
        if not Path(key).is_file():
            raise PackageError(f"private key {key} not found")
        try:
            config.use_elliptic_key_signer(private_key=Path(key), password=password)
        except (ValueError, TypeError) as err:
            raise PackageError(
                f"cannot use {key} as an elliptic-curve private key: {err}"
            ) from None
    else:
        config.use_sigstore_signer()  # interactive OIDC login; needs the network
    tmp = root / f".{SIGNATURE}.tmp"
    try:
        config.sign(root, tmp)
        os.replace(tmp, root / SIGNATURE)
    finally:
        if tmp.exists():
            tmp.unlink()
    return root / SIGNATURE


def verify_signature(path: str | Path, trust: Trust) -> str:
    """Check ``model.sig`` against ``trust``; raises PackageError when the package is unsigned,
    signed by someone else, or any file changed, was added or removed. Returns a one-line note."""
    root = Path(path)
    if not trust.given:
        raise PackageError("no public key or identity to check the signature against")
    if not (root / META).is_file():
        raise PackageError(f"{root} has no {META}: not a medfuse package")
    sig = root / SIGNATURE
    if not sig.is_file():
        raise PackageError(
            f"{root} is not signed (no {SIGNATURE}); refusing it (sign it with "
            f"`medfuse sign {root} --key private.pem`)"
        )
    _files(root)
    ms = _model_signing()
    config = ms.verifying.Config().set_hashing_config(_hashing(ms))
    try:
        if trust.key is not None:
            if not Path(trust.key).is_file():
                raise PackageError(f"public key {trust.key} not found")
            config.use_elliptic_key_verifier(public_key=Path(trust.key))
        else:
            config.use_sigstore_verifier(identity=str(trust.identity), oidc_issuer=trust.issuer)
        config.verify(root, sig)
    except PackageError:
        raise
    except Exception as err:  # model-signing raises ValueError and others for a bad signature
        text = str(err)
        names = sorted(set(re.findall(r"for '([^']+)'", text)))
        why = f"changed: {', '.join(names)}" if names else (text.splitlines() or [""])[0][:300]
        raise PackageError(
            f"{root}: signature check FAILED against {trust.describe()} ({why}): the "
            "package was changed after signing, signed by someone else, or its signature could "
            "not be checked; refusing it"
        ) from None
    return f"signature ok ({trust.describe()}), digest {package_digest(root)[:16]}..."
