"""``subswitch keys create`` and ``subswitch policy check``: producers' keys, the policy.

``keys create NAME`` writes an Ed25519 private key (PEM, PKCS #8) readable by its owner
only and prints the policy stanza with the public key; ``--api-key`` makes a gateway
API key instead, printed once with the SHA-256 the policy keeps. ``policy check FILE``
lists every problem of a policy file with its line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from subswitch.commandline import ExitCode, OneLineErrors, fail
from subswitch.policy import PolicyError, load_policy
from subswitch.signing import key_id_of, public_key_text

#: API keys carry a prefix so a leaked one is recognisable (secret scanners, logs).
API_KEY_PREFIX: Final = "sskey_"
_API_KEY_BYTES: Final = 32
_KEYS_EPILOG: Final = "Exit status: 0 created; 2 bad name, or the key file exists (kept)."
_CHECK_EPILOG: Final = "Exit status: 0 valid; 2 problems found (each with its line)."

keys_app = typer.Typer(help="Producers' signing keys and gateway API keys (contract §8).")
policy_app = typer.Typer(help="The policy of who may send what (contract §8).")


@keys_app.command("create", cls=OneLineErrors, epilog=_KEYS_EPILOG)
def create(
    name: Annotated[str, typer.Argument(help="The producer (or gateway) the key is for.")],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the private key file <NAME>.key.")
    ] = Path(),
    api_key: Annotated[
        bool, typer.Option("--api-key", help="Make a gateway API key instead of a key pair.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Make an Ed25519 key pair (private key file 0600) and print its policy stanza."""
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        fail(f"{name!r} cannot name a key file: no '/', no leading '.'", ExitCode.BAD_INPUT)
    if api_key:
        _print(_new_api_key(name), as_json=as_json)
        return
    _print(_new_key_pair(name, out / f"{name}.key"), as_json=as_json)


@policy_app.command("check", cls=OneLineErrors, epilog=_CHECK_EPILOG)
def check(
    file: Annotated[Path, typer.Argument(help="The policy file (YAML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Validate a policy file and list every problem with its line."""
    try:
        policy = load_policy(file)
    except PolicyError as exc:
        problems = [{"line": p.line, "path": p.path, "message": p.message} for p in exc.problems]
        if as_json:
            typer.echo(json.dumps({"file": str(file), "valid": False, "problems": problems}))
        else:
            for problem in exc.problems:
                typer.echo(f"{file}:{problem.line or 0}: {problem.path or '-'}: {problem.message}")
            typer.echo(f"error: {len(problems)} problem(s) in {file}", err=True)
        raise typer.Exit(ExitCode.BAD_INPUT) from None
    doc = policy.document
    summary = {
        "file": str(file),
        "valid": True,
        "sha256": policy.digest,
        "producers": list(doc.producers),
        "gateways": list(doc.gateways),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{file}: valid: {policy.summary()}")


def _new_key_pair(name: str, path: Path) -> dict[str, Any]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    public = key.public_key()
    return {
        "producer": name,
        "key_file": str(path),
        "key_id": key_id_of(public),
        "public_key": public_key_text(public),
    }


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never over an existing file), then write."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fail(f"{path} exists; it is kept (choose another --out or remove it)", ExitCode.BAD_INPUT)
    except OSError as exc:
        fail(f"cannot create {path}: {exc.strerror}", ExitCode.BAD_INPUT)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _new_api_key(name: str) -> dict[str, Any]:
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(_API_KEY_BYTES)
    return {
        "producer": name,
        "api_key": api_key,
        "sha256": hashlib.sha256(api_key.encode()).hexdigest(),
    }


def _print(created: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(created))
        return
    name = json.dumps(created["producer"])
    if "api_key" in created:
        typer.echo(f"API key for {created['producer']} (shown once, keep it secret):")
        typer.echo(f"  {created['api_key']}")
        typer.echo("Add its SHA-256 to the producer in the policy file:")
        typer.echo(f"  {name}:\n    api_keys:\n      - {created['sha256']}")
        return
    typer.echo(f"Private key written to {created['key_file']} (mode 0600).")
    typer.echo("Add the public key to the policy file (under producers: or gateways:):")
    typer.echo(
        f"  {name}:\n    keys:\n      - id: {created['key_id']}\n"
        f"        public_key: {created['public_key']}"
    )


def register(app: typer.Typer) -> None:
    """Add ``keys`` and ``policy`` to the ``subswitch`` CLI."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(policy_app, name="policy")
