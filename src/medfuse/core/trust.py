"""What a package's signature is checked against (``--key`` / ``--identity``): a small module
with no heavy imports, so every verb's parser can offer the options without loading the schema."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from medfuse.core.errors import PackageError

#: the OIDC issuer assumed for ``--identity`` when none is given (Sigstore's public instance)
DEFAULT_ISSUER = "https://oauth2.sigstore.dev/auth"


@dataclass(frozen=True)
class Trust:
    """What to check a package's signature against: a public key (PEM) or a Sigstore identity."""

    key: str | Path | None = None
    identity: str | None = None
    issuer: str = DEFAULT_ISSUER

    @property
    def given(self) -> bool:
        return self.key is not None or self.identity is not None

    def describe(self) -> str:
        return f"key {self.key}" if self.key is not None else f"identity {self.identity}"


def add_trust_arguments(p: argparse.ArgumentParser) -> None:
    """``--key`` / ``--identity`` / ``--issuer``: what a verb checks ``model.sig`` against."""
    p.add_argument("--key", help="public key (PEM): the package's model.sig must verify with it")
    p.add_argument("--identity", help="Sigstore signer identity (e-mail or URI) to require")
    p.add_argument("--issuer", help=f"OIDC issuer of --identity (default {DEFAULT_ISSUER})")


def trust_from_args(a: argparse.Namespace) -> Trust | None:
    """The ``Trust`` named by ``--key`` / ``--identity`` / ``--issuer`` (None when none given)."""
    if a.key and a.identity:
        raise PackageError("give --key or --identity, not both")
    if not (a.key or a.identity):
        return None
    return Trust(key=a.key, identity=a.identity, issuer=a.issuer or DEFAULT_ISSUER)
