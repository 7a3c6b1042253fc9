"""The policy in force in a process (a worker, the gateway), reloaded when its file
changes.

:class:`PolicyWatch` holds the :class:`~subswitch.policy.Policy` loaded from
``SUBSWITCH_POLICY_FILE`` and asks it about every command (what is allowed is decided
there, not here). It looks at the file's modification time at most once per
``poll_s`` (one ``stat``), and at once after SIGHUP; a changed file that does not
validate, or that the process's own ``vet`` refuses (the gateway: its key is gone),
leaves the policy in force as it was and says why in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from subswitch.contract import AnyCommand
from subswitch.errors import SubswitchError
from subswitch.policy import Policy, Refusal, load_policy

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int]
#: A process's own condition on a new policy: raises (why) to keep the one in force.
Vet = Callable[[Policy], object]


def _accept_any(_policy: Policy) -> None:
    """Every policy that validates will do."""


class PolicyWatch:
    """The policy of ``path``, re-read when the file changes or on :meth:`request_reload`.

    Built with :meth:`load`, which raises when the file cannot be used at start: a
    process never runs without the policy it was told to enforce.
    """

    def __init__(
        self,
        *,
        path: Path,
        policy: Policy,
        poll_s: float,
        stamp: _Stamp | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        vet: Vet = _accept_any,
    ) -> None:
        self._path = path
        self._vet = vet
        self._policy = policy
        self._poll_s = poll_s
        self._monotonic = monotonic
        # Taken before the policy was read: a change in between is seen at the next look.
        self._stamp = stamp if stamp is not None else _stamp(path)
        self._next_look = monotonic() + poll_s
        self._reload_requested = False
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, poll_s: float, vet: Vet = _accept_any) -> PolicyWatch:
        """Load ``path`` and watch it (``vet`` is not asked about the first policy: the
        caller checks it, with its own error).

        Raises:
            PolicyError: the file cannot be read or does not validate (every problem).
        """
        stamp = _stamp(path)
        return cls(path=path, policy=load_policy(path), poll_s=poll_s, stamp=stamp, vet=vet)

    @property
    def policy(self) -> Policy:
        """The policy in force now (without looking at the file)."""
        return self._policy

    def require(self, vet: Vet) -> None:
        """From now on a new policy is put in force only if ``vet`` does not raise."""
        self._vet = vet

    def current(self) -> Policy:
        """The policy in force, after a look at the file when one is due."""
        if self._reload_requested or self._monotonic() >= self._next_look:
            self._look()
        return self._policy

    def reload(self) -> bool:
        """Read the file now, changed or not (SIGHUP); whether the policy read is in force."""
        self.request_reload()
        return self._look()

    def check(
        self, command: AnyCommand, signature: object | None, *, vouched_by: str | None = None
    ) -> Refusal | None:
        """The policy's verdict on ``command`` and its raw ``signature`` member
        (``vouched_by``: the signer of the verified chunk it came in)."""
        return self.current().check_message(command, signature, vouched_by=vouched_by)

    def chunk_signer(self, commands: Sequence[AnyCommand], header: object) -> str | None:
        """Who signed this bulk chunk, if its signature verifies (see ``Policy``)."""
        return self._policy.chunk_signer(commands, header)

    def request_reload(self) -> None:
        """Re-read the file before the next check (safe in a signal handler)."""
        self._reload_requested = True

    def install_sighup(self) -> None:
        """Reload on SIGHUP (in place of Celery's handler, which restarts the worker).

        Python runs the handler in the main thread between two bytecodes (the consumer's
        loop under the threads pool): the file is read there and then, so the log says
        at once whether the new policy is in force.
        """

        def on_hup(_signum: int, _frame: FrameType | None) -> None:
            self.reload()

        signal.signal(signal.SIGHUP, on_hup)

    def _look(self) -> bool:
        """Reload when forced or the file changed; whether the file's policy is in force."""
        if not self._lock.acquire(blocking=False):
            return False  # another thread is looking: this one goes by the policy in force
        try:
            forced, self._reload_requested = self._reload_requested, False
            self._next_look = self._monotonic() + self._poll_s
            stamp = _stamp(self._path)
            if not forced and stamp == self._stamp:
                return True
            self._stamp = stamp
            return self._reload(forced=forced)
        finally:
            self._lock.release()

    def _reload(self, *, forced: bool) -> bool:
        why = "SIGHUP" if forced else "the file changed"
        try:
            policy = load_policy(self._path)
            self._vet(policy)
        except SubswitchError as exc:
            logger.error("policy not reloaded (%s); the previous one stays in force: %s", why, exc)
            return False
        if policy.digest != self._policy.digest:
            self._policy = policy
            logger.warning("policy reloaded (%s): %s", why, policy.summary())
        return True


def _stamp(path: Path) -> _Stamp:
    """What tells a changed file: modification time, size, inode, device (0s if gone)."""
    try:
        status = os.stat(path)
    except OSError:
        return (0, 0, 0, 0)
    return (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)
