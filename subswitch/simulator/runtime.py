"""One simulator's moving parts, shared by the API, OAuth and admin handlers."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from subswitch.simulator.accounts import load_trusted_account
from subswitch.simulator.auth import Authenticator
from subswitch.simulator.config import Faults, SimulatorConfig
from subswitch.simulator.faults import FaultInjector
from subswitch.simulator.journal import WriteLog
from subswitch.simulator.stats import Stats
from subswitch.simulator.store import Store


@dataclass(eq=False)
class Simulator:
    """The state behind one app: data, write log, stats, faults and authentication."""

    config: SimulatorConfig
    clock: Callable[[], float]
    store: Store
    journal: WriteLog
    stats: Stats
    faults: FaultInjector
    auth: Authenticator

    @classmethod
    def build(cls, config: SimulatorConfig, clock: Callable[[], float] | None = None) -> Simulator:
        """Assemble a simulator; raises ValueError for an unusable service-account file."""
        now = clock or time.time
        secret = config.token_secret
        auth = Authenticator(
            enabled=config.auth,
            static_tokens=[token.get_secret_value() for token in config.tokens],
            accounts=[load_trusted_account(path) for path in config.service_account_files],
            token_ttl=config.token_ttl,
            audience=config.token_audience,
            secret=secret.get_secret_value().encode() if secret else None,
            clock=now,
        )
        return cls(
            config=config,
            clock=now,
            store=Store(config.orgs, config.subscriptions),
            journal=WriteLog(config.write_log_cap),
            stats=Stats(now(), key_cap=config.write_log_cap),
            faults=FaultInjector(config.faults, config.seed),
            auth=auth,
        )

    def reset(self, *, faults: bool = False) -> None:
        """Seed state again, empty log and stats, fault stream restarted from its seed.

        With ``faults``, the faults are cleared too.
        """
        self.store.clear()
        self.journal.clear()
        self.stats.reset(self.clock())
        self.faults.reseed()
        if faults:
            self.faults.faults = Faults()
