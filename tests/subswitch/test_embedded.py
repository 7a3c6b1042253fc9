"""The embedded Redis keeps its data directory to its owner (every command is in it)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from subswitch.embedded import ensure_embedded_redis, private_dir, stop_embedded_redis


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    previous = os.umask(0o022)  # permissive, as on many desktops
    try:
        yield path
    finally:
        os.umask(previous)
        stop_embedded_redis(path)


def test_the_data_directory_and_every_file_in_it_are_owner_only(data_dir: Path) -> None:
    # Given a permissive umask (the fixture sets 022)
    # When the embedded Redis starts and a command record is written and synced to disk
    embedded = ensure_embedded_redis(data_dir)
    client = redis.Redis(unix_socket_path=str(embedded.socket_path))
    client.set("subswitch:cmd:x", "secret intent")
    client.execute_command("BGREWRITEAOF")
    client.close()
    # Then the directory is 0700 and each of its files (append-only file, log) 0600
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert _mode(data_dir) == 0o700
    assert any("appendonly" in p.name or p.suffix == ".aof" for p in files), files
    assert (data_dir / "redis.log") in files
    assert {p.name: _mode(p) for p in files} == {p.name: 0o600 for p in files}
    assert all(_mode(p) == 0o700 for p in data_dir.rglob("*") if p.is_dir())


def test_an_existing_readable_directory_is_tightened(tmp_path: Path) -> None:
    # Given a data directory and a log an older release left readable by everyone
    path = tmp_path / "old"
    path.mkdir(mode=0o755)
    (path / "demo-worker.log").write_text("commands")
    (path / "demo-worker.log").chmod(0o644)
    # When it is taken as the private data directory
    private_dir(path)
    # Then both are owner-only
    assert (_mode(path), _mode(path / "demo-worker.log")) == (0o700, 0o600)
