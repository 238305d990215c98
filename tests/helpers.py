"""Shared test helpers: letting tasks settle, and a recording batch function held at a gate."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coserve import Batcher


async def settle(rounds: int = 20) -> None:
    """Let every ready task run until it blocks (deterministic: no wall-clock time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def submit_all(
    batcher: Batcher[int, object], items: range | list[int]
) -> list[asyncio.Task[object]]:
    """A task per item, each submitting it (they queue as soon as the test yields)."""
    return [asyncio.create_task(batcher.submit(i)) for i in items]


class RecordingModel:
    """An async batch function that records each batch (and when it started) and can be held.

    While ``hold()`` is in force, a batch waits at the gate after recording itself, so the test
    can pile up requests behind a busy execution slot and then ``release()`` it.
    """

    def __init__(self, transform: Callable[[int], object] = lambda x: x * 10) -> None:
        self.transform = transform
        self.batches: list[list[int]] = []
        self.started_at: list[float] = []
        self._gate = asyncio.Event()
        self._gate.set()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def seen(self) -> list[int]:
        return [item for batch in self.batches for item in batch]

    async def __call__(self, items: list[int]) -> list[object]:
        self.batches.append(list(items))
        self.started_at.append(asyncio.get_running_loop().time())
        await self._gate.wait()
        return [self.transform(item) for item in items]


class ServerProcess:
    """A real ``coserve serve`` subprocess on a free port, for tests that speak HTTP to it.

    With ``grpc``, it serves gRPC too, on another free port (``grpc_port``); without, none.
    ``command="tfserving"`` runs ``coserve tfserving`` with TF Serving's flags for the ports
    (always with gRPC) instead. ``env`` adds to the environment it runs in.
    """

    def __init__(
        self,
        *args: str,
        grpc: bool = False,
        command: str = "serve",
        env: dict[str, str] | None = None,
    ) -> None:
        import os
        import socket
        import subprocess
        import sys
        import tempfile

        with socket.socket() as probe, socket.socket() as grpc_probe:
            probe.bind(("127.0.0.1", 0))
            grpc_probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
            self.grpc_port = grpc_probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        if command == "tfserving":
            head = [
                "tfserving",
                f"--rest_api_port={self.port}",
                f"--port={self.grpc_port}",
                "--host=127.0.0.1",
            ]
        else:
            grpc_args = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
            head = ["serve", "--port", str(self.port), *grpc_args]
        # A file, not a pipe: a pipe nobody reads would stall a chatty server once it fills.
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        # The tests' folder on the path, so --app can name the test session apps in it.
        tests = os.path.dirname(os.path.abspath(__file__))
        path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coserve.cli",
                *head,
                *args,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONPATH": path},
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll readiness until the models are loaded (start-up takes seconds with TF)."""
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        """Everything the server has printed so far."""
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit status."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        """Stop the server and release its log file."""
        self.stop()
        self.log.close()
