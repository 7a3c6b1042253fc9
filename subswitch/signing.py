"""Signed commands: the canonical bytes of a command, Ed25519 signing and verifying.

A producer signs each command with its private key; the worker verifies it against
the public keys of the policy (:mod:`subswitch.policy`) before anything else. The
signature travels next to the command's fields in the message, as one more member
``signature`` (``{"key_id": ..., "value": ...}``) of the command's JSON object; it is
not part of the command: not of its fingerprint, not of its canonical bytes. A
message without it is an unsigned command, which a worker without a policy accepts
as before.

What is signed (README, "Canonical signing format"), for producers in any language::

    b"subswitch-command-v1\\n" + key_id (UTF-8) + b"\\n" + canonical_bytes(command)

``canonical_bytes`` is the command as the worker reads it, every field of its type
(defaults filled in, absent optional fields ``null``), as JSON: keys sorted, no
whitespace, UTF-8 (no ``\\u`` escapes beyond those JSON requires), integers in decimal,
timestamps in UTC as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fractional digits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from subswitch.contract import AnyCommand
from subswitch.errors import ConfigurationError
from subswitch.settings import Settings

#: The message member that carries the signature.
SIGNATURE_FIELD: Final = "signature"
#: Prefix of the signed bytes: a signature made for anything else never verifies here.
SIGNING_CONTEXT: Final = b"subswitch-command-v1\n"
#: Prefix of a bulk chunk's signed bytes.
CHUNK_SIGNING_CONTEXT: Final = b"subswitch-chunk-v1\n"
#: The message header a bulk chunk's signature travels in: ``<key_id>:<base64 value>``.
CHUNK_SIGNATURE_HEADER: Final = "x-subswitch-chunk-signature"
#: Key ids: safe in a log line and a header; ``keys create`` makes 16 hex digits.
KEY_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]{1,64}$"
KeyId = Annotated[str, StringConstraints(pattern=KEY_ID_PATTERN)]
_SIGNATURE_BYTES: Final = 64
_PUBLIC_KEY_BYTES: Final = 32


class Signature(BaseModel):
    """A command's signature as it travels: the key's id and the base64 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: KeyId
    #: Standard base64 (RFC 4648 §4, with padding) of the 64-byte Ed25519 signature.
    value: str


def canonical_bytes(command: AnyCommand) -> bytes:
    """The bytes of ``command`` a signature covers (see the module's docstring)."""
    fields = {name: _canonical_value(value) for name, value in command.model_dump().items()}
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signing_input(command: AnyCommand, key_id: str) -> bytes:
    """What is signed: the context, the key id and the command's canonical bytes."""
    return SIGNING_CONTEXT + key_id.encode() + b"\n" + canonical_bytes(command)


