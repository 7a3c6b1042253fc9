"""What a chaos run sends: several commands per target, shuffled, some twice, some
reusing an id with another payload; and what the run must end with.

Every target is one block of one subscription. A target's commands are issued one
second apart (an hour ago, well inside the retention window) and alternate between
putting the block on and lifting it at random, so the newest intent is known up front,
whatever order the messages arrive in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from subswitch.contract import ChangeBlockStatus, event_id

#: Shares of the lanes among the originals (bulk ones travel in chunks).
LANE_WEIGHTS: dict[str, float] = {"normal": 0.6, "urgent": 0.2, "bulk": 0.2}


@dataclass(frozen=True)
class ChaosSize:
    """How big one chaos run is, and how hard it shakes."""

    commands: int = 2_000
    targets: int = 200
    duplicate_share: float = 0.05
    reuse_share: float = 0.02
    chunk_size: int = 20
    workers: int = 3
    concurrency: int = 16
    #: Seconds over which the messages are sent (paced, not all at once).
    send_over_s: float = 30.0
    #: One worker is SIGKILLed (and replaced) every ``kill_every_s`` for ``kill_for_s``.
    kill_every_s: float = 5.0
    kill_for_s: float = 60.0
    #: RabbitMQ only: stop the broker's app this long into the run, for ``outage_s``.
    restart_at_s: float | None = 25.0
    outage_s: float = 5.0
    timeout_s: float = 420.0
    seed: int = 2026
    #: The workers' redelivery window: a SIGKILLed worker's commands come back after it.
    visibility_s: int = 20


#: ``make chaos``.
FULL = ChaosSize()
#: The version inside ``make test``: about 200 commands, one SIGKILL, no broker restart.
SMALL = ChaosSize(
    commands=200,
    targets=40,
    workers=3,
    concurrency=8,
    send_over_s=4.0,
    kill_every_s=3.0,
    kill_for_s=3.5,
    restart_at_s=None,
    timeout_s=60.0,
    visibility_s=10,
)


@dataclass(frozen=True)
class Message:
    """One message to send: a command (or a copy, or an id reused with another payload)."""

    command: ChangeBlockStatus
    kind: str  # "original", "duplicate" or "reuse"

    @property
    def event_id(self) -> str:
        """The id its terminal event carries."""
        return event_id(self.command.command_id, self.command.fingerprint())


@dataclass
class Plan:
    """The messages in sending order, and what each command and target expects."""

    messages: list[Message]
    originals: dict[str, ChangeBlockStatus] = field(default_factory=dict)
    reuses: dict[str, ChangeBlockStatus] = field(default_factory=dict)

    @property
    def targets(self) -> set[tuple[int, int]]:
        """``(subscription_id, block_id)`` of every target."""
        return {(c.subscription_id, c.block_id) for c in self.originals.values()}

    def expected_event_ids(self) -> set[str]:
        """One event per distinct (command id, payload) sent."""
        return {message.event_id for message in self.messages}


def build_plan(size: ChaosSize, *, run: str, now: datetime | None = None) -> Plan:
    """The messages of one run; ``run`` makes its command ids unique."""
    rng = random.Random(size.seed)
    start = (now or datetime.now(UTC)) - timedelta(hours=1)
    originals = _originals(size, run, start, rng)
    messages = [Message(command, "original") for command in originals]
    for command in rng.sample(originals, round(size.duplicate_share * len(originals))):
        messages.append(Message(command.model_copy(), "duplicate"))
    reused = rng.sample(originals, round(size.reuse_share * len(originals)))
    reuses = [command.model_copy(update={"active": not command.active}) for command in reused]
    messages += [Message(command, "reuse") for command in reuses]
    rng.shuffle(messages)
    return Plan(
        messages,
        originals={command.command_id: command for command in originals},
        reuses={command.command_id: command for command in reuses},
    )


def _originals(
    size: ChaosSize, run: str, start: datetime, rng: random.Random
) -> list[ChangeBlockStatus]:
    per_target = max(1, size.commands // size.targets)
    lanes, weights = list(LANE_WEIGHTS), list(LANE_WEIGHTS.values())
    commands: list[ChangeBlockStatus] = []
    for target in range(size.targets):
        subscription_id, block_id = target // 2 + 1, target % 2 + 1
        for step in range(per_target):
            commands.append(
                ChangeBlockStatus(
                    command_id=f"chaos-{run}-{target:04d}-{step:02d}",
                    org_id="telco",
                    subscription_id=subscription_id,
                    block_id=block_id,
                    active=rng.random() < 0.5,
                    issued_at=start + timedelta(seconds=step, microseconds=rng.randrange(1000)),
                    priority=rng.choices(lanes, weights)[0],
                    source="chaos",
                    reason="chaos",
                )
            )
    return commands
