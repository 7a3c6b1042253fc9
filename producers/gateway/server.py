"""The gateway process: its parts built from the settings, then served by uvicorn.

It refuses to start, with one line, without a policy (``SUBSWITCH_POLICY_FILE``: API
keys and rules live there; a gateway without one would have to accept anyone, or no
one), without a signing key, or with a key that is no key of a ``gateways:`` entry of
the policy (workers would reject everything it signs). A broker or store that does not
answer does not stop it: ``/readyz`` says so and commands get ``503``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

import redis
import uvicorn
from fastapi import FastAPI

from producers.commands import time_bounds
from producers.gateway.acceptances import RedisAcceptances
from producers.gateway.app import GatewayParts, create_app
from producers.gateway.intake import Intake
from producers.gateway.metrics import GatewayMetrics
from producers.publisher import CeleryPublisher
from subswitch.broker import BROKER_FAILURES, broker_connection
from subswitch.errors import BrokerError, ConfigurationError, StoreError
from subswitch.policy import Policy
from subswitch.policy_watch import PolicyWatch
from subswitch.redact import redact_url, scrub
from subswitch.settings import Settings
from subswitch.signing import Signer
from subswitch.status import StatusReader, configured_archive, open_store
from subswitch.urls import resolve_endpoints

log = logging.getLogger(__name__)

POLICY_VARIABLE = "SUBSWITCH_POLICY_FILE"
_PROBE_TIMEOUT_S = 2.0


@dataclass
class Gateway:
    """A built gateway: the app, what it signs as, and what to close afterwards."""

    app: FastAPI
    intake: Intake
    name: str
    signer: Signer
    watch: PolicyWatch
    publisher: CeleryPublisher
    store: redis.Redis

    @property
    def policy(self) -> Policy:
        """The policy in force."""
        return self.intake.policy

    def reload_policy(self) -> bool:
        """Read the policy file again (SIGHUP) and put it in force, unless it does not
        validate or no longer holds the gateway's key (then the policy in force stays,
        and the log says why). Whether the file's policy is in force.

        Without SIGHUP the file is looked at every ``SUBSWITCH_POLICY_POLL_SECONDS``,
        by the first request after that (one ``stat``), with the same conditions."""
        return self.watch.reload()

    def close(self) -> None:
        """Close the broker and store connections."""
        self.publisher.close()
        self.store.close()


def gateway_signer(settings: Settings) -> Signer:
    """The key the gateway signs with: ``SUBSWITCH_GATEWAY_KEY_FILE``, else
    ``SUBSWITCH_PRODUCER_KEY_FILE``.

    Raises:
        ConfigurationError: neither is set, or the file holds no Ed25519 key.
    """
    path = settings.gateway_key_file or settings.producer_key_file
    if path is None:
        raise ConfigurationError(
            "the gateway signs every command it enqueues: set it to the gateway's key "
            "(subswitch keys create gateway)",
            variable="SUBSWITCH_GATEWAY_KEY_FILE",
        )
    return Signer.from_key_file(path)


def gateway_name(policy: Policy, signer: Signer) -> str:
    """The ``gateways:`` entry of the policy that holds ``signer``'s key.

    Raises:
        ConfigurationError: no gateway entry holds it.
    """
    for name, entry in policy.document.gateways.items():
        if any(key.id == signer.key_id for key in entry.keys):
            return name
    raise ConfigurationError(
        f"the gateway's key {signer.key_id} is no key of a gateways: entry of the policy "
        f"{policy.origin}: add it there (workers reject what it signs otherwise)",
        variable="SUBSWITCH_GATEWAY_KEY_FILE",
    )


def build_gateway(settings: Settings) -> Gateway:
    """Every part of the gateway from ``settings``; nothing is contacted yet.

    Raises:
        ConfigurationError: no policy, an invalid one, no usable key, one URL of two.
    """
    policy_file = settings.policy_file
    if policy_file is None:
        raise ConfigurationError(
            "the gateway needs a policy: its API keys and rules (contract §8)",
            variable=POLICY_VARIABLE,
        )
    watch = PolicyWatch.load(policy_file, poll_s=settings.policy_poll_seconds)
    signer = gateway_signer(settings)
    name = gateway_name(watch.policy, signer)
    watch.require(lambda new: gateway_name(new, signer))
    endpoints = resolve_endpoints(settings)
    publisher = CeleryPublisher(
        broker_url=endpoints.broker_url,
        visibility_timeout=settings.visibility_timeout,
        queue_type=settings.rabbitmq_queue_type,
        delivery_limit=settings.delivery_limit,
        max_message_bytes=settings.max_message_bytes,
        signer=signer,
    )
    store = open_store(endpoints.store_url)
    intake = Intake(
        publisher=publisher,
        acceptances=RedisAcceptances(client=store, retention_s=settings.retention_seconds),
        policy=watch.current,
        gateway=name,
        time_bounds=time_bounds(settings),
        chunk_size=settings.gateway_chunk_size,
    )
    parts = GatewayParts(
        intake=intake,
        status=StatusReader(client=store, archive=configured_archive(settings)),
        probes={"broker": broker_probe(endpoints.broker_url), "store": store_probe(store)},
        metrics=GatewayMetrics(),
        max_body_bytes=settings.gateway_max_body_bytes,
        retry_after_s=settings.gateway_retry_after_seconds,
    )
    return Gateway(create_app(parts), intake, name, signer, watch, publisher, store)


def broker_probe(broker_url: str) -> Callable[[], None]:
    """A readiness check: connects to the broker, or raises ``BrokerError``."""

    def probe() -> None:
        try:
            with broker_connection(broker_url, connect_timeout=_PROBE_TIMEOUT_S) as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        except BROKER_FAILURES as exc:
            reason = scrub(str(exc) or type(exc).__name__, broker_url)
            raise BrokerError(f"broker at {redact_url(broker_url)}: {reason}") from None

    return probe


def store_probe(client: redis.Redis) -> Callable[[], None]:
    """A readiness check: PING, or raises ``StoreError``."""

    def probe() -> None:
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise StoreError(f"store: {type(exc).__name__}") from None

    return probe


def serve(gateway: Gateway, *, host: str, port: int) -> None:
    """Serve the gateway until interrupted (SIGINT/SIGTERM), then close it; a changed
    policy file, or SIGHUP at once, reloads the policy (a new API key, a changed rule)
    without a restart."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: gateway.reload_policy())
    log.info(
        "gateway: %s; signing as gateway %r (key %s)",
        gateway.policy.summary(),
        gateway.name,
        gateway.signer.key_id,
    )
    config = uvicorn.Config(
        gateway.app, host=host, port=port, log_level="info", server_header=False
    )
    try:
        uvicorn.Server(config).run()
    finally:
        gateway.close()