def chunk_signing_input(commands: Sequence[AnyCommand], key_id: str) -> bytes:
    """What a bulk chunk's signature covers: the context, the key id, and the SHA-256
    (32 raw bytes) of each command's canonical bytes, in the chunk's order."""
    digests = b"".join(hashlib.sha256(canonical_bytes(c)).digest() for c in commands)
    return CHUNK_SIGNING_CONTEXT + key_id.encode() + b"\n" + digests


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The id ``keys create`` gives a key: 16 hex digits of the SHA-256 of its raw bytes."""
    return hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The public key as the policy file holds it: base64 of its 32 raw bytes."""
    return base64.b64encode(raw_public_key(public_key)).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from the policy's base64 text.

    Raises:
        ValueError: not base64 of 32 bytes.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("public_key is not base64") from None
    if len(raw) != _PUBLIC_KEY_BYTES:
        raise ValueError(f"public_key is {len(raw)} bytes, an Ed25519 key is 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify(public_key: Ed25519PublicKey, command: AnyCommand, signature: Signature) -> bool:
    """Whether ``signature`` is ``public_key``'s over ``command`` (never raises)."""
    try:
        message = signing_input(command, signature.key_id)
    except UnicodeEncodeError:  # a lone surrogate: no producer signed that
        return False
    return verify_bytes(public_key, message, signature.value)


def verify_chunk(
    public_key: Ed25519PublicKey, commands: Sequence[AnyCommand], signature: Signature
) -> bool:
    """Whether ``signature`` is ``public_key``'s over the chunk ``commands`` (never raises)."""
    try:
        message = chunk_signing_input(commands, signature.key_id)
    except UnicodeEncodeError:
        return False
    return verify_bytes(public_key, message, signature.value)


def verify_bytes(public_key: Ed25519PublicKey, message: bytes, value: str) -> bool:
    """Whether ``value`` (base64) is ``public_key``'s Ed25519 signature of ``message``."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) != _SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(raw, message)
    except InvalidSignature:
        return False
    return True


def detach_signature(payload: Any) -> tuple[Any, object | None]:
    """Split a received message into the command's fields and the raw signature member.

    Anything but a JSON object comes back as it is (the contract refuses it later).
    """
    if not isinstance(payload, dict) or SIGNATURE_FIELD not in payload:
        return payload, None
    fields = dict(payload)
    return fields, fields.pop(SIGNATURE_FIELD)


def parse_chunk_signature(header: object) -> Signature | None:
    """A chunk's signature from its header (``<key_id>:<base64>``), or ``None``."""
    if not isinstance(header, str) or ":" not in header:
        return None
    key_id, _, value = header.rpartition(":")
    return parse_signature({"key_id": key_id, "value": value})


def parse_signature(raw: object) -> Signature | None:
    """The signature member as a :class:`Signature`, or ``None`` if it is not one."""
    try:
        return Signature.model_validate(raw)
    except ValidationError:
        return None


class Signer:
    """Signs commands with one producer's (or gateway's) Ed25519 private key.

    The key never shows: not in ``repr``, not in an error.
    """

    def __init__(self, *, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id or key_id_of(self.public_key)

    @classmethod
    def from_key_file(cls, path: Path | str, *, key_id: str | None = None) -> Signer:
        """A signer from a PEM (PKCS #8) Ed25519 private key file, as ``keys create``
        writes it; the key id is derived from the public key unless given.

        Raises:
            ConfigurationError: the file cannot be read or holds no Ed25519 key
                (naming ``SUBSWITCH_PRODUCER_KEY_FILE``, never the key).
        """
        variable = "SUBSWITCH_PRODUCER_KEY_FILE"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            message = f"cannot read {path}: {exc.strerror}"
            raise ConfigurationError(message, variable=variable) from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            message = f"{path} is not an unencrypted PEM private key"
            raise ConfigurationError(message, variable=variable) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigurationError(f"{path} holds no Ed25519 key", variable=variable)
        return cls(private_key=key, key_id=key_id)

    def sign(self, command: AnyCommand) -> Signature:
        """The signature of ``command`` under this key."""
        value = self._private_key.sign(signing_input(command, self.key_id))
        return Signature(key_id=self.key_id, value=base64.b64encode(value).decode())

    def sign_chunk(self, commands: Sequence[AnyCommand]) -> str:
        """The signature of a bulk chunk, as its header carries it (``<key_id>:<base64>``).

        It lets a worker verify the chunk once instead of each command; each command
        still carries its own signature, for when it leaves the chunk (a retry alone,
        a split).
        """
        value = self._private_key.sign(chunk_signing_input(commands, self.key_id))
        return f"{self.key_id}:{base64.b64encode(value).decode()}"

    def message_body(self, command: AnyCommand) -> dict[str, Any]:
        """``command`` as the JSON object that travels: its fields and its signature."""
        body = command.model_dump(mode="json")
        body[SIGNATURE_FIELD] = self.sign(command).model_dump()
        return body

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id!r})"


def producer_signer(settings: Settings) -> Signer | None:
    """The signer of ``SUBSWITCH_PRODUCER_KEY_FILE``, or ``None`` when it is unset.

    Raises:
        ConfigurationError: the file cannot be read or holds no Ed25519 key.
    """
    if settings.producer_key_file is None:
        return None
    return Signer.from_key_file(settings.producer_key_file)


def message_body(command: AnyCommand, signer: Signer | None) -> dict[str, Any]:
    """The JSON object a command travels as: signed when there is a ``signer``."""
    if signer is None:
        return command.model_dump(mode="json")
    return signer.message_body(command)


def _canonical_value(value: Any) -> Any:
    if isinstance(value, datetime):
        utc = value.astimezone(UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="microseconds") + "Z"
    if isinstance(value, Enum):
        return value.value
    return value
