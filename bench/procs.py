"""Child processes of a benchmark and what they cost: CPU time and memory, from /proc.

A worker is a process tree (``subswitch worker`` may supervise Celery workers, a
prefork pool has children), so CPU and memory are read for the whole tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
READY_MARK = " ready."
_PR_SET_PDEATHSIG = 1


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int, *, reaped_children: bool = True) -> float:
    """User + system CPU of ``pid`` (and of its children it has waited for); 0 if gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used (/proc/stat, all but idle)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(value) for value in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / _TICK


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and of every process below it, live or reaped."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in descendants(pid))


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory now (MiB)."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """Highest resident memory so far (VmHWM, MiB)."""
    return _status_kb(pid, "VmHWM") / 1024


@dataclass
class Child:
    """A started process with its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's output."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def ready_count(self) -> int:
        """How many Celery workers of this tree said they are ready."""
        try:
            return self.log_path.read_text(errors="replace").count(READY_MARK)
        except OSError:
            return 0

    def wait_ready(self, expected: int, timeout: float = 60.0) -> None:
        """Block until ``expected`` Celery workers are consuming, or raise with the log."""
        deadline = time.monotonic() + timeout
        while self.ready_count() < expected:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def tree(self) -> list[int]:
        """This process and its live descendants."""
        return [self.pid, *descendants(self.pid)]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL of the whole tree if it hangs."""
        if self.process.poll() is not None:
            return
        tree = self.tree()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if the benchmark dies, instead of lingering."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start(name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path) -> Child:
    """Start ``argv`` (``python -m ...`` arguments) from the repository root."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads in play at that point
        )
    return Child(name, process, log_path)


def run_queue_wait_seconds(pid: int) -> float:
    """Time the process's threads have spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, second field); 0 if gone or not available."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


def niceness(pid: int) -> int | None:
    """The process's nice value (/proc/PID/stat), None if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[16]) if fields is not None else None


def lanes_of(pid: int) -> str | None:
    """The ``--lanes`` value on the process's command line, if it has one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in itertools.pairwise(argv):
        if flag == b"--lanes":
            return value.decode(errors="replace")
    return None


@dataclass
class RoleCpu:
    """CPU of each process of some worker trees (and of ``named`` single processes) over
    an interval, grouped by role: ``supervisor`` (a process with children), ``<lanes>
    worker``, or the name given; with niceness and the time spent waiting for a CPU
    (the run queue), which shows whether a process got the CPU when it wanted it."""

    roots: list[int]
    named: dict[str, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    nice: dict[int, int | None] = field(default_factory=dict)
    before: dict[int, tuple[float, float]] = field(default_factory=dict)
    seconds: dict[int, tuple[float, float]] = field(default_factory=dict)

    def start(self) -> None:
        """Find the processes, their roles and niceness; snapshot their CPU and waits."""
        for root in self.roots:
            below = descendants(root)
            for pid in [root, *below]:
                supervisor = pid == root and bool(below)
                lanes = lanes_of(pid) or "default lanes"
                self.roles[pid] = "supervisor" if supervisor else f"{lanes} worker"
        for name, pid in self.named.items():
            self.roles[pid] = name
        for pid in self.roles:
            self.nice[pid] = niceness(pid)
            self.before[pid] = _cpu_and_wait(pid)

    def stop(self) -> None:
        """CPU and run-queue wait of each process since :meth:`start`."""
        for pid, (cpu, wait) in self.before.items():
            cpu_now, wait_now = _cpu_and_wait(pid)
            self.seconds[pid] = (cpu_now - cpu, wait_now - wait)

    def as_json(self, wall_s: float) -> dict[str, dict[str, Any]]:
        """Per role: processes, CPU seconds, share of the two cores, run-queue wait
        seconds and their ratio to CPU seconds, niceness."""
        out: dict[str, dict[str, Any]] = {}
        for role in dict.fromkeys(self.roles.values()):
            pids = [pid for pid, of in self.roles.items() if of == role]
            cpu_s = sum(self.seconds.get(pid, (0.0, 0.0))[0] for pid in pids)
            wait_s = sum(self.seconds.get(pid, (0.0, 0.0))[1] for pid in pids)
            nice = sorted({str(self.nice[pid]) for pid in pids})
            out[role] = {
                "count": len(pids),
                "cpu_s": round(cpu_s, 3),
                "share_of_2_cores": round(cpu_s / max(wall_s, 1e-9) / 2, 3),
                "run_queue_wait_s": round(wait_s, 3),
                "wait_per_cpu_s": round(wait_s / cpu_s, 2) if cpu_s > 0 else None,
                "niceness": "/".join(nice),
            }
        return out


def _cpu_and_wait(pid: int) -> tuple[float, float]:
    return cpu_seconds(pid, reaped_children=False), run_queue_wait_seconds(pid)
