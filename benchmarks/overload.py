"""Overload and abuse: goodput past the queue bound, slowloris, big bodies, non-readers, SIGTERM.

Runs a real ``coserve serve`` (the bundled digits SavedModel) and, against it:

A. **Overload**: ``wrk`` (no back-off: each connection sends its next request as soon as it has
   an answer) at 0.5, 1, 1.5, 2, 4 and 10 times the queue bound of concurrent connections, with
   the default config (``max_queue_size = 1024``) and with ``max_queue_size = 16``. Goodput is
   200 answers per second over the whole run; the accepted p50/p99 are read from the server's
   own latency histogram (status 200, from its head parsed to its answer sent) over the steady
   state (from 3 s in to the end), and wrk's p99 over every answer is shown beside it (it
   includes the time a held connection's request waits in the kernel).
B. **Slowloris**: 10,000 connections that send a partial head and then a byte now and then
   (half on the inference path, half on ``GET /v2``), with wrk's 64 legitimate connections
   alongside; the share of wrk's requests answered 200, against a run without the attack.
C. **Big bodies**: one client streaming 24 MiB JSON inference bodies while wrk sends small
   requests on 16 connections; their p50 against a run without the big client.
D. **Non-readers**: one client pipelining requests without reading the answers, on the
   inference path and on ``GET /v2/models/digits``, for 10 s each; the server's RSS growth.
E. **SIGTERM under keep-alive load**: 64 keep-alive clients (asyncio, each sending its next
   request as soon as it has an answer; wrk cannot tell a lost request from a refused
   reconnection), one worker and two; the server is sent SIGTERM after 3 s; a client whose
   connection closes with a request outstanding has lost it.

Needs ``apt-get install wrk``. Command: ``make bench-overload`` (``python benchmarks/overload.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "overload.json"
MULTIPLES = (0.5, 1, 1.5, 2, 4, 10)

WRK_SCRIPT = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """``coserve serve`` on a free port, over a repository folder."""

    def __init__(self, repository: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        command = [
            sys.executable,
            "-m",
            "coserve.cli",
            "serve",
            "--no-grpc",
            "--port",
            str(self.port),
        ]
        command += ["--model-repository", str(repository), "--log-level", "warning", *args]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the server did not become ready")

    def output(self) -> str:
        """The end of the server's log."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def accepted(self) -> list[tuple[float, float]]:
        """The cumulative (upper bound, count) buckets of 200 answers for digits."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        pattern = (
            r'^coserve_request_duration_seconds_bucket\{le="([^"]+)",model="digits",'
            r'protocol="http",status="200",version="1"\} (\S+)$'
        )
        return [(float(le), float(count)) for le, count in re.findall(pattern, text, re.M)]

    def stop(self) -> int:
        """SIGTERM; the exit status (SIGKILL after 60 s)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self.log.close()
        return status


