"""Generating and loading MasStack-style service-account files."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from subswitch.simulator.accounts import generate_service_account, load_trusted_account


def test_generated_file_has_the_masstack_shape_and_is_private(account_file: Path) -> None:
    # Given a generated service-account file
    document = json.loads(account_file.read_text())
    # Then it has the MasStack fields, a PKCS#1 RSA key, and only its owner may read it
    assert set(document) == {"type", "private_key_id", "private_key", "client_email"}
    assert document["type"] == "service_account"
    assert document["client_email"] == "subswitch@sim.local"
    assert document["private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert len(document["private_key_id"]) == 40
    assert stat.S_IMODE(account_file.stat().st_mode) == 0o600


def test_loaded_account_keeps_the_public_half_and_hides_it(account_file: Path) -> None:
    # Given a generated file
    document = json.loads(account_file.read_text())
    # When it is loaded for trust
    account = load_trusted_account(account_file)
    # Then it carries the key id, email and a 2048-bit key, and its repr shows no key
    assert account.key_id == document["private_key_id"]
    assert account.client_email == "subswitch@sim.local"
    assert account.public_key.key_size == 2048
    assert "public_key" not in repr(account)


def test_existing_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    # Given an existing file, world-readable
    path = tmp_path / "sa.json"
    path.write_text("keep me")
    path.chmod(0o644)
    # When an account is generated there without overwrite
    # Then it refuses and the file is untouched
    with pytest.raises(FileExistsError):
        generate_service_account(path)
    assert path.read_text() == "keep me"
    # When overwrite is asked for with another email
    generate_service_account(path, client_email="ops@example.test", overwrite=True)
    # Then the new account is there, private
    assert json.loads(path.read_text())["client_email"] == "ops@example.test"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_parent_directories_are_created(tmp_path: Path) -> None:
    # When an account is generated in a directory that does not exist yet
    path = generate_service_account(tmp_path / "a" / "b" / "sa.json")
    # Then it is written
    assert load_trusted_account(path).key_id


@pytest.mark.parametrize(
    "content",
    ["not json", "{}", '{"private_key": "-----BEGIN RSA PRIVATE KEY-----\\nsecret-bits\\n"}'],
)
def test_unusable_files_fail_without_quoting_them(tmp_path: Path, content: str) -> None:
    # Given a file that is not a usable service account
    path = tmp_path / "bad.json"
    path.write_text(content)
    # When it is loaded
    # Then a ValueError names the file but not its contents
    with pytest.raises(ValueError, match="not a usable service-account file") as caught:
        load_trusted_account(path)
    assert "secret-bits" not in str(caught.value)
    assert caught.value.__cause__ is None
