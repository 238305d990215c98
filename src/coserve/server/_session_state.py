"""Sessions that survive: checkpoints in a session store, resume tokens, and the fenced lease.

With ``--session-store``, the session server keeps each session's graph state in the store: a
checkpoint is taken as each answer leaves the graph (``Graph.outlet(on_send=...)``, so it holds
exactly the messages answered so far) and committed *before* the answer is sent, so whatever a
client saw acknowledged is durable. The hello message carries a resume token,
``<session id>.<secret>``; a client that reconnects to ``/sessions/APP?resume=TOKEN``, on any
process sharing the store, has its graph rebuilt by the app's factory and its state restored,
as of the last answered message (the hello's ``last`` names it).

One process owns a session at a time: resuming takes the lease over, which fences the old
owner off, and an owner whose write or renewal is fenced closes its connection (4409). A stored
session holds no secret in the clear: only the token secret's SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import socket
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from coserve._exceptions import SessionConflict, SessionNotFound
from coserve.graph import Graph, Signal
from coserve.sessions import DEFAULT_LEASE_TTL, DEFAULT_SESSION_TTL, Lease, SessionStore

__all__ = ["Checkpoints", "DurableSession", "SessionStates"]

logger = logging.getLogger("coserve.sessions")

_RENEW_EVERY = DEFAULT_LEASE_TTL / 3


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Checkpoints:
    """The states an outlet's messages reflect, taken as each was sent, in send order.

    The graph's exit node sends messages in order, and the outlet delivers them in that order,
    so the forwarder finds a message's checkpoint at (or just after, if a send was abandoned)
    the front. Bounded by the messages between the exit node and the forwarder.
    """

    def __init__(self, graph: Graph, envelope: dict[str, Any]) -> None:
        self._graph = graph
        self._envelope = envelope
        self._taken: deque[tuple[Signal[Any], bytes | None]] = deque()

    def take(self, signal: Signal[Any]) -> None:
        """``Graph.outlet``'s ``on_send``: serialize the graph's state now."""
        try:
            data = orjson.dumps(
                {**self._envelope, "last": signal.id, "states": self._graph.snapshot()},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
        except TypeError as error:  # an app bug: its state is not JSON
            logger.error(
                "graph %s: its state is not JSON, not checkpointed: %s", self._graph.name, error
            )
            data = None
        self._taken.append((signal, data))

    def of(self, signal: Signal[Any]) -> bytes | None:
        """The checkpoint taken when ``signal`` was sent (None if it could not be taken)."""
        while self._taken:
            sent, data = self._taken.popleft()
            if sent is signal:
                return data
        return None


@dataclass(slots=True)
class DurableSession:
    """One session's place in the store: its lease, version and resume token."""

    id: str
    app: str
    token: str
    lease: Lease
    version: int
    resumed: bool
    last: Any = None
    states: dict[str, Any] = field(default_factory=dict)

    @property
    def envelope(self) -> dict[str, Any]:
        """What each checkpoint stores beside the states."""
        return {"app": self.app, "key": _digest(self.token.partition(".")[2])}


class SessionStates:
    """The session server's side of a :class:`~coserve.sessions.SessionStore`.

    Args:
        store: Where the states go.
        session_ttl: Seconds a session's state is kept after its last answer.
        owner: This process, as leases name it.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        session_ttl: float = DEFAULT_SESSION_TTL,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.session_ttl = session_ttl
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self.resumed = 0
        self.checkpoints = 0
        self.taken_over = 0

    async def open(self, app: str, resume: str | None) -> DurableSession:
        """A new session, or the stored one a resume token names, with its lease taken.

        Raises:
            SessionNotFound: The token is malformed, unknown, expired, or another app's.
            SessionStoreError: The store failed.
        """
        if resume is None:
            session = uuid.uuid4().hex
            token = f"{session}.{secrets.token_urlsafe(18)}"
            lease = await self.store.acquire(session, self.owner)
            opened = DurableSession(session, app, token, lease, 0, resumed=False)
            await self.save(opened, orjson.dumps({**opened.envelope, "last": None, "states": {}}))
            return opened
        session, dot, secret = resume.partition(".")
        if not dot or not session or not secret:
            raise SessionNotFound("a resume token is the 'resume' value of a session's hello")
        await self._verified(session, app, secret)  # before the lease: no row for a guess
        lease = await self.store.acquire(session, self.owner)
        # Read again under our lease: the old owner may have written since, and now cannot.
        record = await self._verified(session, app, secret)
        stored = orjson.loads(record[1])
        self.resumed += 1
        return DurableSession(
            session, app, resume, lease, record[0], True, stored["last"], stored["states"]
        )

    async def _verified(self, session: str, app: str, secret: str) -> tuple[int, bytes]:
        stored = await self.store.get(session)
        if stored is not None:
            envelope = orjson.loads(stored.data)
            if envelope.get("app") == app and hmac.compare_digest(
                envelope.get("key", ""), _digest(secret)
            ):
                return stored.version, stored.data
        raise SessionNotFound(
            f"no stored {app!r} session for that resume token (unknown, or expired after "
            f"{self.session_ttl:g} s)"
        )

    async def save(self, session: DurableSession, data: bytes) -> None:
        """Commit a checkpoint as the session's next version.

        Raises:
            SessionConflict: Another process has taken the session over (fenced off).
            SessionStoreError: The store failed.
        """
        await self.store.put(session.lease, session.version + 1, data, ttl=self.session_ttl)
        session.version += 1
        self.checkpoints += 1

    async def keep(self, session: DurableSession) -> None:
        """Renew the lease while the connection lasts; returns when another process took it."""
        while True:
            await asyncio.sleep(_RENEW_EVERY)
            try:
                session.lease = await self.store.renew(session.lease)
            except SessionConflict:
                self.taken_over += 1
                return
            except Exception as error:  # a store blip: the next checkpoint will tell
                logger.warning("session %s: could not renew its lease: %s", session.id, error)

    async def close(self, session: DurableSession, *, finished: bool) -> None:
        """Release the lease, or forget the session if its graph ``finished`` (it is over)."""
        try:
            if finished:
                await self.store.delete(session.lease)
            else:
                await self.store.release(session.lease)
        except SessionConflict:
            pass  # another process holds it now: the session is theirs to keep
        except Exception as error:  # the state is safe; the lease lapses by itself
            logger.warning("session %s: could not release its lease: %s", session.id, error)
