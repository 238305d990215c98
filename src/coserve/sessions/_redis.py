"""The session store for many hosts: a Redis server (``--session-store redis://HOST:PORT/DB``).

Each session is one hash, ``coserve:session:{id}``, with the fields ``version``, ``data``,
``token``, ``owner`` and ``lease``; its key expires with the session. Every conditional write is
one Lua script, so the check of the fencing token and version and the write are atomic on the
server, whichever host runs them. Times are the callers' wall clocks, as in the SQLite store;
only the lease's expiry reads them, and it is advisory (a takeover fences whatever the clocks
say).
"""

from __future__ import annotations

import time
from typing import Any

from coserve._exceptions import MissingDependency, SessionConflict, SessionStoreError
from coserve.sessions._store import (
    DEFAULT_LEASE_TTL,
    DEFAULT_SESSION_TTL,
    Lease,
    StoredSession,
    fenced,
    stale,
)

__all__ = ["RedisStore"]

_PREFIX = "coserve:session:"

# KEYS[1] the session; ARGV owner, lease expiry, session ttl (ms), now (ms). Returns the token.
# A new session's token starts from the clock, so a session that expired and was created again
# never hands out a token an owner of the old one still holds.
_ACQUIRE = """
local token
if redis.call('EXISTS', KEYS[1]) == 0 then
  token = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'token', token, 'version', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  token = redis.call('HINCRBY', KEYS[1], 'token', 1)
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', ARGV[2])
return token
"""
# The guard of every write: {0} when the key is gone, {1, token} when fenced off.
_GUARD = """
local stored = redis.call('HMGET', KEYS[1], 'token', 'version')
if not stored[1] then return {0} end
if tonumber(stored[1]) ~= tonumber(ARGV[1]) then return {1, tonumber(stored[1])} end
"""
# ARGV token, version, data, ttl (ms). {2, stored version} when the version does not follow.
_PUT = (
    _GUARD
    + """
if tonumber(stored[2]) ~= tonumber(ARGV[2]) - 1 then return {2, tonumber(stored[2])} end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {3}
"""
)
# ARGV token, lease expiry.
_RENEW = _GUARD + "redis.call('HSET', KEYS[1], 'lease', ARGV[2]) return {3}"
_RELEASE = _GUARD + "redis.call('HSET', KEYS[1], 'owner', '', 'lease', 0) return {3}"
_DELETE = _GUARD + "redis.call('DEL', KEYS[1]) return {3}"


class RedisStore:
    """A :class:`~coserve.sessions.SessionStore` on a Redis server (needs ``coserve[redis]``).

    Args:
        url: A redis-py URL: ``redis://HOST:PORT/DB``, ``rediss://`` for TLS, ``unix://PATH``.
        prefix: The key prefix, to share one Redis between deployments.
        max_connections: Connections this process opens at most; more callers wait.
    """

    def __init__(self, url: str, *, prefix: str = _PREFIX, max_connections: int = 32) -> None:
        try:
            import redis.asyncio as redis
        except ImportError as error:
            raise MissingDependency(
                "--session-store redis:// needs redis-py: pip install 'coserve[redis]'"
            ) from error
        self.url = url
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        # A bounded pool that callers wait on: hundreds of sessions checkpointing at once share
        # a few connections instead of opening one each.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=30
        )
        self._client: Any = redis.Redis.from_pool(pool)  # closing the client closes the pool
        self._acquire = self._client.register_script(_ACQUIRE)
        self._put = self._client.register_script(_PUT)
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._delete = self._client.register_script(_DELETE)

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r})"

    async def _call(self, script: Any, key: str, *args: Any) -> Any:
        try:
            return await script(keys=[key], args=list(args))
        except self._errors as error:
            raise SessionStoreError(f"the session store {self.url} failed: {error}") from error

    @staticmethod
    def _outcome(lease: Lease, answer: list[int], version: int | None = None) -> None:
        code = int(answer[0])
        if code == 0:
            raise SessionConflict(f"session {lease.session}: no longer stored")
        if code == 1:
            raise fenced(lease, int(answer[1]))
        if code == 2:
            assert version is not None
            raise stale(lease, version, int(answer[1]))

    async def acquire(self, session: str, owner: str, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`~coserve.sessions.SessionStore.acquire`."""
        expires = time.time() + ttl
        token = await self._call(
            self._acquire,
            self.prefix + session,
            owner,
            repr(expires),
            int(DEFAULT_SESSION_TTL * 1000),
            time.time_ns() // 1_000_000,
        )
        return Lease(session, owner, int(token), expires)

    async def renew(self, lease: Lease, *, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """See :meth:`~coserve.sessions.SessionStore.renew`."""
        expires = time.time() + ttl
        answer = await self._call(
            self._renew, self.prefix + lease.session, lease.token, repr(expires)
        )
        self._outcome(lease, answer)
        return Lease(lease.session, lease.owner, lease.token, expires)

    async def release(self, lease: Lease) -> None:
        """See :meth:`~coserve.sessions.SessionStore.release`."""
        await self._call(self._release, self.prefix + lease.session, lease.token)

    async def get(self, session: str) -> StoredSession | None:
        """See :meth:`~coserve.sessions.SessionStore.get`."""
        try:
            version, data = await self._client.hmget(self.prefix + session, "version", "data")
        except self._errors as error:
            raise SessionStoreError(f"the session store {self.url} failed: {error}") from error
        if data is None:
            return None
        return StoredSession(session, int(version), bytes(data))

    async def put(
        self, lease: Lease, version: int, data: bytes, *, ttl: float = DEFAULT_SESSION_TTL
    ) -> None:
        """See :meth:`~coserve.sessions.SessionStore.put`."""
        answer = await self._call(
            self._put,
            self.prefix + lease.session,
            lease.token,
            version,
            data,
            max(1, int(ttl * 1000)),
        )
        self._outcome(lease, answer, version)

    async def delete(self, lease: Lease) -> None:
        """See :meth:`~coserve.sessions.SessionStore.delete`."""
        answer = await self._call(self._delete, self.prefix + lease.session, lease.token)
        self._outcome(lease, answer)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()
