"""The session stores' semantics: versions, leases and fencing, the same for every store.

Each test runs against the in-memory store, a SQLite file, and a real ``redis-server`` started
for this module on a free loopback port (Debian's package; .ci/run installs it). Two SQLite
stores on one file stand for two worker processes; two Redis clients for two hosts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from coserve import ConfigError, SessionConflict, SessionStoreError
from coserve.sessions import MemoryStore, RedisStore, SessionStore, SQLiteStore, open_store

REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if REDIS is None:  # the suite's CI installs it; a developer without it is told so
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            REDIS,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SessionStore, SessionStore]]:
    """Two handles on one store, as two processes would hold (one, for memory)."""
    first: SessionStore
    second: SessionStore
    if request.param == "memory":
        first = second = MemoryStore()
    elif request.param == "sqlite":
        first, second = SQLiteStore(tmp_path / "s.db"), SQLiteStore(tmp_path / "s.db")
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{os.getpid()}:{time.monotonic_ns()}:"
        first, second = RedisStore(url, prefix=prefix), RedisStore(url, prefix=prefix)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_put_get_versions(stores: tuple[SessionStore, SessionStore]) -> None:
    store, other = stores
    assert await store.get("s1") is None
    lease = await store.acquire("s1", "a")
    assert await store.get("s1") is None  # acquired, never written
    await store.put(lease, 1, b"one")
    await store.put(lease, 2, b"two")
    stored = await other.get("s1")
    assert stored is not None
    assert (stored.version, stored.data) == (2, b"two")
    with pytest.raises(SessionConflict, match="does not follow the stored version 2"):
        await store.put(lease, 2, b"replayed")  # the older version loses
    with pytest.raises(SessionConflict, match="version 4"):
        await store.put(lease, 4, b"skipped")
    stored = await store.get("s1")
    assert stored is not None
    assert stored.data == b"two"


async def test_a_newer_owner_fences_the_older(stores: tuple[SessionStore, SessionStore]) -> None:
    store, other = stores
    old = await store.acquire("s2", "worker-1")
    await store.put(old, 1, b"from worker 1")
    new = await other.acquire("s2", "worker-2")  # the client reconnected elsewhere
    assert new.token > old.token
    with pytest.raises(SessionConflict, match="taken over"):
        await store.put(old, 2, b"stale owner")
    with pytest.raises(SessionConflict, match="taken over"):
        await store.renew(old)
    with pytest.raises(SessionConflict, match="taken over"):
        await store.delete(old)
    await store.release(old)  # a no-op: it no longer holds the lease
    await other.put(new, 2, b"from worker 2")
    renewed = await other.renew(new, ttl=60)
    assert renewed.token == new.token
    assert renewed.expires > new.expires - 1
    stored = await store.get("s2")
    assert stored is not None
    assert (stored.version, stored.data) == (2, b"from worker 2")


async def test_racing_writers_one_wins(stores: tuple[SessionStore, SessionStore]) -> None:
    store, other = stores
    lease = await store.acquire("s3", "a")
    await store.put(lease, 1, b"base")
    results = await asyncio.gather(
        store.put(lease, 2, b"left"), other.put(lease, 2, b"right"), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["NoneType", "SessionConflict"]
    stored = await store.get("s3")
    winner = b"left" if results[0] is None else b"right"
    assert stored is not None
    assert (stored.version, stored.data) == (2, winner)


async def test_delete_and_expiry(stores: tuple[SessionStore, SessionStore]) -> None:
    store, other = stores
    lease = await store.acquire("s4", "a")
    await store.put(lease, 1, b"x")
    await store.delete(lease)
    assert await other.get("s4") is None
    with pytest.raises(SessionConflict, match="no longer stored"):
        await store.put(lease, 2, b"y")
    short = await store.acquire("s5", "a")
    await store.put(short, 1, b"brief", ttl=0.2)
    stored = await other.get("s5")
    assert stored is not None
    assert stored.data == b"brief"
    deadline = time.monotonic() + 10
    while await other.get("s5") is not None:  # Redis expires keys on its own clock
        assert time.monotonic() < deadline, "the session did not expire"
        await asyncio.sleep(0.05)
    # Created again after expiring: the old lease's token is no good on the new session.
    again = await other.acquire("s5", "b")
    assert again.token > short.token
    with pytest.raises(SessionConflict):
        await store.put(short, 1, b"from before")


async def test_many_concurrent_writes_group_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "g.db")
    leases = await asyncio.gather(*(store.acquire(f"g{i}", "a") for i in range(200)))
    for version in (1, 2, 3):
        await asyncio.gather(*(store.put(lease, version, b"%d" % version) for lease in leases))
    stored = await asyncio.gather(*(store.get(f"g{i}") for i in range(200)))
    assert {(s.version, s.data) for s in stored if s is not None} == {(3, b"3")}
    await store.aclose()
    with pytest.raises(SessionStoreError, match="closed"):
        await store.get("g0")


async def test_unreachable_stores_fail_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    broken = SQLiteStore(blocker / "s.db")
    with pytest.raises(SessionStoreError, match="cannot open the session store"):
        await broken.get("x")
    await broken.aclose()
    nobody = RedisStore(f"redis://127.0.0.1:{_free_port()}/0")
    with pytest.raises(SessionStoreError, match="failed"):
        await nobody.acquire("x", "a")
    await nobody.aclose()


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory"), MemoryStore)
    sqlite = open_store(f"sqlite://{tmp_path}/a.db")
    assert isinstance(sqlite, SQLiteStore)
    assert sqlite.path == tmp_path / "a.db"
    relative = open_store("sqlite:sessions.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("sessions.db")
    assert isinstance(open_store("redis://127.0.0.1:1/0"), RedisStore)
    for bad in ("postgres://x", "sqlite:", "sessions.db", ""):
        with pytest.raises(ConfigError, match="session-store"):
            open_store(bad)
