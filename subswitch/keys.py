"""Every Redis key subswitch writes, with its lifetime. One place, units in the names.

The worker writes them; the operating commands (status, retry, reconcile) read them."""

from __future__ import annotations

import hashlib
from typing import Any, Final

from subswitch.contract import Target

PREFIX: Final = "subswitch"

# A command's record (fingerprint, state, attempts, terminal event) outlives its last
# change by the configured retention (``Settings.retention_seconds``): duplicates
# inside it never reach the upstream again.
#: Extra life of a target's watermark beyond the acceptance window (below): a command
#: accepted at the window's edge may still retry, settle or wait for a while.
TARGET_MARGIN_S: Final = 7 * 24 * 3600


def target_retention_s(*, retention_s: int, max_clock_skew_s: int) -> int:
    """How long a target's watermark lives after the write that set it.

    A command is accepted while its ``issued_at`` lies within ``[now - retention,
    now + skew]`` (contract §2.6), and a write that sets the watermark was issued at
    most ``skew`` ahead of when it was applied. So a command older than the watermark
    can be accepted at most ``retention + skew`` after that write: the watermark must
    live that long (and the margin), or the older command would find no watermark and
    be sent over the newer one.
    """
    return retention_s + max_clock_skew_s + TARGET_MARGIN_S


#: How long a finished delivery may take to publish its event before another
#: delivery of the same command takes the job over.
PUBLISH_CLAIM_MS: Final = 30_000


def command(command_id: str) -> str:
    """Hash: fp, state (sending, waiting, settling, done), attempts, token (of the
    delivery that last began it), last_error, ambiguous, settle_until (ms), since (ms:
    when it entered its state), next_at (ms: when a waiting or settling command's next
    attempt is due), event, published, claim, claim_until."""
    return f"{PREFIX}:cmd:{command_id}"


def acceptance(command_id: str) -> str:
    """Hash: fp and at (ms) of a command a producer handed to the broker, before any
    worker saw it (``subswitch status`` says ``queued``; the gateway answers 409 for
    another payload). Deleted when a worker writes the command's record; else lives the
    retention (``Settings.retention_seconds``)."""
    return f"{PREFIX}:accepted:{command_id}"


def rejections(command_id: str) -> str:
    """Set: the keys of the :func:`conflict` and :func:`rejected` records of messages
    that carried this command id, so ``subswitch status`` finds them. Lives the
    retention from its newest member."""
    return f"{PREFIX}:rejections:{command_id}"


def conflict(command_id: str, fingerprint: str) -> str:
    """Hash like :func:`command`, for a message that reused a command id."""
    return f"{PREFIX}:conflict:{command_id}:{fingerprint}"


def _target_suffix(target: Target) -> str:
    return f"{target.org_id}:{target.subscription_id}:{target.kind}:{target.ident}"


def target(target: Target) -> str:
    """Hash: ``us``, ``id`` and upstream ``status`` of the newest command applied to the
    target."""
    return f"{PREFIX}:target:{_target_suffix(target)}"


def targets_of_org(org_id: str) -> str:
    """SCAN pattern of every :func:`target` key of ``org_id`` (org ids hold no glob
    characters: ``[A-Za-z0-9_-]``)."""
    return f"{PREFIX}:target:{org_id}:*"


def target_lock(target: Target) -> str:
    """String with a lease (PX): the delivery token of the command in flight (lease
    plus settle time), or ``settling`` while a write whose answer was lost may still
    be applied upstream (settle time)."""
    return f"{PREFIX}:lock:{_target_suffix(target)}"


def target_pending(target: Target) -> str:
    """Hash ``command_id -> issued µs``: commands on the target with an attempt whose
    result is unknown (answer lost, or its delivery died). An older command waits for
    them. Lives as long as command records (refreshed on every entry)."""
    return f"{PREFIX}:pending:{_target_suffix(target)}"


def rejected(event_id: str) -> str:
    """Hash like :func:`command`, for a message that is not a valid command."""
    return f"{PREFIX}:rejected:{event_id}"


# --- traffic control (worker/traffic.py): shared by every worker -------------------

#: String: the rate limiter's theoretical arrival time (µs since the epoch). Expires a
#: minute after the last reservation.
RATE_TAT: Final = f"{PREFIX}:rate:tat"
#: Sorted set: the sends of the last second (score and time in µs), for the hard cap.
RATE_SENT: Final = f"{PREFIX}:rate:sent"
#: String (µs, store time) with a ~2 s lease: the earliest moment the hard cap admits the
#: next send at the configured pace.
RATE_PACE: Final = f"{PREFIX}:rate:pace"
#: String with a 1 s lease: urgent commands are waiting for budget.
RATE_URGENT_WAITING: Final = f"{PREFIX}:rate:urgent"
#: Hash: ``state`` (closed, open, half_open) and ``until`` (ms) of the circuit breaker.
BREAKER_STATE: Final = f"{PREFIX}:breaker"
#: String with a lease: the token of the probe in flight while half-open.
BREAKER_PROBE: Final = f"{PREFIX}:breaker:probe"
#: Prefix of per-second hashes ``ok`` / ``failed``; each lives window + 2 s.
BREAKER_BUCKET: Final = f"{PREFIX}:breaker:s:"


# --- deliveries that never finish (worker/deliveries.py) ---------------------------

#: How long delivery counts are kept. A message's count is deleted when a delivery
#: finishes and a task's deaths when it is done, so only deliveries whose worker died
#: leave one; a day outlives any redelivery cycle (delivery limit x visibility timeout).
DELIVERY_COUNT_TTL_S: Final = 24 * 3600


def deliveries(delivery_tag: str) -> str:
    """String (INCR): deliveries of one broker message that started and did not finish."""
    return f"{PREFIX}:deliveries:{delivery_tag}"


def task_deaths(task_id: str) -> str:
    """String (INCR): deliveries in a row of one task (its retries included) that died."""
    return f"{PREFIX}:deaths:{task_id}"


def dead_lettered(digest: str) -> str:
    """String: this message (command id and body, SHA-256) is in ``subswitch.dead``
    already; kept for the retention, so a redelivery never adds a second copy."""
    return f"{PREFIX}:dead:{digest}"


def dead_letter_mark(body: bytes, command_id: Any) -> str:
    """The :func:`dead_lettered` key of one message: the SHA-256 of its command id (the
    ``command_id`` header, if any) and its body. ``subswitch dead replay`` deletes it, so
    a replayed message that fails again is kept again."""
    digest = hashlib.sha256(f"{command_id or ''}\n".encode() + body).hexdigest()
    return dead_lettered(digest)


# --- live figures for ``subswitch top`` (subswitch/livestats.py) --------------------

#: Sorted set ``process key -> last report (ms)``: the worker processes reporting.
#: Entries older than :data:`STATS_TTL_S` are pruned at each report; the set itself
#: expires :data:`STATS_TTL_S` after the last one.
STATS_INDEX: Final = f"{PREFIX}:stats"
#: How long a worker process's figures outlive its last report (it reports every 2 s).
STATS_TTL_S: Final = 15


def process_stats(node: str, pid: int) -> str:
    """String (JSON, expires after :data:`STATS_TTL_S`): one worker process's running
    totals (outcomes by lane, writes, in flight, settling)."""
    return f"{PREFIX}:stats:{node}:{pid}"


#: How long the gateway's acceptance record (:func:`acceptance`) lives until the broker
#: has taken the command: longer than a publish may take (its retries included). Then
#: it is kept for the retention; a gateway that died before publishing leaves a record
#: that claims the command only this long.
ACCEPTANCE_PENDING_S: Final = 60
