"""Loading a service account file: clear one-line errors that never quote the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.worker.upstream.conftest import RsaKey
from worker.upstream import ConfigurationError, ServiceAccount


def test_valid_file_loads_and_ignores_extra_fields(account_file: Path) -> None:
    # Given a file with the three fields and an extra "type"
    # When it is loaded
    account = ServiceAccount.from_file(account_file)
    # Then the fields are there and the key is hidden
    assert account.private_key_id == "kid-42"
    assert account.client_email == "worker@telco.example"
    assert "PRIVATE KEY" in account.private_key.get_secret_value()
    assert "PRIVATE KEY" not in repr(account)
    assert "PRIVATE KEY" not in str(account)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        ServiceAccount.from_file(tmp_path / "nope.json")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        ServiceAccount.from_file(tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('["a"]', "is not a JSON object"),
        ("", "is not valid JSON"),
    ],
)
def test_not_a_json_object(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "sa.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=expected):
        ServiceAccount.from_file(path)


@pytest.mark.parametrize("missing", ["private_key_id", "private_key", "client_email"])
def test_missing_field_is_named_without_quoting_the_key(
    tmp_path: Path, rsa_key: RsaKey, missing: str
) -> None:
    # Given a file lacking one field
    data = {"private_key_id": "k", "private_key": rsa_key.private_pem, "client_email": "a@b"}
    del data[missing]
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(data))
    # When it is loaded
    with pytest.raises(ConfigurationError) as caught:
        ServiceAccount.from_file(path)
    # Then the error names the field, on one line, without any of the key
    text = str(caught.value)
    assert missing in text
    assert "\n" not in text
    assert "PRIVATE KEY" not in text
    assert rsa_key.private_pem.splitlines()[1] not in text
    assert caught.value.__cause__ is None


def test_broken_json_does_not_quote_the_key(tmp_path: Path, rsa_key: RsaKey) -> None:
    # Given a file whose JSON breaks right after the key (raw newlines in a string)
    path = tmp_path / "sa.json"
    path.write_text('{"private_key": "' + rsa_key.private_pem + '"}')
    # When it is loaded / Then the error locates the problem without repeating the text
    with pytest.raises(ConfigurationError) as caught:
        ServiceAccount.from_file(path)
    assert "PRIVATE KEY" not in str(caught.value)
    assert rsa_key.private_pem.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(
    "key",
    [
        "not a key",
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    ],
)
def test_invalid_private_key(tmp_path: Path, key: str) -> None:
    # Given a file whose private_key is not a usable RSA PEM
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"private_key_id": "k", "private_key": key, "client_email": "e"}))
    # When it is loaded / Then the key is refused without being quoted
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM-encoded RSA") as caught:
        ServiceAccount.from_file(path)
    assert "AAAA" not in str(caught.value)


def test_non_rsa_key_is_refused(tmp_path: Path) -> None:
    # Given an EC key where RSA is required (RS256)
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"private_key_id": "k", "private_key": pem, "client_email": "e"}))
    # When it is loaded / Then it is refused
    with pytest.raises(ConfigurationError, match="RSA"):
        ServiceAccount.from_file(path)
