"""The SDK and the publishers sign what they send (contract §8)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from producers import CommandProducer, InMemoryPublisher
from subswitch.contract import ChangeServiceStatus, Lane, parse_command
from subswitch.settings import Settings
from subswitch.signing import (
    Signature,
    detach_signature,
    parse_chunk_signature,
    verify,
    verify_chunk,
)
from tests.policies import signer


def test_a_producer_with_a_signer_signs_every_command() -> None:
    # Given a producer signing with billing's key
    publisher = InMemoryPublisher()
    producer = CommandProducer(
        publisher=publisher, default_source="billing", signer=signer("billing")
    )
    # When it sends a service change
    producer.change_service_status(org_id="telco", subscription_id=7, service_id=2, active=False)
    # Then the message carries a signature by billing's key over the command sent
    [(_, body)] = publisher.sent
    fields, raw = detach_signature(body)
    signature = Signature.model_validate(raw)
    assert signature.key_id == signer("billing").key_id
    assert verify(signer("billing").public_key, parse_command(fields), signature)


def test_a_producer_without_a_signer_sends_unsigned_commands_unchanged() -> None:
    # When a producer without a key sends a command
    publisher = InMemoryPublisher()
    CommandProducer(publisher=publisher, default_source="billing").change_service_status(
        org_id="telco", subscription_id=7, service_id=2, active=False
    )
    # Then the message is the command's fields alone
    [(_, body)] = publisher.sent
    assert "signature" not in body
    assert parse_command(body).source == "billing"


def test_a_chunk_is_signed_whole_and_command_by_command() -> None:
    # Given a publisher with the batch job's key
    publisher = InMemoryPublisher(signer=signer("batch:*"))
    commands = [
        ChangeServiceStatus(
            command_id=f"b-{n}", org_id="acme", subscription_id=n + 1, service_id=3,
            active=True, source="batch:nightly", priority=Lane.BULK,
        )
        for n in range(3)
    ]  # fmt: skip
    # When they go out as one chunk
    publisher.publish_batch(commands)
    # Then the chunk's header signs them all, and each carries its own signature too
    [chunk] = publisher.chunks
    key = signer("batch:*")
    header = parse_chunk_signature(chunk.signature)
    assert header is not None and verify_chunk(key.public_key, commands, header)
    for command, body in zip(commands, chunk.commands, strict=True):
        fields, raw = detach_signature(body)
        assert parse_command(fields) == command
        assert verify(key.public_key, command, Signature.model_validate(raw))
    assert publisher.chunked_commands == commands


def test_from_settings_signs_with_the_producer_key_file(tmp_path: Path) -> None:
    # Given SUBSWITCH_PRODUCER_KEY_FILE naming a PEM key
    private = Ed25519PrivateKey.generate()
    path = tmp_path / "fraud-engine.key"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # When a producer is configured from the settings (no broker is contacted yet)
    producer = CommandProducer.from_settings(
        Settings(broker_url="memory://", producer_key_file=path)
    )
    # Then its publisher signs with that key
    try:
        assert producer.signer is not None
        assert producer.signer.public_key == private.public_key()
    finally:
        producer.close()
