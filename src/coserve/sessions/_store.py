"""The session store's contract, and the in-process store that defines its semantics.

A stored session is a version number and opaque bytes, plus a *lease*: which process owns the
session now, until when, and a fencing token. Every acquisition of the lease raises the token,
and a write carries the token of the lease it was made under, so a process that lost the
session (it stalled, or its client came back elsewhere) cannot overwrite what the new owner
wrote, however late its write arrives. The version guards the same row against a second writer
holding the same lease: a write names the version it replaces.

Implementations: :class:`MemoryStore` (one process), :class:`~coserve.sessions.SQLiteStore`
(one host, every worker process; no server to run) and :class:`~coserve.sessions.RedisStore`
(many hosts). :func:`open_store` picks one from a URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from coserve._exceptions import ConfigError, SessionConflict

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_SESSION_TTL",
    "Lease",
    "MemoryStore",
    "SessionStore",
    "StoredSession",
    "open_store",
]

DEFAULT_LEASE_TTL = 30.0
"""Seconds a lease lasts unless renewed; an owner renews it while its connection is open."""
DEFAULT_SESSION_TTL = 3600.0
"""Seconds a session's state is kept after its last write: how long a client may come back."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to write one session, for one owner, until ``expires`` (wall-clock seconds).

    Attributes:
        session: The session's id.
        owner: Who holds it (``host:pid`` for a server process).
        token: The fencing token: raised by every acquisition, checked by every write.
        expires: When the lease lapses unless renewed (``time.time()`` seconds).
    """

    session: str
    owner: str
    token: int
    expires: float


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session's state as stored: its version (0 before the first write) and its bytes."""

    session: str
    version: int
    data: bytes


