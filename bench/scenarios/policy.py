"""What verifying a command against the policy costs a worker, per command.

In this process, single-threaded, the CPU time (``thread_time``) of the worker's own
call, ``PolicyWatch.check`` (canonical bytes, the Ed25519 verification, the signer and
rule lookups), on distinct signed commands under the shipped example policy (its keys
replaced by keys made here): billing's service changes, fraud-engine's urgent blocks
and batch jobs' bulk changes, one third each. Its parts are timed alone too, and so is
a refusal. Nothing here needs Redis or the simulator: ``python -m bench.scenarios.policy``
runs it on its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.harness import Context, Json
from bench.report import Row, ScenarioResult
from subswitch.contract import (
    AnyCommand,
    ChangeBlockStatus,
    ChangeServiceStatus,
    Lane,
    parse_command,
)
from subswitch.policy_watch import PolicyWatch
from subswitch.signing import (
    Signer,
    canonical_bytes,
    detach_signature,
    public_key_text,
    signing_input,
)

TARGET_MS: Final = 0.1
COMMANDS: Final = 6_000
CHUNK: Final = 100
EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
_ISSUED: Final = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def run(ctx: Context | None = None, count: int = COMMANDS) -> ScenarioResult:
    """Time the check and its parts; one row against the target."""
    signers = {name: Signer(private_key=Ed25519PrivateKey.generate()) for name in _NAMES}
    watch, path = _watch(signers, ctx)
    commands = [_command(n) for n in range(count)]
    signed = [(c, signers[_signer_of(c)].sign(c).model_dump()) for c in commands]
    for command, signature in signed[:200]:  # warm-up
        watch.check(command, signature)
    check_ms = _cpu_ms(lambda pair: watch.check(*pair), signed)
    again_ms = _cpu_ms(lambda pair: watch.check(*pair), signed[-1000:])
    refused = [(_lift(n), None) for n in range(count // 3)]
    parts = _parts(signers, signed, watch)
    parts["the same command again (retry, redelivery)"] = again_ms
    parts["refusal (unsigned)"] = _cpu_ms(lambda pair: watch.check(*pair), refused)
    chunk_ms = _chunk_ms(watch, signers["batch:*"], count)
    path.unlink(missing_ok=True)
    rows = [
        Row(
            "policy",
            "worker CPU to verify one command's signature and rules (ms), one thread",
            f"{check_ms:.3f}",
            "0 (no policy)",
            f"<= {TARGET_MS} ms",
            check_ms <= TARGET_MS,
        ),
        Row(
            "policy (bulk)",
            f"the same per command of a signed chunk of {CHUNK} (ms)",
            f"{chunk_ms:.3f}",
            "0 (no policy)",
            f"<= {TARGET_MS} ms",
            chunk_ms <= TARGET_MS,
        ),
    ]
    detail = ", ".join(f"{name} {value:.3f}" for name, value in parts.items())
    notes = [
        f"`PolicyWatch.check` on {count:,} distinct signed commands: {check_ms:.3f} ms each. "
        f"Its parts alone (ms): {detail}. The Ed25519 verification is the floor of any "
        "per-command signature; `openssl speed ed25519` gives the same figure for it.",
        f"Bulk: a chunk of {CHUNK} verified by its one chunk signature, then each command "
        f"held to its rules (the worker parses each command once more for it): "
        f"{chunk_ms:.3f} ms per command.",
    ]
    raw: Json = {"check_ms": check_ms, "chunk_ms": chunk_ms, "parts_ms": parts, "commands": count}
    return ScenarioResult(rows, raw, notes)


def _chunk_ms(watch: PolicyWatch, key: Signer, count: int) -> float:
    """CPU per command of what a worker does for a signed chunk: parse each command,
    verify the chunk's signature, hold each command to its rules."""
    commands = [_command(n) for n in range(count) if n % 3 == 2]
    chunks = [commands[i : i + CHUNK] for i in range(0, len(commands), CHUNK)]
    signed = [([key.message_body(c) for c in chunk], key.sign_chunk(chunk)) for chunk in chunks]
    started = time.thread_time()
    for bodies, header in signed:
        parsed = [parse_command(detach_signature(body)[0]) for body in bodies]
        vouched = watch.chunk_signer(parsed, header)
        if vouched is None:
            raise AssertionError("the chunk signature did not verify")
        for command in parsed:
            watch.check(command, None, vouched_by=vouched)
    return (time.thread_time() - started) / len(commands) * 1000


_NAMES: Final = ("fraud-engine", "billing", "billing-next", "batch:*", "gateway")


def _watch(signers: dict[str, Signer], ctx: Context | None) -> tuple[PolicyWatch, Path]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    for section in ("producers", "gateways"):
        for name, entry in document[section].items():
            names = [name, f"{name}-next"][: len(entry["keys"])]
            entry["keys"] = [
                {"id": signers[n].key_id, "public_key": public_key_text(signers[n].public_key)}
                for n in names
            ]
    folder = ctx.data_dir if ctx is not None else Path("/tmp")
    path = folder / "bench-policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return PolicyWatch.load(path, poll_s=1.0), path


def _command(n: int) -> AnyCommand:
    kind = n % 3
    if kind == 0:
        return ChangeServiceStatus(
            command_id=f"bill-{n}", org_id="telco", subscription_id=n + 1, service_id=2,
            active=bool(n % 2), source="billing", issued_at=_ISSUED,
        )  # fmt: skip
    if kind == 1:
        return ChangeBlockStatus(
            command_id=f"fraud-{n}", org_id="telco", subscription_id=n + 1, block_id=1,
            active=True, reason="stolen", source="fraud-engine", priority=Lane.URGENT,
            issued_at=_ISSUED, correlation_id=f"case-{n}",
        )  # fmt: skip
    return ChangeServiceStatus(
        command_id=f"batch-{n}", org_id="acme", subscription_id=n + 1, service_id=3,
        active=True, source="batch:dunning", priority=Lane.BULK, issued_at=_ISSUED,
    )  # fmt: skip


def _lift(n: int) -> AnyCommand:
    return ChangeBlockStatus(
        command_id=f"lift-{n}", org_id="telco", subscription_id=n + 1, block_id=1,
        active=False, source="billing", issued_at=_ISSUED,
    )  # fmt: skip


def _signer_of(command: AnyCommand) -> str:
    return "batch:*" if command.source.startswith("batch:") else command.source


def _parts(
    signers: dict[str, Signer], signed: list[tuple[AnyCommand, Any]], watch: PolicyWatch
) -> dict[str, float]:
    policy = watch.policy
    commands = [command for command, _ in signed]
    key = signers["billing"]
    message = signing_input(commands[0], key.key_id)
    value = key._private_key.sign(message)
    return {
        "canonical bytes": _cpu_ms(canonical_bytes, commands),
        "Ed25519 verify": _cpu_ms(lambda _: key.public_key.verify(value, message), commands),
        "signer and rules": _cpu_ms(
            lambda c: policy.authorize(c, signer=policy.producer_of(c.source) or ""), commands
        ),
    }


def _cpu_ms(action: Callable[[Any], Any], items: list[Any]) -> float:
    started = time.thread_time()
    for item in items:
        action(item)
    return (time.thread_time() - started) / len(items) * 1000


if __name__ == "__main__":
    result = run()
    print(json.dumps(result.raw, indent=2))
    print(*result.notes, sep="\n")