def quantile(
    before: list[tuple[float, float]], after: list[tuple[float, float]], q: float
) -> float:
    """The q-quantile of the observations between two histogram reads, interpolated (in ms)."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1]
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, count in counts:
        if count >= rank:
            if le == float("inf"):
                return lower * 1e3
            return (lower + (le - lower) * (rank - below) / max(count - below, 1)) * 1e3
        lower, below = le, count
    return lower * 1e3


def start_wrk(
    url: str, connections: int, seconds: int, body: Path, script: Path
) -> subprocess.Popen[str]:
    env = {**os.environ, "BODY_FILE": str(body)}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "30s"]
    return subprocess.Popen(
        [*command, "-s", str(script), url], stdout=subprocess.PIPE, text=True, env=env
    )


def run_wrk(url: str, connections: int, seconds: int, body: Path, script: Path) -> dict[str, Any]:
    output, _ = start_wrk(url, connections, seconds, body, script).communicate()
    return parse_wrk(output)


def parse_wrk(output: str) -> dict[str, Any]:
    def duration(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    def number(pattern: str) -> float:
        found = re.search(pattern, output, re.M)
        return float(found.group(1)) if found else 0.0

    seconds = number(r"requests in ([\d.]+)s")
    total = int(number(r"(\d+) requests in"))
    bad = int(number(r"Non-2xx or 3xx responses: (\d+)"))
    sockets = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    connect, read, write, timeouts = (int(x) for x in sockets.groups()) if sockets else (0,) * 4
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    return {
        "requests": total,
        "ok": total - bad,
        "goodput": (total - bad) / seconds if seconds else 0.0,
        "refused": bad,
        "connect_errors": connect,
        "lost": read + write + timeouts,
        "p50_ms": duration(p50.group(1)) if p50 else float("nan"),
        "p99_ms": duration(p99.group(1)) if p99 else float("nan"),
    }


def repository(folder: Path, max_queue_size: int) -> Path:
    from coserve.models import bundled_repository

    target = folder / f"models-q{max_queue_size}"
    if target.exists():
        return target
    shutil.copytree(bundled_repository() / "digits", target / "digits")
    config = target / "digits" / "config.toml"
    text = config.read_text()
    config.write_text(text.replace("max_queue_size = 1024", f"max_queue_size = {max_queue_size}"))
    return target


def request_body(folder: Path, rows: int = 1) -> Path:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:rows] / 16.0).astype(np.float32)[..., None]
    tensor = {"name": "image", "shape": list(images.shape), "datatype": "FP32"}
    path = folder / f"request-{rows}.json"
    path.write_text(json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]}))
    return path


# -- A. overload ------------------------------------------------------------------------------


def overload(folder: Path, body: Path, script: Path, seconds: int) -> list[dict[str, Any]]:
    rows = []
    for queue in (1024, 16):
        server = Server(repository(folder, queue), "--limit-connections", "19000")
        url = f"{server.url}/v2/models/digits/infer"
        try:
            run_wrk(url, 64, 2, body, script)  # warm-up
            for multiple in MULTIPLES:
                connections = max(1, int(queue * multiple))
                load = start_wrk(url, connections, seconds, body, script)
                # The accepted latency in the steady state: past the opening burst, when every
                # connection sends at once and the first queue-full are admitted behind the
                # refusals of all the others (at 10x, 9,216 of them in one go).
                time.sleep(min(3, seconds / 3))
                before = server.accepted()
                result = parse_wrk(load.communicate()[0])
                after = server.accepted()
                result.update(
                    queue=queue,
                    multiple=multiple,
                    connections=connections,
                    accepted_p50_ms=quantile(before, after, 0.5),
                    accepted_p99_ms=quantile(before, after, 0.99),
                    rss_mib=rss_mib(server.process.pid),
                )
                print(json.dumps(result), flush=True)
                rows.append(result)
        finally:
            server.stop()
    return rows


# -- B. slowloris -----------------------------------------------------------------------------

SLOWLORIS = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
heads = [
    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n",
    b"GET /v2 HTTP/1.1\r\nHost: x\r\n",
]
held = 0
async def one(i):
    global held
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:  # when the server closes it, open another
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        writer.write(heads[i % 2])
        held += 1
        try:
            while loop.time() < end:
                try:  # the server answers (408) and closes, or the attacker sends a bit more
                    await asyncio.wait_for(reader.read(), 2)
                    break
                except asyncio.TimeoutError:
                    writer.write(b"X-a: b\r\n")
        except OSError:
            pass
        finally:
            held -= 1
            writer.close()
async def main():
    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    await asyncio.sleep(seconds / 2)
    print("held", held, flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
"""


def slowloris(folder: Path, body: Path, script: Path, seconds: int) -> dict[str, Any]:
    server = Server(repository(folder, 1024), "--limit-connections", "19000")
    url = f"{server.url}/v2/models/digits/infer"
    try:
        run_wrk(url, 64, 2, body, script)
        quiet = run_wrk(url, 64, seconds, body, script)
        attack = subprocess.Popen(
            [sys.executable, "-c", SLOWLORIS, str(server.port), "10000", str(seconds + 25)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(15)  # the 10,000 connections are open, and some have timed out already
        attacked = run_wrk(url, 64, seconds, body, script)
        attack.wait()
        held = attack.stdout.read() if attack.stdout else ""
    finally:
        server.stop()
    result = {
        "quiet": quiet,
        "attacked": attacked,
        "attacker": held.strip(),
        "served_share": attacked["ok"] / max(attacked["requests"] + attacked["lost"], 1),
        "goodput_ratio": attacked["goodput"] / quiet["goodput"],
    }
    print(json.dumps(result), flush=True)
    return result


# -- C. big bodies ----------------------------------------------------------------------------


def big_bodies(folder: Path, body: Path, script: Path, seconds: int) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    # 36 copies of the 1,797 digits: 64,692 rows (the most is 65,536) in a 23.5 MiB JSON body,
    # under the 32 MiB JSON limit.
    images = np.tile(load_digits().images / 16.0, (36, 1, 1)).astype(np.float32)[..., None]
    big = folder / "big.json"
    big.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": list(images.shape),
                        "datatype": "FP32",
                        "data": images.ravel().tolist(),
                    }
                ]
            }
        )
    )
    size = big.stat().st_size
    server = Server(repository(folder, 1024))
    url = f"{server.url}/v2/models/digits/infer"
    try:
        run_wrk(url, 16, 2, body, script)
        quiet = run_wrk(url, 16, seconds, body, script)
        stop = time.monotonic() + seconds + 4
        streamer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import httpx, sys, time\n"
                "data = open(sys.argv[2], 'rb').read(); n = 0\n"
                "with httpx.Client(timeout=120) as client:\n"
                "    while time.monotonic() < float(sys.argv[3]):\n"
                "        r = client.post(sys.argv[1], content=data,"
                " headers={'content-type': 'application/json'})\n"
                "        n += r.status_code == 200\n"
                "print(n)",
                url,
                str(big),
                str(stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)
        loaded = run_wrk(url, 16, seconds, body, script)
        streamer.wait()
        served = int((streamer.stdout.read() if streamer.stdout else "0").strip() or 0)
    finally:
        server.stop()
    result = {"body_mib": size / 2**20, "quiet": quiet, "loaded": loaded, "big_served": served}
    print(json.dumps(result), flush=True)
    return result


