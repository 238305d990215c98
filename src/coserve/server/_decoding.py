"""Decoding large JSON bodies in separate processes, so that the event loop keeps serving.

orjson and numpy hold the GIL while they parse, so a thread does not help. The event loop's
longest stall while one 23 MiB V2 body (1.2M FP32 values) decodes, measured on a 2-core machine:

==================================  ===========
decoded on the loop                 150-180 ms
in a thread                          90-130 ms
in a ``ProcessPoolExecutor``          3-19 ms  (pickling the body, on the GIL)
in these decoder processes           0.4-1 ms
==================================  ===========

Under a client streaming such bodies, other requests' p50 stayed at 2.4 ms (46 ms before);
with 12 MiB TF Serving bodies, 2.0 ms (116 ms before). The loop's own share of a decode is a few
small system calls: the body goes to the process and the arrays come back over a Unix socket,
written and read by one I/O thread per process that holds no GIL while the kernel copies the
bytes; large buffers travel out of band (pickle protocol 5), copied by nobody but the kernel.

The processes are started lazily, on the first large body, with ``subprocess`` (a fresh
interpreter: nothing is forked from a server that may have TensorFlow loaded), and stopped when
the last server using them stops (:func:`serving`, in the app's lifespan), or at exit. A
process that dies (killed for memory, say) fails the one request it held and is replaced.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, SimpleQueue
from typing import Any, TypeVar

import numpy as np

from coserve._exceptions import BatcherClosed, QueueFull

__all__ = [
    "LARGE_JSON",
    "DecoderPool",
    "DecoderStatistics",
    "decode_soon",
    "decoder_pool",
    "serving",
]

T = TypeVar("T")

LARGE_JSON = 256 * 1024
"""JSON this size or larger is decoded in a decoder process; smaller takes ~1 ms or less here."""

_HEAD = struct.Struct("<QI")  # pickle length, out-of-band buffer count; then one <Q per buffer
_STOP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DecoderStatistics:
    """A snapshot of a :class:`DecoderPool`.

    Attributes:
        workers: The process ids of the decoder processes running now (empty until first used).
        pending: Decodes submitted and not yet finished (running or waiting for a process).
        max_pending: The bound on ``pending``; one more is refused with ``QueueFull``.
        pending_bytes: The JSON bytes of the pending decodes.
        max_pending_bytes: The bound on ``pending_bytes`` (one decode may exceed it alone).
        decoded: Decodes ended since the pool was created: done, failed, or dropped unrun.
    """

    workers: tuple[int, ...]
    pending: int
    max_pending: int
    pending_bytes: int
    max_pending_bytes: int
    decoded: int


@dataclass(slots=True)
class _Job:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    size: int


class _Worker:
    """One decoder process and the thread that talks to it (``process`` is None while dead)."""

    def __init__(self, pool: DecoderPool, jobs: SimpleQueue[_Job | None]) -> None:
        self._pool = pool
        self._jobs = jobs
        self.stopping = False
        self.process: subprocess.Popen[bytes] | None
        self.process, self._socket = _start_process()
        self.thread = threading.Thread(target=self._run, name="coserve-json-decoder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if job.future.cancelled():  # the client left while it waited: skip the work
                    self._pool._finished(job, True, None)
                    continue
                ok, value = self._call(job)
                self._pool._finished(job, ok, value)
        finally:
            self._stop()

    def _call(self, job: _Job) -> tuple[bool, Any]:
        # Large bytes travel out of band: not copied into the pickle here, on the loop's GIL.
        args = tuple(
            pickle.PickleBuffer(arg) if isinstance(arg, bytes) and len(arg) > 65536 else arg
            for arg in job.args
        )
        try:
            if self.process is None:  # the last one died, and could not be replaced then
                self.process, self._socket = _start_process()
            _send(self._socket, (job.function, args))
            outcome: tuple[bool, Any] = _receive(self._socket)
            return outcome
        except Exception as error:  # it died (killed for memory, say): this job fails
            process = self.process
            self._stop()
            self.process = None
            failure = RuntimeError(
                f"the JSON decoder process {process.pid if process else '-'} failed (exit status "
                f"{process.returncode if process else '-'}): {error!r}"
            )
            if not self.stopping:  # a fresh one for the next job
                with contextlib.suppress(Exception):
                    self.process, self._socket = _start_process()
            return False, failure

    def _stop(self) -> None:
        self._socket.close()  # the process reads EOF and exits
        process = self.process
        if process is None:
            return
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DecoderPool:
    """A few processes that run decode functions on request bodies, off the event loop.

    Submit module-level functions whose arguments and results pickle (bytes, numpy arrays,
    dataclasses); an exception the function raises is raised to the caller.

    Args:
        workers: How many decoder processes to run once started.
        max_pending: How many decodes may be running or waiting at once.
        max_pending_bytes: How many bytes of JSON they may hold together (a decode larger than
            this alone is taken when none is pending).
    """

    def __init__(self, *, workers: int, max_pending: int, max_pending_bytes: int = 1 << 62) -> None:
        if workers < 1 or max_pending < workers:
            raise ValueError("a decoder pool needs workers >= 1 and max_pending >= workers")
        self.workers = workers
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._workers: list[_Worker] = []
        self._pending = 0
        self._decoded = 0
        self._registered = False

    def submit(self, function: Callable[..., T], *args: Any, size: int = 0) -> asyncio.Future[T]:
        """Run ``function(*args)`` in a decoder process; cancel the future to drop it unrun.

        ``size`` is the JSON's length in bytes, counted against ``max_pending_bytes``.

        Raises:
            QueueFull: ``max_pending`` decodes, or ``max_pending_bytes`` of JSON, are running or
                waiting already.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._pending >= self.max_pending or (
                self._pending and self._pending_bytes + size > self.max_pending_bytes
            ):
                raise QueueFull(
                    f"{self._pending} large JSON bodies ({self._pending_bytes} bytes) are being "
                    "decoded already; retry later, or send tensors as binary data"
                )
            if not self._workers:
                self._start()
            self._pending += 1
            self._pending_bytes += size
            self._jobs.put(_Job(function, args, future, loop, size))
        return future

    def statistics(self) -> DecoderStatistics:
        """How many processes run, and how many decodes are pending."""
        with self._lock:
            return DecoderStatistics(
                tuple(w.process.pid for w in self._workers if w.process is not None),
                self._pending,
                self.max_pending,
                self._pending_bytes,
                self.max_pending_bytes,
                self._decoded,
            )

    def close(self) -> None:
        """Stop the processes (after the decodes they run) and fail what still waits.

        The pool starts again on its next :meth:`submit`.
        """
        with self._lock:
            # A fresh queue for a later start: these workers may still be taking jobs from theirs.
            workers, self._workers = self._workers, []
            jobs, self._jobs = self._jobs, SimpleQueue()
            waiting: list[_Job] = []
            # get_nowait until Empty, not empty() then get: a worker may take the last job
            # between the two, without the lock.
            while True:
                try:
                    job = jobs.get_nowait()
                except Empty:
                    break
                if job is not None:
                    waiting.append(job)
            for worker in workers:
                worker.stopping = True
                jobs.put(None)
        closed = BatcherClosed("the server is shutting down")
        for job in waiting:
            self._finished(job, False, closed)
        for worker in workers:
            worker.thread.join(_STOP_TIMEOUT)
            process = worker.process
            if worker.thread.is_alive() and process is not None:  # still decoding: end it
                process.kill()
            worker.thread.join()

    async def aclose(self) -> None:
        """:meth:`close`, without blocking the event loop while the processes exit."""
        await asyncio.to_thread(self.close)

    def _start(self) -> None:
        # Called with the lock held. Processes start here, not in their threads, so that
        # statistics() names them all from the first submit on.
        if not self._registered:
            atexit.register(self.close)
            self._registered = True
        self._workers = [_Worker(self, self._jobs) for _ in range(self.workers)]

    def _finished(self, job: _Job, ok: bool, value: Any) -> None:
        with self._lock:
            self._pending -= 1
            self._pending_bytes -= job.size
            self._decoded += 1
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is waiting
            job.loop.call_soon_threadsafe(_settle, job.future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # cancelled: its client left
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


# -- the wire: a pickle (protocol 5) whose large buffers follow it raw -------------------------


def _send(sock: socket.socket, value: Any) -> None:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    raws = [buffer.raw() for buffer in buffers]
    sizes = struct.pack(f"<{len(raws)}Q", *(raw.nbytes for raw in raws))
    sock.sendall(_HEAD.pack(len(data), len(raws)) + sizes + data)
    for raw in raws:
        sock.sendall(raw)  # the GIL is released while the kernel copies


def _receive(sock: socket.socket) -> Any:
    size, count = _HEAD.unpack(_receive_exactly(sock, _HEAD.size))
    sizes = struct.unpack(f"<{count}Q", _receive_exactly(sock, 8 * count))
    data = _receive_exactly(sock, size)
    return pickle.loads(data, buffers=[_receive_exactly(sock, n) for n in sizes])


def _receive_exactly(sock: socket.socket, size: int) -> memoryview:
    # np.empty, not bytearray: a buffer the kernel is about to fill need not be zeroed first.
    view = memoryview(np.empty(size, dtype=np.uint8).data)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if not count:
            raise EOFError("the other end closed the connection")
        received += count
    return view


def _start_process() -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    # The child imports the coserve that this process runs, wherever that was imported from.
    root = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {root!r}); "
        f"from coserve.server._decoding import serve_decodes; serve_decodes({theirs.fileno()})"
    )
    with theirs:
        process = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
        )
    return process, ours


