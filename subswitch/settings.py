"""Configuration from the environment (prefix ``SUBSWITCH_``), read once at entry points."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from subswitch.logs import LogFormat
from subswitch.redact import redact_url

DEFAULT_UPSTREAM_URL = "http://127.0.0.1:8080/v2"


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "subswitch"


class ProcessSettings(BaseSettings):
    """What every process reads first, before its command's own settings: how it logs
    and whether it traces.

    Apart, so a bad unrelated variable does not stop ``--help`` from working.
    """

    model_config = SettingsConfigDict(env_prefix="SUBSWITCH_", extra="ignore", frozen=True)

    log_format: LogFormat = LogFormat.TEXT

    # OpenTelemetry's own variables (no SUBSWITCH_ prefix; the SDK reads the rest of
    # them itself): tracing is off unless they name an exporter or an endpoint.
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str | None = Field(None, validation_alias="OTEL_TRACES_EXPORTER")
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
    )


class Settings(ProcessSettings):
    """Every knob of subswitch; see the README's configuration table.

    Unset ``broker_url`` / ``store_url`` mean the embedded Redis under ``data_dir``.
    """

    model_config = SettingsConfigDict(env_prefix="SUBSWITCH_", extra="ignore", frozen=True)

    broker_url: str | None = None
    store_url: str | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)

    upstream_url: str = DEFAULT_UPSTREAM_URL
    upstream_token: SecretStr | None = None
    service_account_file: Path | None = None
    token_url: str | None = None
    token_audience: str | None = None
    token_scopes: str | None = None
    auth_roles: str | None = "API_KEY"

    connect_timeout: PositiveFloat = 3.0
    read_timeout: PositiveFloat = 10.0
    write_timeout: PositiveFloat = 10.0
    pool_timeout: PositiveFloat = 5.0

    rate_limit: PositiveFloat | None = None
    breaker: bool = True
    breaker_failure_ratio: float = Field(0.5, gt=0, le=1)
    breaker_min_requests: PositiveInt = 20
    breaker_window_s: PositiveInt = 10
    breaker_cooldown_s: PositiveFloat = 5.0
    max_attempts: PositiveInt = 8
    retention_seconds: PositiveInt = 24 * 3600
    #: How long an upstream may still apply a write whose answer was lost (contract §2.5).
    settle_seconds: PositiveFloat = 30.0
    #: How far ahead of the worker's clock ``issued_at`` may lie (contract §2.6).
    max_clock_skew_seconds: PositiveInt = 300
    visibility_timeout: PositiveInt = 300
    rabbitmq_queue_type: Literal["quorum", "classic"] = "quorum"
    #: Deliveries of a message that may die (worker killed, message returned) before it
    #: is dead-lettered; on RabbitMQ also the quorum queues' ``x-delivery-limit``. Five
    #: tells a poison message (one that kills every worker that takes it, and the other
    #: commands in flight there with it) from bad luck: a deploy, an OOM kill or a
    #: broker restart returns a message once or twice. RabbitMQ 4.0 would use 20, and
    #: then drop it.
    delivery_limit: PositiveInt = 5
    #: Largest message body (bytes) a producer sends and a worker parses: 1 MiB. A bulk
    #: chunk of 100 commands of the largest kind is about 376 KB; a typical command is
    #: 350 bytes. RabbitMQ 4.0 refuses messages over 16 MiB (3.x: 128 MiB).
    max_message_bytes: PositiveInt = 1024 * 1024
    source: str = "subswitch"
    #: Who may send what (contract §8); unset: every well-formed command is accepted.
    policy_file: Path | None = None
    #: How often a worker looks at the policy file's modification time (one stat).
    policy_poll_seconds: PositiveFloat = 1.0
    #: The Ed25519 private key (PEM) the SDK and the CLI sign commands with.
    producer_key_file: Path | None = None
    #: The HTTP gateway (``subswitch gateway``): where it listens. Loopback by default:
    #: expose it through a TLS-terminating proxy, never in clear text.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65535)
    #: The gateway's own signing key: it signs every command it enqueues. Unset: the
    #: producer key (``producer_key_file``).
    gateway_key_file: Path | None = None
    #: Largest request body the gateway reads: 1,000 commands of the largest kind are
    #: about 3.8 MB.
    gateway_max_body_bytes: PositiveInt = 5 * 1024 * 1024
    #: Bulk-lane commands of one request per ``subswitch.apply_batch`` message.
    gateway_chunk_size: PositiveInt = Field(100, le=250)
    #: ``Retry-After`` (s) of a ``503`` (broker or store unreachable).
    gateway_retry_after_seconds: PositiveInt = 5
    #: The audit archive (``postgresql://...``, ``sqlite:///...``); unset: a SQLite
    #: file in ``data_dir`` (``subswitch.archive.url``).
    archive_url: str | None = None
    #: How long the archive keeps an event (by its ``completed_at``), in days.
    archive_retention_days: PositiveInt = 400
    #: Events the archive inserts in one transaction, at most...
    archive_batch_size: PositiveInt = 500
    #: ...and how long (seconds) an event waits for its batch to fill before it is written.
    archive_flush_seconds: PositiveFloat = 0.5
    #: Celery remote control (``celery inspect``/``control``); off for locked-down fleets.
    remote_control: bool = True
    #: Port of ``/metrics``, ``/healthz`` and ``/readyz`` (one per ``subswitch worker``
    #: and per ``subswitch archive``);
    #: unset serves nothing.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    #: Address those endpoints listen on: every interface, so probes and scrapers
    #: from outside the container or pod reach them.
    metrics_host: str = "0.0.0.0"  # noqa: S104
    #: Celery task events (``-E``) on the workers and ``task-sent`` events from
    #: producers, so Flower sees each task; ``subswitch worker --events`` turns it on.
    task_events: bool = False

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Every URL may carry a password (broker, store, upstream, token endpoint):
        # masked wherever Settings is shown (logs, errors, `celery report`).
        for name, value in super().__repr_args__():
            masked = (
                name is not None and name.endswith(("_url", "_endpoint")) and isinstance(value, str)
            )
            yield name, redact_url(value) if masked else value
