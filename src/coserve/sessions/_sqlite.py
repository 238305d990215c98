"""The embedded session store: one SQLite file, shared by every worker process on a host.

SQLite blocks, so each store owns one thread with one connection, and the event loop only
queues operations for it. The thread takes every operation queued since its last round and
runs them in one transaction with one commit: with many sessions writing at once, a commit
(the costly part) is shared by all of them, the way a batch shares a model call. The queue
needs no bound of its own: each session waits for its write before the next, so it holds at
most one operation per open session (and those are capped by ``--max-sessions``).

WAL mode lets the workers read while one writes; ``synchronous=NORMAL`` makes a commit durable
against a crash of the process (not of the machine), which is what a session server needs: an
answer is sent only after the state it reflects is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coserve._exceptions import SessionConflict, SessionStoreError
from coserve.sessions._store import (
    DEFAULT_LEASE_TTL,
    DEFAULT_SESSION_TTL,
    Lease,
    StoredSession,
    fenced,
    stale,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger("coserve.sessions")

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS coserve_sessions (
    id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data BLOB,
    token INTEGER NOT NULL,
    owner TEXT,
    lease_expires REAL NOT NULL,
    expires REAL NOT NULL
)
"""
_SWEEP_EVERY = 60.0
"""Seconds between deletions of expired sessions (reads ignore them meanwhile)."""


@dataclass(slots=True)
class _Operation:
    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = field(default=None)


def _settle(operations: list[_Operation]) -> None:
    for operation in operations:
        if operation.future.done():  # its caller was cancelled
            continue
        if operation.error is not None:
            operation.future.set_exception(operation.error)
        else:
            operation.future.set_result(operation.result)


