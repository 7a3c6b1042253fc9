"""Test helpers: producers' keys and policy files like the shipped example's, with keys
made here (the example's private keys exist nowhere)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subswitch.signing import Signer, public_key_text

EXAMPLE: Final = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"


@cache
def signer(name: str) -> Signer:
    """One key per name for the whole test run (``name`` only tells them apart)."""
    return Signer(private_key=Ed25519PrivateKey.generate())


def stanza(*names: str) -> list[dict[str, str]]:
    """The ``keys:`` list of the signers ``names``."""
    return [
        {"id": signer(n).key_id, "public_key": public_key_text(signer(n).public_key)} for n in names
    ]


def example_document() -> dict[str, Any]:
    """The shipped example policy, its keys replaced by this run's signers' (the
    producer's name, and ``<name>-next`` for a second key where it has one)."""
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for section in ("producers", "gateways"):
        for name, entry in document.get(section, {}).items():
            names = [name, f"{name}-next"][: len(entry["keys"])]
            entry["keys"] = stanza(*names)
    return document


def example_text(**changes: Any) -> str:
    """:func:`example_document` as YAML, with top-level ``changes`` applied."""
    document = example_document()
    document.update(changes)
    return yaml.safe_dump(document, sort_keys=False)
