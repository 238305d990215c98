"""Session stores: where a session's state outlives the process that serves it.

The session server (``coserve serve --session-store URL``) checkpoints each session's graph
state after every answer and hands the client a resume token; a reconnect with the token, to
any worker, host or replica sharing the store, rebuilds the graph from the checkpoint. A store
keeps a version and opaque bytes per session, and a fenced lease, so that one process owns a
session at a time and a stale owner can never overwrite a newer state.
"""

from coserve.sessions._sqlite import SQLiteStore
from coserve.sessions._store import (
    DEFAULT_LEASE_TTL,
    DEFAULT_SESSION_TTL,
    Lease,
    MemoryStore,
    SessionStore,
    StoredSession,
    open_store,
)

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_SESSION_TTL",
    "Lease",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SessionStore",
    "StoredSession",
    "open_store",
]


def __getattr__(name: str) -> object:
    # RedisStore imports redis-py, an optional extra: only when asked for.
    if name == "RedisStore":
        from coserve.sessions._redis import RedisStore

        return RedisStore
    raise AttributeError(f"module 'coserve.sessions' has no attribute {name!r}")