# -- D. non-readers ---------------------------------------------------------------------------


async def pipeline_without_reading(port: int, request: bytes, seconds: float) -> int:
    _, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    sent = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            writer.write(request * 64)
            sent += 64
            try:
                await asyncio.wait_for(writer.drain(), timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break  # the server has stopped reading: the client's sends back up
    finally:
        writer.transport.abort()
    return sent


def non_readers(folder: Path, body: Path, seconds: int) -> list[dict[str, Any]]:
    server = Server(repository(folder, 1024))
    text = body.read_bytes()
    requests = {
        "inference": (
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
        ),
        "metadata GET": b"GET /v2/models/digits HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    rows = []
    try:
        for name, request in requests.items():
            before = rss_mib(server.process.pid)
            sent = asyncio.run(pipeline_without_reading(server.port, request, seconds))
            peak = rss_mib(server.process.pid)
            rows.append({"route": name, "sent": sent, "rss_before": before, "rss_after": peak})
            print(json.dumps(rows[-1]), flush=True)
            time.sleep(1)
    finally:
        server.stop()
    return rows


# -- E. SIGTERM -------------------------------------------------------------------------------


async def keep_alive_load(port: int, request: bytes, connections: int, after: float) -> dict:
    """Keep-alive clients that each send a request as soon as the last is answered.

    Stops each client at an answer carrying ``Connection: close``; a client whose connection
    closes with a request outstanding has lost it. SIGTERM goes to the server ``after`` s.
    """
    sent = answered = lost = 0

    async def client() -> None:
        nonlocal sent, answered, lost
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                writer.write(request)
                sent += 1
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).lower()
                    length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    lost += 1
                    return
                answered += head.startswith(b"http/1.1 200")
                if b"connection: close" in head:
                    return
        finally:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(connections)]
    await asyncio.sleep(after)
    return {"tasks": tasks, "counts": lambda: {"sent": sent, "ok": answered, "lost": lost}}


async def stop_under_load(server: Server, request: bytes) -> dict[str, Any]:
    load = await keep_alive_load(server.port, request, 64, 3.0)
    status = await asyncio.to_thread(server.stop)
    await asyncio.wait_for(asyncio.gather(*load["tasks"]), 60)
    return {**load["counts"](), "exit_status": status}


def sigterm(folder: Path, body: Path) -> dict[str, Any]:
    text = body.read_bytes()
    request = (
        b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(text), text)
    )
    rows = {}
    for workers in ("1", "2"):
        server = Server(repository(folder, 1024), "--workers", workers)

        rows[workers] = asyncio.run(stop_under_load(server, request))
        print(json.dumps({"workers": workers, **rows[workers]}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--only", choices=["overload", "slowloris", "big", "nonreaders", "sigterm"], default=None
    )
    opts = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # wrk inherits it
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        body = request_body(folder)
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT)
        todo = {
            "overload": lambda: overload(folder, body, script, opts.seconds),
            "slowloris": lambda: slowloris(folder, body, script, opts.seconds),
            "big": lambda: big_bodies(folder, body, script, opts.seconds),
            "nonreaders": lambda: non_readers(folder, body, opts.seconds),
            "sigterm": lambda: sigterm(folder, body),
        }
        for name, run in todo.items():
            if opts.only in (None, name):
                results[name] = run()
    RESULTS.parent.mkdir(exist_ok=True)
    if opts.only and RESULTS.exists():  # one part re-run: keep the others' last results
        results = {**json.loads(RESULTS.read_text()), **results}
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