class SQLiteStore:
    """A :class:`~coserve.sessions.SessionStore` in a SQLite file (created if missing).

    Args:
        path: The database file. Every worker of ``coserve serve --workers N`` opens the same
            file; processes on other hosts need :class:`~coserve.sessions.RedisStore`.
        busy_timeout: Seconds a write waits for another process's transaction.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._queue: queue.SimpleQueue[_Operation | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._closed = False
        self._last_sweep = 0.0

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # -- the thread ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(_SCHEMA)
        return connection

    def _serve(self) -> None:
        try:
            connection = self._connect()
        except BaseException as error:
            self._startup_error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            while (first := self._queue.get()) is not None:
                operations = [first]
                stop = False
                while True:
                    try:
                        following = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if following is None:
                        stop = True
                        break
                    operations.append(following)
                self._run(connection, operations)
                if stop:
                    break
        finally:
            connection.close()

    def _run(self, connection: sqlite3.Connection, operations: list[_Operation]) -> None:
        """One transaction, one commit, for every operation of this round."""
        try:
            connection.execute("BEGIN IMMEDIATE")
            for operation in operations:
                # An operation that loses (SessionConflict) has written nothing, so it fails
                # alone; the others of the round still commit.
                try:
                    operation.result = operation.run(connection)
                except SessionConflict as error:
                    operation.error = error
            connection.execute("COMMIT")
        except BaseException as error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            logger.error("session store %s: a transaction failed: %s", self.path, error)
            failure = SessionStoreError(f"the session store {self.path} failed: {error}")
            failure.__cause__ = error
            for operation in operations:
                operation.error = failure
        by_loop: dict[asyncio.AbstractEventLoop, list[_Operation]] = {}
        for operation in operations:
            by_loop.setdefault(operation.loop, []).append(operation)
        for loop, settled in by_loop.items():  # one wake-up per loop per round
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(_settle, settled)

    async def _submit(self, run: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SessionStoreError(f"the session store {self.path} is closed")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, name=f"coserve-sessions:{self.path.name}", daemon=True
            )
            self._thread.start()
            await asyncio.to_thread(self._ready.wait)
        if self._startup_error is not None:
            raise SessionStoreError(
                f"cannot open the session store {self.path}: {self._startup_error}"
            ) from self._startup_error
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Operation(run, loop, future))
        return await future

    # -- the interface -------------------------------------------------------------------------

    async def acquire(self, session: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`~coserve.sessions.SessionStore.acquire`."""

        def run(connection: sqlite3.Connection) -> Lease:
            now = time.time()
            if now - self._last_sweep > _SWEEP_EVERY:
                self._last_sweep = now
                connection.execute("DELETE FROM coserve_sessions WHERE expires <= ?", (now,))
            # An expired row starts over, as a new session would. A new session's token starts
            # from the clock (ms), so one created again after expiring never hands out a token
            # that an owner of the old one still holds.
            connection.execute(
                "DELETE FROM coserve_sessions WHERE id = ? AND expires <= ?", (session, now)
            )
            (token,) = connection.execute(
                "INSERT INTO coserve_sessions (id, version, data, token, owner, lease_expires,"
                " expires) VALUES (?, 0, NULL, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " token = token + 1, owner = excluded.owner,"
                " lease_expires = excluded.lease_expires RETURNING token",
                (session, time.time_ns() // 1_000_000, owner, now + ttl, now + DEFAULT_SESSION_TTL),
            ).fetchone()
            return Lease(session, owner, int(token), now + ttl)

        return await self._submit(run)

    @staticmethod
    def _check(connection: sqlite3.Connection, lease: Lease, version: int | None = None) -> None:
        """Why a conditional write under ``lease`` changed nothing."""
        row = connection.execute(
            "SELECT token, version FROM coserve_sessions WHERE id = ?", (lease.session,)
        ).fetchone()
        if row is None:
            raise SessionConflict(f"session {lease.session}: no longer stored")
        token, stored = row
        if token != lease.token:
            raise fenced(lease, token)
        if version is not None:
            raise stale(lease, version, stored)
        raise SessionConflict(f"session {lease.session}: changed meanwhile")

    async def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`~coserve.sessions.SessionStore.renew`."""

        def run(connection: sqlite3.Connection) -> Lease:
            expires = time.time() + ttl
            changed = connection.execute(
                "UPDATE coserve_sessions SET lease_expires = ? WHERE id = ? AND token = ?",
                (expires, lease.session, lease.token),
            ).rowcount
            if not changed:
                self._check(connection, lease)
            return Lease(lease.session, lease.owner, lease.token, expires)

        return await self._submit(run)

    async def release(self, lease: Lease) -> None:
        """See :meth:`~coserve.sessions.SessionStore.release`."""

        def run(connection: sqlite3.Connection) -> None:
            connection.execute(
                "UPDATE coserve_sessions SET owner = NULL, lease_expires = 0"
                " WHERE id = ? AND token = ?",
                (lease.session, lease.token),
            )

        await self._submit(run)

    async def get(self, session: str) -> StoredSession | None:
        """See :meth:`~coserve.sessions.SessionStore.get`."""

        def run(connection: sqlite3.Connection) -> StoredSession | None:
            row = connection.execute(
                "SELECT version, data FROM coserve_sessions"
                " WHERE id = ? AND expires > ? AND data IS NOT NULL",
                (session, time.time()),
            ).fetchone()
            return None if row is None else StoredSession(session, int(row[0]), bytes(row[1]))

        return await self._submit(run)

    async def put(
        self, lease: Lease, version: int, data: bytes, *, ttl: float = DEFAULT_SESSION_TTL
    ) -> None:
        """See :meth:`~coserve.sessions.SessionStore.put`."""

        def run(connection: sqlite3.Connection) -> None:
            changed = connection.execute(
                "UPDATE coserve_sessions SET version = ?, data = ?, expires = ?"
                " WHERE id = ? AND token = ? AND version = ?",
                (version, data, time.time() + ttl, lease.session, lease.token, version - 1),
            ).rowcount
            if not changed:
                self._check(connection, lease, version)

        await self._submit(run)

    async def delete(self, lease: Lease) -> None:
        """See :meth:`~coserve.sessions.SessionStore.delete`."""

        def run(connection: sqlite3.Connection) -> None:
            changed = connection.execute(
                "DELETE FROM coserve_sessions WHERE id = ? AND token = ?",
                (lease.session, lease.token),
            ).rowcount
            if not changed:
                self._check(connection, lease)

        await self._submit(run)

    async def aclose(self) -> None:
        """Finish the queued operations, then close the connection and its thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
