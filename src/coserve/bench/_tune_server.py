"""What ``coserve tune`` drives: the admin API of a running server, and servers it starts.

The admin API (``coserve serve --admin``) changes a model's batching live, so most of the space
is swept without a restart; only a change of worker count needs a new server, which
:class:`ManagedServer` starts on a free port and stops again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coserve._exceptions import CoserveError
from coserve.bench._payload import Target

__all__ = ["AdminClient", "AdminRefusedError", "ManagedServer"]

TUNED_OPTIONS = ("max_batch_size", "max_wait", "max_concurrent_batches")
"""The options tune changes, and so restores."""


class AdminRefusedError(CoserveError):
    """The admin API refused a change (a 400: a value out of range or above the loaded one)."""


class AdminClient:
    """GET and POST one model version's batching options through the admin API."""

    def __init__(self, target: Target, *, timeout: float = 15.0) -> None:
        version = f"/versions/{target.version}" if target.version else ""
        self.url = f"{target.base_url}/v2/admin/models/{target.model}{version}/batching"
        self._timeout = timeout

    def _call(self, body: bytes | None) -> dict[str, Any]:
        # No Origin header (urllib sends none): the admin API refuses browsers' requests.
        request = urllib.request.Request(
            self.url,
            data=body,
            method="GET" if body is None else "POST",
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            message = _error_text(error)
            if error.code == 404 and "model" not in message.lower():
                raise CoserveError(
                    f"{self.url}: no admin API (start the server with coserve serve --admin)"
                ) from None
            if error.code == 400:
                raise AdminRefusedError(message) from None
            raise CoserveError(f"{self.url}: {error.code} {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise CoserveError(f"{self.url}: {getattr(error, 'reason', error)}") from None
        options = answer.get("batching") if isinstance(answer, dict) else None
        if not isinstance(options, dict):
            raise CoserveError(f"{self.url}: the answer has no batching options")
        return options

    def get(self) -> dict[str, Any]:
        """The batching options in force."""
        return self._call(None)

    def set(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``options`` (live, on every worker); returns the options now in force.

        Raises:
            AdminRefusedError: A value the model does not accept; nothing changed.
            CoserveError: The server could not be reached or failed.
        """
        return self._call(json.dumps(dict(options)).encode())


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read())
    except (OSError, ValueError):
        return str(error.reason)
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(error.reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ManagedServer:
    """``coserve serve --admin --workers N`` on free loopback ports, for one worker count."""

    def __init__(
        self,
        repository: Path,
        workers: int,
        *,
        grpc: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.workers = workers
        self.port = _free_port()
        self.grpc_port = _free_port() if grpc else None
        self.url = f"http://127.0.0.1:{self.port}"
        grpc_args = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        command = [
            sys.executable,
            "-m",
            "coserve.cli",
            "serve",
            "--model-repository",
            str(repository),
            "--admin",
            "--workers",
            str(workers),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *grpc_args,
            "--log-level",
            "warning",
            *extra_args,
        ]
        # A file, not a pipe: a pipe nobody reads would stall the server once it fills.
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, text=True, env=dict(os.environ)
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll readiness until every worker's models are loaded.

        Raises:
            CoserveError: The server exited, or was not ready in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise CoserveError(f"coserve serve exited early:\n{self.output()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise CoserveError(f"coserve serve was not ready after {timeout:.0f}s")

    def output(self) -> str:
        """What the server printed."""
        self._log.seek(0)
        return self._log.read()

    def close(self) -> None:
        """SIGTERM, wait (a kill after 30 s), release the log."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        with contextlib.suppress(OSError):
            self._log.close()
