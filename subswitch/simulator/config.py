"""What the simulator serves, whom it trusts and which faults it injects.

Both models are immutable: a running simulator swaps in a new :class:`Faults` when
``PUT /admin/faults`` changes them, it never edits one in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, field_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Millis = Annotated[float, Field(ge=0.0, le=3_600_000.0)]
OrgId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]
#: A target as the write log and stats name it: ``org/subscription/kind/id``.
TargetName = Annotated[
    str,
    StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}/[0-9]{1,19}/(service|block)/[0-9]{1,19}$"
    ),
]

DEFAULT_ORGS: tuple[str, ...] = ("telco", "acme")
DEFAULT_STATIC_TOKEN = "dev-token"  # noqa: S105 - a well-known development token, not a secret
MAX_ID = 2**63 - 1
MIN_TOKEN_SECRET_BYTES = 32


class Faults(BaseModel):
    """Faults injected into ``/v2`` requests.

    The probabilities describe mutually exclusive outcomes of one draw per request, in
    the order drop, lost_response (writes only), late_apply (writes only), 429, 500, 502,
    503, 504, slow: while they sum to at most 1 each is exact; past 1 the earlier ones
    win. A write on one of ``late_apply_targets`` is always late and draws nothing.
    Latency and jitter are added to every ``/v2`` request before the draw.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    latency_ms: Millis = Field(0.0, description="Fixed delay added to every /v2 request (ms).")
    jitter_ms: Millis = Field(0.0, description="Uniform random delay 0..jitter added (ms).")
    p_429: Probability = Field(0.0, description="Probability of a 429 Too Many Requests.")
    p_429_retry_after: Probability = Field(
        1.0, description="Fraction of the 429s that carry a Retry-After header."
    )
    retry_after_s: int = Field(
        1, ge=0, le=86_400, description="Retry-After value in seconds sent with a 429."
    )
    retry_after_http_date: bool = Field(
        False, description="Send Retry-After as an HTTP date instead of seconds."
    )
    p_500: Probability = Field(0.0, description="Probability of a 500 Internal Server Error.")
    p_502: Probability = Field(0.0, description="Probability of a 502 Bad Gateway.")
    p_503: Probability = Field(0.0, description="Probability of a 503 Service Unavailable.")
    p_504: Probability = Field(0.0, description="Probability of a 504 Gateway Timeout.")
    p_slow: Probability = Field(
        0.0,
        description="Probability of answering only after slow_ms; a write is applied only "
        "if the client is still waiting then.",
    )
    slow_ms: Millis = Field(15_000.0, description="Delay of a slow answer (ms).")
    p_drop: Probability = Field(
        0.0, description="Probability of dropping the connection without applying anything."
    )
    p_lost_response: Probability = Field(
        0.0,
        description="Probability (writes only) of applying the change, then dropping the "
        "connection: the ambiguous failure.",
    )
    p_late_apply: Probability = Field(
        0.0,
        description="Probability (writes only) of applying the change only late_apply_ms "
        "after the request arrived, whether or not the client still waits (a zombie write).",
    )
    late_apply_ms: Millis = Field(
        5_000.0, description="How long after its arrival a late write is applied (ms)."
    )
    late_apply_targets: tuple[TargetName, ...] = Field(
        (),
        strict=False,
        description="Targets (org/subscription/kind/id, e.g. telco/7/block/1) on which "
        "every write is applied late.",
    )


class SimulatorConfig(BaseModel):
    """Everything a simulator instance needs; built by the CLI or by tests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    orgs: tuple[OrgId, ...] = Field(DEFAULT_ORGS, min_length=1)
    subscriptions: int = Field(1000, ge=1, le=MAX_ID, description="Subscription ids 1..N.")
    tokens: tuple[SecretStr, ...] = (SecretStr(DEFAULT_STATIC_TOKEN),)
    auth: bool = True
    service_account_files: tuple[Path, ...] = ()
    token_ttl: int = Field(3600, ge=1, description="Lifetime of issued access tokens (s).")
    token_audience: str | None = None
    token_secret: SecretStr | None = None
    seed: int | None = None
    faults: Faults = Faults()
    write_log_cap: int = Field(1_000_000, ge=1)

    @field_validator("orgs")
    @classmethod
    def _distinct_orgs(cls, orgs: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(orgs)) != len(orgs):
            raise ValueError("org ids must be distinct")
        return orgs

    @field_validator("token_secret")
    @classmethod
    def _long_enough(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < MIN_TOKEN_SECRET_BYTES:
            raise ValueError(f"token_secret needs at least {MIN_TOKEN_SECRET_BYTES} characters")
        return secret
