"""``/dashboard``: the batchers' and sessions' own statistics, live in a browser.

- ``GET /dashboard`` is a page rendered here that reads as tables without JavaScript; its script
  (and the vendored uPlot it draws with: no build step, no CDN) follows
- ``GET /dashboard/events``, a server-sent event stream of one JSON frame a second
  (``_dashboard_feed``); ``?session=ID`` adds that session's graph to each frame.
- ``GET /dashboard/snapshot`` is this process's raw, cumulative snapshot: with ``--workers N``
  the worker that serves a stream gathers its siblings' over their Unix sockets
  (``?local=1``), as ``/metrics`` does.

Frames are made only while somebody watches: the sampler starts with the first stream and
stops with the last, so with the page closed the serving path pays nothing. Every response
carries a strict Content-Security-Policy: the page runs only its own files.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from coserve import __version__
from coserve.models import ModelRepository
from coserve.server._dashboard_feed import Frame, History, graph_view, make_frame, snapshot
from coserve.server._metrics import Metrics
from coserve.server._responses import error_response, json_response
from coserve.server._sessions import SessionManager
from coserve.server._workers import WorkerInfo, local_request

__all__ = ["CONTENT_SECURITY_POLICY", "Dashboard"]

logger = logging.getLogger("coserve.server")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only the page's own scripts, styles and event stream; nothing inline, nothing elsewhere."""

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/uPlot.LICENSE": "text/plain; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files the page loads, shipped in the wheel (``dashboard_static``), by their URL path."""

_SIBLING_TIMEOUT = 0.5
"""Seconds a sibling worker has to answer for its snapshot; a late one sits out a frame."""


def _static_files() -> dict[str, bytes]:
    root = resources.files("coserve.server").joinpath("dashboard_static")
    files = {}
    for name in _STATIC:
        target = root
        for part in name.split("/"):
            target = target.joinpath(part)
        files[name] = target.read_bytes()
    return files


class Dashboard:
    """The dashboard's routes, its sampler, and the frames it streams.

    Args:
        repository: The models whose batchers are shown.
        sessions: The session apps and live sessions shown.
        metrics: Where the request latency histogram is read.
        worker: Set in a worker of ``--workers N``: frames then gather every worker's snapshot.
        interval: Seconds between frames.
    """

    def __init__(
        self,
        repository: ModelRepository,
        sessions: SessionManager,
        metrics: Metrics,
        *,
        worker: WorkerInfo | None = None,
        interval: float = 1.0,
    ) -> None:
        self._repository = repository
        self._sessions = sessions
        self._metrics = metrics
        self._worker = worker
        self.interval = interval
        self._files = _static_files()
        self._history = History()
        self._subscribers = 0
        self._sampler: asyncio.Task[None] | None = None
        self._frame: Frame | None = None
        self._tick = asyncio.Event()
        self._seq = 0
        self._closed = False

    # -- what the sampler takes and makes ----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """This process's statistics now (``_dashboard_feed.snapshot``)."""
        index = self._worker.index if self._worker is not None else None
        return snapshot(self._repository, self._sessions, self._metrics, worker=index)

    async def _gather(self) -> None:
        """Add this process's snapshot, and every sibling worker's, to the history."""
        own = self.snapshot()
        self._history.add(own["worker"], own)
        worker = self._worker
        if worker is None or worker.count < 2:
            return
        siblings = [i for i in range(worker.count) if i != worker.index]
        answers = await asyncio.gather(
            *(
                local_request(
                    worker.socket_path(i),
                    "GET",
                    "/dashboard/snapshot?local=1",
                    timeout=_SIBLING_TIMEOUT,
                )
                for i in siblings
            )
        )
        present = {own["worker"]}
        for answer in answers:
            if answer is None or answer[0] != 200:
                continue  # restarting, say: it sits this frame out
            try:
                shot = orjson.loads(answer[1])
            except orjson.JSONDecodeError:
                continue
            self._history.add(shot["worker"], shot)
            present.add(shot["worker"])
        self._history.forget(present)

    async def _sample(self) -> None:
        """Take snapshots and make frames every ``interval`` while anybody watches."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        first = True
        self._history = History()  # a window from an earlier watch would count too much
        try:
            # The checks and the exit below have no await between them: a stream that
            # subscribes after the last one left finds no sampler, and starts one.
            while self._subscribers and not self._closed:
                try:
                    await self._gather()  # the first is the baseline of the first frame's rates
                    if not first:
                        self._seq += 1
                        self._frame = make_frame(self._history, self._seq, interval=self.interval)
                        tick, self._tick = self._tick, asyncio.Event()
                        tick.set()
                except Exception:  # a bug here must not end the streams, nor pass unseen
                    logger.exception("the dashboard could not make a frame")
                first = False
                next_at += self.interval
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            self._sampler = None

    async def _session_graph(self, session_id: str) -> dict[str, Any] | None:
        live = self._sessions.find(session_id)
        index = self._worker.index if self._worker is not None else None
        if live is not None:
            return graph_view(live.id, live.app, live.graph, index)
        worker = self._worker
        if worker is None or worker.count < 2:
            return None
        for i in range(worker.count):
            if i == worker.index:
                continue
            answer = await local_request(
                worker.socket_path(i),
                "GET",
                f"/dashboard/sessions/{session_id}?local=1",
                timeout=_SIBLING_TIMEOUT,
            )
            if answer is not None and answer[0] == 200:
                found: dict[str, Any] = orjson.loads(answer[1])
                return found
        return None

    async def frames(self, session: str | None = None) -> AsyncIterator[Frame]:
        """Each new frame, until the dashboard closes; ``session`` adds that session's graph."""
        self._subscribers += 1
        seen = self._seq
        try:
            while not self._closed:
                if self._sampler is None:
                    self._sampler = asyncio.create_task(self._sample(), name="coserve-dashboard")
                await self._tick.wait()
                frame = self._frame
                if self._closed or frame is None or frame["seq"] == seen:
                    continue
                seen = frame["seq"]
                if session is not None:
                    graph = await self._session_graph(session)
                    frame = {
                        **frame,
                        "session": {"id": session, "graph": graph, "found": graph is not None},
                    }
                yield frame
        finally:
            self._subscribers -= 1

    def close(self) -> None:
        """End every stream at its next frame (the server is shutting down)."""
        self._closed = True
        self._tick.set()

    async def aclose(self) -> None:
        """End the streams and the sampler."""
        self.close()
        sampler = self._sampler
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    # -- the endpoints ---------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        """The page: tables now, charts once its script runs."""
        return Response(self.render(), headers=_HEADERS, media_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        """One of the page's own files."""
        name = request.path_params["path"]
        media_type = _STATIC.get(name)
        if media_type is None:
            return error_response(f"no dashboard file {name!r}", 404)
        return Response(self._files[name], headers=_HEADERS, media_type=media_type)

    async def events(self, request: Request) -> Response:
        """``text/event-stream``: ``id``, ``event: stats`` and a JSON ``data`` line per frame."""
        session = request.query_params.get("session") or None

        async def stream() -> AsyncIterator[bytes]:
            # EventSource reconnects by itself; 2 s after the server went away.
            yield b"retry: 2000\n\n"
            async for frame in self.frames(session):
                data = orjson.dumps(frame, option=orjson.OPT_SERIALIZE_NUMPY)
                yield b"id: %d\nevent: stats\ndata: %s\n\n" % (frame["seq"], data)

        headers = {**_HEADERS, "X-Accel-Buffering": "no"}  # no proxy may hold the stream back
        return StreamingResponse(stream(), headers=headers, media_type="text/event-stream")

    async def snapshot_endpoint(self, request: Request) -> Response:
        """This process's cumulative snapshot (what siblings gather), as JSON."""
        return json_response(self.snapshot())

    async def session_endpoint(self, request: Request) -> Response:
        """One live session's graph, if it runs in this process (``?local=1``) or any worker."""
        session_id = request.path_params["session"]
        if request.query_params.get("local") == "1":
            live = self._sessions.find(session_id)
            graph = None
            if live is not None:
                index = self._worker.index if self._worker is not None else None
                graph = graph_view(live.id, live.app, live.graph, index)
        else:
            graph = await self._session_graph(session_id)
        if graph is None:
            return error_response(f"no live session {session_id!r}", 404)
        return json_response(graph)

    def routes(self) -> list[Route]:
        """The dashboard's routes, to mount beside the server's."""
        return [
            Route("/dashboard", self.page, methods=["GET"]),
            Route("/dashboard/events", self.events, methods=["GET"]),
            Route("/dashboard/snapshot", self.snapshot_endpoint, methods=["GET"]),
            Route("/dashboard/sessions/{session}", self.session_endpoint, methods=["GET"]),
            Route("/dashboard/static/{path:path}", self.static, methods=["GET"]),
        ]

    # -- the page ----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The page with this process's statistics now, readable without JavaScript."""
        shot = self.snapshot()
        rows = []
        for model in shot["models"]:
            batches = model["batches"]
            rows_total = sum(int(size) * n for size, n in model["batch_sizes"].items())
            mean_batch = rows_total / batches if batches else 0.0
            policy = ", ".join(
                f"{name}={value}" for name, value in model["policy"].items() if value is not None
            )
            cells = [
                ("key", model["key"]),
                ("completed", model["completed"]),
                ("errors", sum(model[name] for name in ("failed", "expired", "aborted"))),
                ("rejected", model["rejected_queue_full"] + model["rejected_closed"]),
                ("queued", model["queued"]),
                ("batches", batches),
                ("mean_batch", f"{mean_batch:.1f}"),
                ("queue_p99_ms", f"{model['queue_time']['p99'] * 1e3:.2f}"),
                ("exec_p99_ms", f"{model['execution_time']['p99'] * 1e3:.2f}"),
                ("policy", policy),
            ]
            tds = "".join(
                f'<td data-field="{name}">{html.escape(str(value))}</td>' for name, value in cells
            )
            rows.append(f'<tr data-key="{html.escape(model["key"])}">{tds}</tr>')
        apps = []
        for app, counters in shot["sessions"]["apps"].items():
            tds = "".join(
                f'<td data-field="{name}">{counters[name]}</td>'
                for name in ("active", "created", "expired", "errors", "messages")
            )
            apps.append(f'<tr data-app="{html.escape(app)}"><td>{html.escape(app)}</td>{tds}</tr>')
        live = "".join(
            f"<li>{html.escape(s['app'])} {html.escape(s['id'])} (since "
            f"{time.strftime('%H:%M:%S', time.localtime(s['started']))})</li>"
            for s in shot["sessions"]["live"]
        )
        worker = "" if shot["worker"] is None else f" · worker {shot['worker']}"
        page = _PAGE.format(
            version=html.escape(__version__),
            worker=worker,
            taken=time.strftime("%H:%M:%S", time.localtime(shot["time"])),
            models="".join(rows) or '<tr><td colspan="10">No models are served.</td></tr>',
            apps="".join(apps) or '<tr><td colspan="6">No session apps.</td></tr>',
            live=live or "<li>None.</li>",
        )
        return page.encode()


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>coserve dashboard</title>
<link rel="icon" href="dashboard/static/favicon.svg" type="image/svg+xml">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<link rel="stylesheet" href="dashboard/static/vendor/uPlot.min.css">
<link rel="stylesheet" href="dashboard/static/dashboard.css">
<script src="dashboard/static/vendor/uPlot.iife.min.js" defer></script>
<script src="dashboard/static/dashboard.js" defer></script>
</head>
<body>
<header>
<h1>coserve <small>{version}{worker}</small></h1>
<p id="status" role="status">Statistics as of {taken}; this page refreshes every 5 s.</p>
<input id="filter" type="search" placeholder="Filter models" aria-label="Filter models" hidden>
</header>
<main>
<section>
<h2>Models</h2>
<table id="models-table">
<thead><tr><th>model/version</th><th>completed</th><th>errors</th><th>rejected</th>
<th>queued</th><th>batches</th><th>mean batch</th><th>queue p99 ms</th><th>exec p99 ms</th>
<th>policy</th></tr></thead>
<tbody>{models}</tbody>
</table>
<div id="models"></div>
</section>
<section>
<h2>Sessions</h2>
<table id="apps-table">
<thead><tr><th>app</th><th>active</th><th>created</th><th>expired</th><th>errors</th>
<th>messages</th></tr></thead>
<tbody>{apps}</tbody>
</table>
<h3>Live sessions</h3>
<ul id="live-sessions">{live}</ul>
<div id="session-graph"></div>
</section>
</main>
</body>
</html>
"""