def serve_decodes(fd: int) -> None:
    """The decoder process's main loop: run each call that arrives on socket ``fd``; not public.

    Returns when the server closes its end.
    """
    # Ctrl-C reaches the whole process group: the server stops its decoders itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with socket.socket(fileno=fd) as sock:
        while True:
            try:
                function, args = _receive(sock)
            except EOFError:
                return
            # Out-of-band bytes arrive as memoryviews; the functions get the bytes they were
            # given (a copy here costs the server nothing, and `in` on a memoryview crawls).
            args = tuple(bytes(arg) if isinstance(arg, memoryview) else arg for arg in args)
            try:
                outcome: tuple[bool, Any] = (True, function(*args))
            except Exception as error:
                outcome = (False, error)
            try:
                _send(sock, outcome)
            except (pickle.PickleError, TypeError, AttributeError):  # an unpicklable error
                _send(sock, (False, RuntimeError(traceback.format_exc())))
            except OSError:  # the server has gone
                return


# -- the pool the server uses --------------------------------------------------------------

_POOL = DecoderPool(
    # One process per two cores, at most two: the loop needs a core of its own, and decodes are
    # bounded by max_json_size, so more of them would only compete for the same cores.
    workers=max(1, min(2, (os.cpu_count() or 2) // 2)),
    # Bounded by bytes, so that many clients sending images as JSON (0.7 MB a 224x224 picture)
    # wait their turn while a few sending 30 MB documents are refused early: 256 MiB of JSON
    # is about 2 s of decoding in one process (reckoned from the 23 MiB figure above), the
    # longest a decode waits.
    max_pending=1024,
    max_pending_bytes=256 << 20,
)
_users = 0


def decode_soon(size: int, function: Callable[..., T], *args: Any) -> T | asyncio.Future[T]:
    """``function(*args)`` now if its JSON (``size`` bytes) is small, else a decoder's future.

    Raises:
        QueueFull: The JSON is large, and the pool has as many decodes as it may hold.
    """
    if size < LARGE_JSON:
        return function(*args)
    return _POOL.submit(function, *args, size=size)


def decoder_pool() -> DecoderPool:
    """The process's decoder pool, shared by every server in it."""
    return _POOL


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[DecoderPool]:
    """Use the decoder pool for a server's lifetime; the last server out stops its processes."""
    global _users
    _users += 1
    try:
        yield _POOL
    finally:
        _users -= 1
        if not _users:
            await _POOL.aclose()
