"""Per-session coroutine graphs over WebSocket: ``/sessions/{app}``.

An application is a factory that builds one graph per connection (the talk's "graph per user"):
the session's state lives in that graph's nodes, not in a shared store. Each JSON text message
from the client enters the graph's entry input as a :class:`~coserve.Signal` (its ``id`` is the
message's ``"id"`` when given), and every message reaching the exit output goes back over the
socket tagged with its id. A message the graph could not finish (a dead letter) is answered with
``{"id": ..., "error": "...", "status": N}``, so every message gets an answer.

A client that does not read its answers is pushed back on, never dropped: the answers wait in the
session's outbox for its one writer, and while that holds its bound the reader takes no more of
the client's messages (so the client's sends back up in its socket). Dead letters arrive through a
synchronous callback, so they join the outbox even at its bound; each message has at most one
answer and the graph's ports are bounded, so that excess is bounded too. An error that repeats
within a session is logged once, then counted (see :class:`coserve._log.RepeatedLog`).

Closing the socket closes the entry: the graph drains what it holds (answers still go out while
the socket is open) and stops. Close codes: 4404 unknown app, 1013 too many sessions or the
session store failing (try again later), 4408 idle for too long, 1011 the app failed, 4409 the
session was resumed on another connection, 4410 no stored session for the resume token.

With a session store (:mod:`coserve.server._session_state`) each answer is checkpointed before
it is sent, and the hello carries a ``resume`` token for ``/sessions/{app}?resume=TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson
from starlette.websockets import WebSocket

from coserve._exceptions import (
    ChannelError,
    ClosedChannelError,
    ConfigError,
    CoserveError,
    EndOfChannel,
    GraphFailed,
    SessionConflict,
    SessionError,
    SessionNotFound,
    WouldBlock,
)
from coserve._log import RepeatedLog
from coserve.channels import ReceiveChannel, SendChannel
from coserve.graph import DeadLetter, Graph, Input, Output, Signal
from coserve.models import ModelRepository
from coserve.server._errors import status_of
from coserve.server._service import trace_context
from coserve.server._session_state import Checkpoints, DurableSession, SessionStates

if TYPE_CHECKING:
    from coserve.server._tracing import Tracing

__all__ = [
    "CLOSE_APP_FAILED",
    "CLOSE_APP_NOT_FOUND",
    "CLOSE_CANNOT_RESUME",
    "CLOSE_IDLE",
    "CLOSE_TAKEN_OVER",
    "CLOSE_TOO_MANY_SESSIONS",
    "LiveSession",
    "Session",
    "SessionCounters",
    "SessionFactory",
    "SessionManager",
    "SessionPipeline",
    "load_factory",
]

logger = logging.getLogger("coserve.sessions")

CLOSE_APP_NOT_FOUND = 4404
"""Close code: no session app of that name (after HTTP's 404)."""
CLOSE_IDLE = 4408
"""Close code: the client sent nothing for the idle timeout (after HTTP's 408)."""
CLOSE_TOO_MANY_SESSIONS = 1013
"""Close code: the server is at its session cap; RFC 6455's "try again later"."""
CLOSE_APP_FAILED = 1011
"""Close code: the app could not build its graph, or the graph failed."""
CLOSE_TAKEN_OVER = 4409
"""Close code: the session was resumed on another connection, which now owns it (HTTP 409)."""
CLOSE_CANNOT_RESUME = 4410
"""Close code: no stored session matches the resume token, or no store is set (HTTP 410)."""

_TAKEN_OVER = (CLOSE_TAKEN_OVER, "the session was resumed on another connection")

_OUTBOUND_CAPACITY = 256
"""Answers a session holds for a client before it stops reading the client's messages."""
_MAX_OPEN_SPANS = 1024  # messages of one session traced at once; the oldest end beyond


@dataclass(frozen=True, slots=True)
class Session:
    """What a session factory is given: who the session is, and the models it may call.

    Attributes:
        id: A unique id for this connection (also each Signal's ``session``).
        app: The app's name, from the URL.
        models: The server's model repository (``models.get("digits")`` for a ModelNode).
    """

    id: str
    app: str
    models: ModelRepository


@dataclass(frozen=True, slots=True)
class SessionPipeline:
    """What a session factory returns: the graph, and where messages enter and leave it.

    Attributes:
        graph: The session's graph, built but not started.
        entry: The input that client messages are sent to.
        exit: The output whose messages go back to the client; values should be JSON-able
            (a dict is merged with the ``id``; anything else is sent as ``"data"``).
    """

    graph: Graph
    entry: Input[Any]
    exit: Output[Any]


SessionFactory = Callable[[Session], SessionPipeline]


@dataclass(frozen=True, slots=True)
class LiveSession:
    """A session whose graph runs now, as the dashboard lists it.

    Attributes:
        id: The session's id.
        app: Its app's name.
        started: When its connection opened, in seconds since the epoch.
        graph: Its running graph (read its ``statistics()``, ``links()``).
    """

    id: str
    app: str
    started: float
    graph: Graph


def load_factory(spec: str) -> SessionFactory:
    """Import a factory named as ``package.module:function``.

    Raises:
        ConfigError: The spec is malformed, the module cannot be imported, or the name is not
            a callable.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"a session app is 'module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"cannot import {module_name!r} for session app {spec!r}: {error}"
        ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ConfigError(f"{spec!r} does not name a callable in {module_name!r}")
    return factory  # type: ignore[no-any-return]


@dataclass(slots=True)
class SessionCounters:
    """Session counts for one app, as shown in ``/metrics``."""

    active: int = 0
    created: int = 0
    expired: int = 0
    refused: int = 0
    errors: int = 0
    messages: int = 0
    lost_answers: int = 0
    """Answers dropped because their session had closed (or ran out of time to send them)."""
    resumed: int = 0
    """Sessions resumed from the store with a resume token."""
    taken_over: int = 0
    """Connections closed because their session was resumed on another connection."""


class _Outbox:
    """The answers waiting for a session's writer, in the order they were made.

    ``send`` waits while ``bound`` answers wait; ``append`` never waits and may go past the
    bound, for the graph's dead-letter callback, which cannot await and must not drop an answer.
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._answers: deque[bytes] = deque()
        self._closed = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()  # set exactly when below the bound, or closed
        self._room.set()

    def __len__(self) -> int:
        return len(self._answers)

    def _update(self) -> None:
        if self._answers or self._closed:
            self._readable.set()
        if len(self._answers) < self.bound or self._closed:
            self._room.set()
        else:
            self._room.clear()

    def append(self, data: bytes) -> None:
        """Queue an answer now, past the bound if need be.

        Raises:
            ClosedChannelError: The outbox is closed (the session is over).
        """
        if self._closed:
            raise ClosedChannelError("the session's outbox is closed")
        self._answers.append(data)
        self._update()

    async def wait_for_room(self) -> None:
        """Wait until fewer than ``bound`` answers wait (or the outbox is closed)."""
        while not self._room.is_set():
            await self._room.wait()

    async def send(self, data: bytes) -> None:
        """Queue an answer once there is room.

        Raises:
            ClosedChannelError: The outbox is (or becomes) closed.
        """
        await self.wait_for_room()
        self.append(data)

    async def receive(self) -> bytes | None:
        """The oldest answer, waiting for one; None once the outbox is closed and empty."""
        while not self._answers:
            if self._closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        data = self._answers.popleft()
        self._update()
        return data

    def close(self) -> None:
        """Take no more answers; the writer still gets those already queued."""
        self._closed = True
        self._update()


@dataclass(slots=True)
class _Connection:
    """One live session: its socket, graph, the outbox its writer drains, and its error log."""

    session: Session
    websocket: WebSocket
    graph: Graph
    outbox: _Outbox
    counters: SessionCounters
    durable: DurableSession | None = None
    checkpoints: Checkpoints | None = None
    log: RepeatedLog = field(default_factory=lambda: RepeatedLog(logger))
    started: float = field(default_factory=time.time)
    ids: Any = field(default_factory=lambda: itertools.count(1))
    spans: dict[Any, Any] = field(default_factory=dict)
    """The open span of each message in the graph, by id (tracing only)."""
    trace_parent: Any = None
    """The trace context the connection's upgrade request named (tracing only)."""


def _end_span(connection: _Connection, request_id: Any, status: int | None) -> None:
    """End a message's span, if it has one, with the status of its answer (None: none)."""
    span = connection.spans.pop(request_id, None)
    if span is not None:
        from coserve.server._tracing import end_span  # loaded already: tracing is on

        end_span(span, status)


class SessionManager:
    """Runs the session apps: one graph per WebSocket connection, within the limits given.

    Args:
        repository: The models the apps may call.
        apps: Factories by app name (the ``{app}`` in ``/sessions/{app}``).
        max_sessions: Open sessions allowed at once, across apps; more are refused (1013).
        idle_timeout: Seconds a client may stay silent before its session expires (4408);
            None for no limit.
        drain_timeout: Seconds a closing session's graph has to finish what it holds.
        states: The session store's side, to checkpoint sessions and resume them (None: a
            session lives and dies with its connection).
    """

    def __init__(
        self,
        repository: ModelRepository,
        apps: Mapping[str, SessionFactory],
        *,
        max_sessions: int = 1000,
        idle_timeout: float | None = 300.0,
        drain_timeout: float = 10.0,
        states: SessionStates | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions!r}")
        self.repository = repository
        self.apps = dict(apps)
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.states = states
        self.tracing: Tracing | None = None
        """Traces each message and its hops through the graph (``create_app`` sets it)."""
        self.counters = {name: SessionCounters() for name in self.apps}
        self._active = 0
        self._live: dict[str, _Connection] = {}

    def live(self) -> list[LiveSession]:
        """The sessions whose graphs run now, oldest first (for the dashboard)."""
        return [
            LiveSession(c.session.id, c.session.app, c.started, c.graph)
            for c in self._live.values()
        ]

    def find(self, session_id: str) -> LiveSession | None:
        """The live session of that id, if its graph runs in this process."""
        connection = self._live.get(session_id)
        if connection is None:
            return None
        return LiveSession(session_id, connection.session.app, connection.started, connection.graph)

    @property
    def active(self) -> int:
        """Sessions open now, across apps."""
        return self._active

    async def aclose(self) -> None:
        """Close the session store, if any (after the sessions have closed)."""
        if self.states is not None:
            await self.states.store.aclose()

    async def serve(self, websocket: WebSocket) -> None:
        """The WebSocket endpoint: run one session until the client leaves or it expires."""
        name = websocket.path_params["app"]
        await websocket.accept()
        factory = self.apps.get(name)
        if factory is None:
            await websocket.close(CLOSE_APP_NOT_FOUND, f"no session app named {name!r}")
            return
        counters = self.counters[name]
        if self._active >= self.max_sessions:
            counters.refused += 1
            await websocket.close(
                CLOSE_TOO_MANY_SESSIONS,
                f"the server is at its limit of {self.max_sessions} sessions",
            )
            return
        # Counted from here, so the cap holds while the store is asked.
        self._active += 1
        counters.active += 1
        try:
            durable = await self._open(websocket, name, counters)
            if durable is False:
                return
            session_id = durable.id if durable is not None else uuid.uuid4().hex
            session = Session(session_id, name, self.repository)
            try:
                pipeline = factory(session)
                if not isinstance(pipeline, SessionPipeline):
                    raise TypeError(f"the factory returned {pipeline!r}, not a SessionPipeline")
                if durable is not None and durable.resumed:
                    pipeline.graph.restore(durable.states)
            except Exception:
                counters.errors += 1
                logger.exception("session app %r failed to build a session", name)
                await websocket.close(CLOSE_APP_FAILED, "the app could not start a session")
                if durable is not None and self.states is not None:
                    await self.states.close(durable, finished=False)
                return
            if durable is None or not durable.resumed:
                counters.created += 1
            await self._run(session, pipeline, websocket, counters, durable)
        finally:
            self._active -= 1
            counters.active -= 1

    async def _open(
        self, websocket: WebSocket, app: str, counters: SessionCounters
    ) -> DurableSession | Literal[False] | None:
        """The session's place in the store (None without one); False if the socket closed."""
        resume = websocket.query_params.get("resume")
        if self.states is None:
            if resume is None:
                return None
            await websocket.close(
                CLOSE_CANNOT_RESUME, "this server keeps no session state (see --session-store)"
            )
            return False
        try:
            durable = await self.states.open(app, resume)
        except SessionNotFound as error:
            await websocket.close(CLOSE_CANNOT_RESUME, str(error)[:120])
            return False
        except SessionError as error:
            counters.errors += 1
            logger.error("session app %r: the session store failed: %s", app, error)
            await websocket.close(CLOSE_TOO_MANY_SESSIONS, "the session store is unavailable")
            return False
        counters.resumed += durable.resumed
        return durable

    async def _run(
        self,
        session: Session,
        pipeline: SessionPipeline,
        websocket: WebSocket,
        counters: SessionCounters,
        durable: DurableSession | None,
    ) -> None:
        graph = pipeline.graph
        outbox = _Outbox(_OUTBOUND_CAPACITY)
        connection = _Connection(session, websocket, graph, outbox, counters, durable)
        if self.tracing is not None:
            connection.trace_parent = self.tracing.parent(*trace_context(websocket.headers.raw))
        graph.on_dead_letter = lambda letter: self._answer_error(connection, letter)
        if durable is not None:
            connection.checkpoints = Checkpoints(graph, durable.envelope)
        try:
            inlet = graph.inlet(pipeline.entry)
            outlet = graph.outlet(
                pipeline.exit,
                capacity=_OUTBOUND_CAPACITY,
                on_send=None if connection.checkpoints is None else connection.checkpoints.take,
            )
            await graph.start()  # validates the wiring: an app's bug surfaces here
            self._live[session.id] = connection
        except Exception:
            counters.errors += 1
            logger.exception("session app %r: the session's graph could not start", session.app)
            await graph.stop(drain=False)
            with contextlib.suppress(Exception):
                await websocket.close(CLOSE_APP_FAILED, "the app could not start a session")
            if durable is not None and self.states is not None:
                await self.states.close(durable, finished=False)
            return
        hello: dict[str, Any] = {
            "event": "session",
            "session": session.id,
            "app": session.app,
            "worker": os.getpid(),
        }
        if durable is not None:
            hello.update(
                resume=durable.token,
                resumed=durable.resumed,
                version=durable.version,
                last=durable.last,
            )
        outbox.append(orjson.dumps(hello))
        writer = asyncio.create_task(self._write(websocket, outbox))
        forwarder = asyncio.create_task(self._forward(outlet, connection))
        reader = asyncio.create_task(self._read(websocket, inlet, connection))
        watched = [reader, forwarder]
        keeper = None
        if durable is not None and self.states is not None:
            keeper = asyncio.create_task(self.states.keep(durable))
            watched.append(keeper)
        close_code, reason = 1000, "the session's graph has finished"
        finished = False
        try:
            # The client leaving ends the reader; the graph finishing (or failing) ends the
            # forwarder, since its outlet closes; another connection taking the session over
            # ends the keeper (or the forwarder's next checkpoint): the first ends the session.
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                close_code, reason = reader.result()
            elif forwarder.done() and forwarder.result() is not None:
                close_code, reason = forwarder.result()  # type: ignore[misc]
            elif keeper is not None and keeper.done():
                close_code, reason = _TAKEN_OVER
            else:
                finished = True
        finally:
            self._live.pop(session.id, None)
            if keeper is not None:
                keeper.cancel()
            reader.cancel()
            inlet.close()
            await graph.stop(drain=True, timeout=self.drain_timeout)
            try:  # the graph has stopped, so its outlet has ended: flush what it sent
                async with asyncio.timeout(self.drain_timeout):
                    await forwarder
                    outbox.close()
                    await writer
            except TimeoutError:
                counters.lost_answers += len(outbox)
                logger.warning(
                    "session %s: %d answers not sent in time; dropped", session.id, len(outbox)
                )
            finally:
                outbox.close()
                for task in (reader, forwarder, writer):
                    task.cancel()
                await asyncio.gather(reader, forwarder, writer, return_exceptions=True)
                connection.log.flush()  # the counts of repeated errors not yet logged
                for request_id in list(connection.spans):  # messages never answered
                    _end_span(connection, request_id, None)
            if close_code == CLOSE_IDLE:
                counters.expired += 1
            if graph.state == "failed":
                counters.errors += 1
                close_code, reason = CLOSE_APP_FAILED, "the session's graph failed"
                finished = False  # its last checkpoint stays, to resume from
            if close_code == CLOSE_TAKEN_OVER:
                counters.taken_over += 1
            if durable is not None and self.states is not None:
                await self.states.close(durable, finished=finished)
            with contextlib.suppress(Exception):  # the client may be gone already
                await websocket.close(close_code, reason)

    async def _read(
        self, websocket: WebSocket, inlet: SendChannel[Signal[Any]], connection: _Connection
    ) -> tuple[int, str]:
        """Feed client messages into the graph; the close code to use when the client stops."""
        while True:
            # Backpressure: while the answers to earlier messages fill the outbox, the client's
            # next messages stay in its socket. Not inside the idle timeout: the client may be
            # sending; it is we who are not reading.
            await connection.outbox.wait_for_room()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    message = await websocket.receive()
            except TimeoutError:
                return CLOSE_IDLE, f"no message for {self.idle_timeout} s"
            if message["type"] == "websocket.disconnect":
                return 1000, ""
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            connection.counters.messages += 1
            try:
                value = orjson.loads(raw)
                if not isinstance(value, dict):
                    raise TypeError("a session message must be a JSON object")
            except (orjson.JSONDecodeError, TypeError) as error:
                # The reader may wait for room: a client flooding bad messages slows itself.
                await connection.outbox.send(
                    orjson.dumps({"id": None, "error": f"bad message: {error}", "status": 400})
                )
                continue
            request_id = value.get("id")
            if request_id is None or not isinstance(request_id, str | int | float | bool):
                request_id = f"{connection.session.id[:8]}-{next(connection.ids)}"
            signal = Signal(
                value, request_id, connection.session.id, self._trace(connection, request_id)
            )
            try:
                await inlet.send(signal)
            except ChannelError:  # the graph has stopped taking messages: it failed
                self._send_error(connection, request_id, "the session's graph has stopped", 503)
                return CLOSE_APP_FAILED, "the session's graph has stopped"

    async def _forward(
        self, outlet: ReceiveChannel[Signal[Any]], connection: _Connection
    ) -> tuple[int, str] | None:
        """Graph answers to the writer, tagged with their ids, each checkpointed first.

        Returns the close code to use if a checkpoint could not be committed (None when the
        graph has finished): an answer the store does not hold is never sent. The answers
        waiting together share one checkpoint, the state as of the last of them, which holds
        every earlier one too: a session answering quickly writes once per round, not once
        per answer.
        """
        async for first in outlet:
            answers = [first]
            if connection.checkpoints is not None:
                while len(answers) < _OUTBOUND_CAPACITY:
                    try:
                        answers.append(outlet.receive_nowait())
                    except (WouldBlock, EndOfChannel):
                        break
                failed = await self._checkpoint(connection, answers[-1])
                if failed is not None:
                    return failed
            for signal in answers:
                await connection.outbox.send(self._encode(connection, signal))
                if connection.spans:
                    _end_span(connection, signal.id, 200)
        return None

    def _trace(self, connection: _Connection, request_id: Any) -> str | None:
        """Open a message's span; the ``traceparent`` its signal carries (None: untraced)."""
        tracing = self.tracing
        if tracing is None:
            return None
        session = connection.session
        spans = connection.spans
        if request_id in spans:  # an id reused while the first is in the graph: one span
            return tracing.traceparent(spans[request_id])
        if len(spans) >= _MAX_OPEN_SPANS:  # a graph that never answers: bounded
            _end_span(connection, next(iter(spans)), None)
        span = tracing.span(
            f"session {session.app}",
            parent=connection.trace_parent,
            start=time.time(),
            attributes={
                "coserve.app": session.app,
                "coserve.session": session.id,
                "coserve.message_id": str(request_id),
            },
            server=True,
        )
        spans[request_id] = span
        return tracing.traceparent(span)

    @staticmethod
    def _encode(connection: _Connection, signal: Signal[Any]) -> bytes:
        """An answer as the client gets it: the value (a dict, or as ``data``) with its id."""
        value = signal.value
        body = (
            {"id": signal.id, **value}
            if isinstance(value, dict)
            else {"id": signal.id, "data": value}
        )
        try:
            data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError as error:
            connection.log.log(
                logging.ERROR,
                ("not JSON", type(error)),
                "session %s: app %r sent a value that is not JSON: %s",
                connection.session.id,
                connection.session.app,
                error,
            )
            connection.counters.errors += 1
            data = orjson.dumps(
                {"id": signal.id, "error": "the app's answer is not JSON", "status": 500}
            )
        return data

    async def _checkpoint(
        self, connection: _Connection, signal: Signal[Any]
    ) -> tuple[int, str] | None:
        """Commit the state ``signal`` reflects; the close code if that failed."""
        assert connection.checkpoints is not None
        assert connection.durable is not None
        assert self.states is not None
        data = connection.checkpoints.of(signal)
        if data is None:  # logged where it was taken; the answer still goes out
            connection.counters.errors += 1
            return None
        try:
            await self.states.save(connection.durable, data)
        except SessionConflict:
            return _TAKEN_OVER
        except SessionError as error:
            connection.counters.errors += 1
            logger.error("session %s: checkpoint failed: %s", connection.session.id, error)
            return CLOSE_TOO_MANY_SESSIONS, "the session store is unavailable: resume later"
        connection.durable.last = signal.id
        return None

    @staticmethod
    async def _write(websocket: WebSocket, outbox: _Outbox) -> None:
        """The one writer: answers go out in the order they were queued."""
        alive = True
        while (data := await outbox.receive()) is not None:
            if not alive:
                continue  # keep draining so producers never wait on a gone client
            try:
                await websocket.send_text(data.decode())
            except Exception:  # the client went away; the session is closing anyway
                alive = False

    def _answer_error(self, connection: _Connection, letter: DeadLetter) -> None:
        error = letter.error
        status = status_of(error) if isinstance(error, Exception) else 500
        if status == 500 and not isinstance(error, CoserveError | GraphFailed):
            connection.log.log(
                logging.ERROR,
                ("failed", letter.node, type(error)),
                "session %s: message %r failed in %s: %r",
                connection.session.id,
                letter.signal.id,
                letter.node,
                error,
            )
        self._send_error(connection, letter.signal.id, str(error) or repr(error), status)

    @staticmethod
    def _send_error(connection: _Connection, request_id: Any, message: str, status: int) -> None:
        connection.counters.errors += status >= 500
        if connection.spans:
            _end_span(connection, request_id, status)
        data = orjson.dumps({"id": request_id, "error": message, "status": status})
        try:
            # Past the outbox's bound if need be (this runs in a synchronous callback); the
            # reader stops taking messages meanwhile, so the excess stays bounded.
            connection.outbox.append(data)
        except ClosedChannelError:  # the session has closed: the answer has nowhere to go
            connection.counters.lost_answers += 1
