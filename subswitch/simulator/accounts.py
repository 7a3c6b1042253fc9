"""MasStack-style service accounts: make one for local use, or load one to trust.

A service-account file is ``{"type", "private_key_id", "private_key", "client_email"}``
with an RSA key in PKCS#1 PEM. It is a secret: it is written with mode 0600 and its
private key never appears in a ``repr`` or a log line.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_CLIENT_EMAIL = "subswitch@sim.local"
_KEY_BITS = 2048


@dataclass(frozen=True)
class TrustedAccount:
    """The public half of a service account: what the token endpoint verifies against."""

    key_id: str
    client_email: str
    public_key: rsa.RSAPublicKey = field(repr=False)


def generate_service_account(
    path: Path | str, *, client_email: str = DEFAULT_CLIENT_EMAIL, overwrite: bool = False
) -> Path:
    """Write a new service-account JSON file (RSA 2048, mode 0600) and return its path.

    Refuses to replace an existing file unless ``overwrite``: losing a key by accident is
    worse than an error.
    """
    target = Path(path)
    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    document = {
        "type": "service_account",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem.decode("ascii"),
        "client_email": client_email,
    }
    _write_private(target, json.dumps(document, indent=2).encode() + b"\n", overwrite)
    return target


def _write_private(path: Path, data: bytes, overwrite: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
        os.write(fd, data)
    finally:
        os.close(fd)


def load_trusted_account(path: Path | str) -> TrustedAccount:
    """Read a service-account file and keep only what verifying its assertions needs."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        key = serialization.load_pem_private_key(
            document["private_key"].encode("ascii"), password=None
        )
        key_id, client_email = document["private_key_id"], document["client_email"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # the cause may quote the key material, so it is not chained into the message
        raise ValueError(
            f"{path}: not a usable service-account file ({type(exc).__name__})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or not isinstance(key_id, str):
        raise ValueError(f"{path}: service account needs an RSA key and a private_key_id")
    return TrustedAccount(key_id, str(client_email), key.public_key())