@runtime_checkable
class SessionStore(Protocol):
    """Where sessions' state outlives the process that serves them.

    Every method is a coroutine and must not block the event loop. Writes are conditional
    (compare-and-swap on the lease's token and the version) and raise
    :class:`~coserve.SessionConflict` when they lose; nothing is ever overwritten silently.
    """

    async def acquire(self, session: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Take the session's lease for ``owner``, raising its fencing token.

        Any earlier holder is fenced off at once: its writes fail from now on. (A client that
        reconnects has left its old connection, so the newest connection wins; fencing keeps
        the old owner from writing over it.) Creates the session, at version 0, if new.
        """
        ...

    async def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """Extend ``lease``.

        Raises:
            SessionConflict: Another owner has acquired the session since.
        """
        ...

    async def release(self, lease: Lease) -> None:
        """Give the lease up (the state stays); a no-op once someone else holds it."""
        ...

    async def get(self, session: str) -> StoredSession | None:
        """The session's latest state; None if unknown, expired, or never written."""
        ...

    async def put(
        self, lease: Lease, version: int, data: bytes, *, ttl: float = DEFAULT_SESSION_TTL
    ) -> None:
        """Store ``data`` as ``version``, replacing ``version - 1``, and keep it ``ttl`` seconds.

        Raises:
            SessionConflict: The lease was fenced off by a newer owner, or the stored version
                is not ``version - 1`` (a concurrent or replayed write).
        """
        ...

    async def delete(self, lease: Lease) -> None:
        """Forget the session, if ``lease`` still holds it.

        Raises:
            SessionConflict: Another owner has acquired the session since.
        """
        ...

    async def aclose(self) -> None:
        """Release the store's connections and threads."""
        ...


@dataclass(slots=True)
class _Row:
    version: int
    data: bytes | None
    token: int
    owner: str | None
    lease_expires: float
    expires: float


def fenced(lease: Lease, token: int) -> SessionConflict:
    """The error for a write under ``lease`` after the session moved on to ``token``."""
    return SessionConflict(
        f"session {lease.session}: the lease of {lease.owner} (token {lease.token}) was taken "
        f"over (token {token}): this owner may no longer write it"
    )


def stale(lease: Lease, version: int, stored: int) -> SessionConflict:
    """The error for a write of ``version`` when ``stored`` is the stored version."""
    return SessionConflict(
        f"session {lease.session}: version {version} does not follow the stored version "
        f"{stored}: the write lost"
    )


class MemoryStore:
    """A :class:`SessionStore` in this process's memory: for one worker, and for tests.

    State survives a reconnect to the same process, not a restart; use ``sqlite:`` for that.
    Expired sessions are dropped when next looked at.
    """

    def __init__(self) -> None:
        self._rows: dict[str, _Row] = {}

    def _live(self, session: str, now: float) -> _Row | None:
        row = self._rows.get(session)
        if row is not None and row.expires <= now:
            del self._rows[session]
            return None
        return row

    async def acquire(self, session: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`SessionStore.acquire`."""
        now = time.time()
        row = self._live(session, now)
        if row is None:  # tokens start from the clock, as in the other stores
            start = time.time_ns() // 1_000_000 - 1
            row = self._rows[session] = _Row(0, None, start, None, 0.0, now + DEFAULT_SESSION_TTL)
        row.token += 1
        row.owner = owner
        row.lease_expires = now + ttl
        return Lease(session, owner, row.token, row.lease_expires)

    def _held(self, lease: Lease) -> _Row:
        row = self._live(lease.session, time.time())
        if row is None:
            raise SessionConflict(f"session {lease.session}: no longer stored")
        if row.token != lease.token:
            raise fenced(lease, row.token)
        return row

    async def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`SessionStore.renew`."""
        row = self._held(lease)
        row.lease_expires = time.time() + ttl
        return replace(lease, expires=row.lease_expires)

    async def release(self, lease: Lease) -> None:
        """See :meth:`SessionStore.release`."""
        row = self._rows.get(lease.session)
        if row is not None and row.token == lease.token:
            row.owner, row.lease_expires = None, 0.0

    async def get(self, session: str) -> StoredSession | None:
        """See :meth:`SessionStore.get`."""
        row = self._live(session, time.time())
        if row is None or row.data is None:
            return None
        return StoredSession(session, row.version, row.data)

    async def put(
        self, lease: Lease, version: int, data: bytes, *, ttl: float = DEFAULT_SESSION_TTL
    ) -> None:
        """See :meth:`SessionStore.put`."""
        row = self._held(lease)
        if row.version != version - 1:
            raise stale(lease, version, row.version)
        row.version, row.data, row.expires = version, bytes(data), time.time() + ttl

    async def delete(self, lease: Lease) -> None:
        """See :meth:`SessionStore.delete`."""
        self._held(lease)
        del self._rows[lease.session]

    async def aclose(self) -> None:
        """Nothing to release."""


def open_store(url: str) -> SessionStore:
    """The store a ``--session-store`` URL names.

    * ``sqlite:PATH`` (``sqlite:///abs/path.db`` or ``sqlite:sessions.db``): a SQLite file,
      shared by every worker on this host; created if missing.
    * ``redis://HOST:PORT/DB`` (or ``rediss://``, ``unix://``): a Redis server, shared by
      every host; needs the ``redis`` extra.
    * ``memory``: this process only (so not with ``--workers N``).

    Raises:
        ConfigError: The URL names no known store, or its extra is not installed.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if url == "memory":
        return MemoryStore()
    if scheme == "sqlite" and colon:
        path = rest[2:] if rest.startswith("//") else rest
        if not path:
            raise ConfigError(f"--session-store {url!r}: name the file, e.g. sqlite:sessions.db")
        from coserve.sessions._sqlite import SQLiteStore

        return SQLiteStore(path)
    if scheme in ("redis", "rediss", "unix") and colon:
        from coserve.sessions._redis import RedisStore

        return RedisStore(url)
    raise ConfigError(
        f"--session-store {url!r}: expected sqlite:PATH, redis://HOST:PORT/DB or memory"
    )
