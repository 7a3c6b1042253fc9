"""The policy in force in a worker process, reloaded when its file changes.

:class:`PolicyWatch` holds the :class:`~subswitch.policy.Policy` loaded from
``SUBSWITCH_POLICY_FILE`` and asks it about every command (what is allowed is decided
there, not here). It looks at the file's modification time at most once per
``poll_s`` (one ``stat``), and at once after SIGHUP; a changed file that does not
validate leaves the policy in force as it was and says why in one line.
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
from typing import Any

from subswitch.contract import AnyCommand
from subswitch.policy import Policy, PolicyError, Refusal, load_policy

logger = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int]


class PolicyWatch:
    """The policy of ``path``, re-read when the file changes or on :meth:`request_reload`.

    Built with :meth:`load`, which raises when the file cannot be used at start: a
    worker never runs without the policy it was told to enforce.
    """

    def __init__(
        self,
        *,
        path: Path,
        policy: Policy,
        poll_s: float,
        stamp: _Stamp | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._policy = policy
        self._poll_s = poll_s
        self._monotonic = monotonic
        # Taken before the policy was read: a change in between is seen at the next look.
        self._stamp = stamp if stamp is not None else _stamp(path)
        self._next_look = monotonic() + poll_s
        self._reload_requested = False
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, poll_s: float) -> PolicyWatch:
        """Load ``path`` and watch it.

        Raises:
            PolicyError: the file cannot be read or does not validate (every problem).
        """
        stamp = _stamp(path)
        return cls(path=path, policy=load_policy(path), poll_s=poll_s, stamp=stamp)

    @property
    def policy(self) -> Policy:
        """The policy in force now."""
        return self._policy

    def check(
        self, command: AnyCommand, signature: object | None, *, vouched_by: str | None = None
    ) -> Refusal | None:
        """The policy's verdict on ``command`` and its raw ``signature`` member
        (``vouched_by``: the signer of the verified chunk it came in)."""
        if self._reload_requested or self._monotonic() >= self._next_look:
            self._look()
        return self._policy.check_message(command, signature, vouched_by=vouched_by)

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
            self.request_reload()
            self._look()

        signal.signal(signal.SIGHUP, on_hup)

    def on_worker_ready(self, **_: Any) -> None:
        """``worker_ready``: Celery has installed its own signal handlers; take SIGHUP."""
        try:
            self.install_sighup()
        except ValueError:  # not the main thread: the file's modification time still counts
            logger.warning("SIGHUP cannot reload the policy here; changes to the file do")

    def _look(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking: this command goes by the policy in force
        try:
            forced, self._reload_requested = self._reload_requested, False
            self._next_look = self._monotonic() + self._poll_s
            stamp = _stamp(self._path)
            if forced or stamp != self._stamp:
                self._stamp = stamp
                self._reload(forced=forced)
        finally:
            self._lock.release()

    def _reload(self, *, forced: bool) -> None:
        why = "SIGHUP" if forced else "the file changed"
        try:
            policy = load_policy(self._path)
        except PolicyError as exc:
            logger.error("policy not reloaded (%s); the previous one stays in force: %s", why, exc)
            return
        if policy.digest == self._policy.digest:
            return
        self._policy = policy
        logger.warning("policy reloaded (%s): %s", why, policy.summary())


def _stamp(path: Path) -> _Stamp:
    """What tells a changed file: modification time, size, inode, device (0s if gone)."""
    try:
        status = os.stat(path)
    except OSError:
        return (0, 0, 0, 0)
    return (status.st_mtime_ns, status.st_size, status.st_ino, status.st_dev)
