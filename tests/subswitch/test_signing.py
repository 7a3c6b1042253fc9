"""Signed commands: the canonical bytes, signing and verifying, the key file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subswitch.contract import ChangeBlockStatus, ChangeServiceStatus, Lane, parse_command
from subswitch.errors import ConfigurationError
from subswitch.settings import Settings
from subswitch.signing import (
    CHUNK_SIGNING_CONTEXT,
    SIGNING_CONTEXT,
    Signature,
    Signer,
    canonical_bytes,
    chunk_signing_input,
    detach_signature,
    key_id_of,
    message_body,
    parse_chunk_signature,
    producer_signer,
    verify,
    verify_chunk,
)
from tests.policies import signer

ISSUED = datetime(2026, 11, 22, 9, 0, 0, tzinfo=UTC)


def block(**overrides: object) -> ChangeBlockStatus:
    fields: dict[str, object] = {
        "command_id": "fraud-1",
        "org_id": "telco",
        "subscription_id": 7,
        "block_id": 1,
        "active": True,
        "source": "fraud-engine",
        "issued_at": ISSUED,
        "priority": Lane.URGENT,
    }
    fields.update(overrides)
    return ChangeBlockStatus.model_validate(fields)


def test_canonical_bytes_are_every_field_sorted_compact_utc_with_microseconds() -> None:
    # Given a block command stamped in another time zone, with a non-ASCII reason
    command = block(
        issued_at=datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=1))),
        reason="robo en León",
    )
    # When its canonical bytes are taken
    canonical = canonical_bytes(command)
    # Then they are exactly the documented form: every field, sorted, UTF-8, UTC "Z"
    assert (
        canonical
        == (
            '{"active":true,"block_id":1,"command_id":"fraud-1","correlation_id":null,'
            '"issued_at":"2026-11-22T09:00:00.000000Z","not_after":null,"org_id":"telco",'
            '"priority":"urgent","reason":"robo en León","schema_version":1,'
            '"source":"fraud-engine","subscription_id":7,"type":"ChangeBlockStatus"}'
        ).encode()
    )


def test_the_canonical_bytes_are_the_same_after_a_trip_through_the_wire() -> None:
    # Given a service command as it travels, defaults left out by a non-Python producer
    sent = {
        "type": "ChangeServiceStatus",
        "schema_version": 1,
        "command_id": "c-1",
        "org_id": "telco",
        "subscription_id": 9,
        "service_id": 2,
        "active": False,
        "issued_at": "2026-11-22T11:00:00.5+02:00",
        "source": "billing",
    }
    # When the worker parses it
    command = parse_command(sent)
    # Then its canonical bytes fill in the defaults and normalise the timestamp
    decoded = json.loads(canonical_bytes(command))
    assert decoded["issued_at"] == "2026-11-22T09:00:00.500000Z"
    assert (decoded["priority"], decoded["correlation_id"]) == ("normal", None)
    assert canonical_bytes(command) == canonical_bytes(ChangeServiceStatus.model_validate(sent))


def test_a_signature_verifies_and_any_changed_field_breaks_it() -> None:
    # Given a command signed by fraud-engine's key
    key = signer("fraud-engine")
    command = block()
    signature = key.sign(command)
    # Then it verifies with the public key, and not once any field changed
    assert verify(key.public_key, command, signature)
    for change in (
        {"block_id": 2},
        {"active": False},
        {"source": "billing"},
        {"issued_at": ISSUED + timedelta(microseconds=1)},
        {"priority": Lane.NORMAL},
        {"correlation_id": "x"},
    ):
        assert not verify(key.public_key, block(**change), signature), change
    # nor with another key, nor under another key id, nor when garbled
    assert not verify(signer("billing").public_key, command, signature)
    assert not verify(key.public_key, command, signature.model_copy(update={"key_id": "other"}))
    assert not verify(key.public_key, command, Signature(key_id=key.key_id, value="not base64!"))
    assert not verify(key.public_key, command, Signature(key_id=key.key_id, value="AAAA"))


def test_what_is_signed_is_the_context_the_key_id_and_the_canonical_bytes() -> None:
    # Given a raw Ed25519 key, as another language would hold it
    private = Ed25519PrivateKey.generate()
    command = block()
    key_id = key_id_of(private.public_key())
    # When it signs the documented bytes by hand
    message = SIGNING_CONTEXT + key_id.encode() + b"\n" + canonical_bytes(command)
    value = base64.b64encode(private.sign(message)).decode()
    # Then subswitch verifies that signature
    assert verify(private.public_key(), command, Signature(key_id=key_id, value=value))


def test_the_signature_travels_next_to_the_fields_and_is_detached_before_parsing() -> None:
    # Given a signed message body
    key = signer("fraud-engine")
    body = message_body(block(), key)
    # When the worker detaches the signature
    fields, raw = detach_signature(body)
    # Then the fields are the unsigned command and the signature is the signer's
    assert fields == block().model_dump(mode="json")
    assert Signature.model_validate(raw).key_id == key.key_id
    assert parse_command(fields) == block()
    # and a body without one, or no object at all, comes back as it was
    assert detach_signature(fields) == (fields, None)
    assert detach_signature("garbage") == ("garbage", None)
    assert message_body(block(), None) == fields


def test_a_key_file_written_as_keys_create_does_gives_a_signer_without_showing_it(
    tmp_path: Path,
) -> None:
    # Given a PEM private key file
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "billing.key"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    # When a signer is read from it through the settings
    loaded = producer_signer(Settings(producer_key_file=path))
    # Then it signs under the key's derived id, and its repr shows no key material
    assert loaded is not None
    assert loaded.key_id == key_id_of(private.public_key())
    assert verify(private.public_key(), block(), loaded.sign(block()))
    assert repr(loaded) == f"Signer(key_id={loaded.key_id!r})"
    assert producer_signer(Settings(producer_key_file=None)) is None


def test_a_missing_or_wrong_key_file_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    # Given a missing file and a file that is no key
    junk = tmp_path / "junk.key"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    os.chmod(junk, 0o600)
    # Then each is a ConfigurationError naming SUBSWITCH_PRODUCER_KEY_FILE, not the content
    for path in (tmp_path / "missing.key", junk):
        with pytest.raises(ConfigurationError) as caught:
            Signer.from_key_file(path)
        assert str(caught.value).startswith("SUBSWITCH_PRODUCER_KEY_FILE: ")
        assert "secret" not in str(caught.value)


def test_a_chunk_signature_covers_every_command_in_order() -> None:
    # Given three commands signed as one chunk
    key = signer("batch:*")
    commands = [block(command_id=f"c-{n}") for n in range(3)]
    header = key.sign_chunk(commands)
    signature = parse_chunk_signature(header)
    # Then the header names the key and verifies over the same commands, in that order
    assert signature is not None and signature.key_id == key.key_id
    assert verify_chunk(key.public_key, commands, signature)
    # and not over others, fewer, reordered, or with another key
    assert not verify_chunk(key.public_key, commands[::-1], signature)
    assert not verify_chunk(key.public_key, commands[:2], signature)
    assert not verify_chunk(key.public_key, [*commands[:2], block(command_id="c-9")], signature)
    assert not verify_chunk(signer("billing").public_key, commands, signature)
    # and the documented bytes are what is signed
    digests = b"".join(hashlib.sha256(canonical_bytes(c)).digest() for c in commands)
    expected = CHUNK_SIGNING_CONTEXT + key.key_id.encode() + b"\n" + digests
    assert chunk_signing_input(commands, key.key_id) == expected
    assert parse_chunk_signature("no separator") is None
    assert parse_chunk_signature(None) is None
