"""coserve on Ray Serve, against a real local Ray cluster started by this module.

``ray.init`` with 4 logical CPUs, no dashboard, usage stats off; Serve's HTTP proxy on a free
loopback port; one replica at half a CPU, running coserve's server on the bundled demo models
with a SQLite session store. Checked through Ray's proxy: concurrent V2 requests are batched
inside the replica; a WebSocket session works and resumes; a replica killed under load is
replaced, and every request sent meanwhile ends (answered, or refused with a status or a
dropped connection) within its timeout: none hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from coserve import ConfigError
from coserve.integrations.ray import (
    DEFAULT_MAX_ONGOING_REQUESTS,
    RayDeployment,
    build_app,
    deployment,
)

IMAGE = [[[[0.25]] * 8] * 8]
BODY = {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": IMAGE}]}


def test_deployment_settings() -> None:
    """What ``serve.deployment`` is given, without a cluster."""
    fixed = RayDeployment(serve_args=("--graceful-timeout", "10"), replicas=3)
    assert fixed.settings() == {
        "name": "coserve",
        "max_ongoing_requests": DEFAULT_MAX_ONGOING_REQUESTS,
        "ray_actor_options": {"num_cpus": 1.0},
        "graceful_shutdown_timeout_s": 15.0,
        "num_replicas": 3,
    }
    scaled = RayDeployment(min_replicas=1, max_replicas=4, target_ongoing_requests=32)
    assert scaled.settings()["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 32,
    }
    assert "num_replicas" not in scaled.settings()
    for bad, match in (
        ({"serve_args": ("--workers", "2")}, "replicas take the place"),
        ({"serve_args": ("--no-such-flag",)}, "bad coserve serve flags"),
        ({"min_replicas": 2}, "both min_replicas and max_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "min_replicas <= max_replicas"),
        ({"max_ongoing_requests": 0}, "must be > 0"),
    ):
        with pytest.raises(ConfigError, match=match):
            RayDeployment(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown build_app keys: colour"):
        build_app({"colour": "red"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def ray_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray import serve

    port = free_port()
    store = tmp_path_factory.mktemp("ray") / "sessions.db"
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray-temp")),
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = RayDeployment(
            serve_args=("--session-store", f"sqlite:{store}", "--graceful-timeout", "5"),
            num_cpus=0.5,
        )
        serve.run(deployment(config), name="coserve", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def batch_rows(metrics: str) -> tuple[float, float]:
    """Rows and batches of the digits model, from coserve's /metrics."""
    pattern = r'^coserve_batch_size_(sum|count)\{model="digits",version="1"\} (\S+)$'
    found = {m.group(1): float(m.group(2)) for m in re.finditer(pattern, metrics, re.MULTILINE)}
    return found["sum"], found["count"]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_requests_are_batched_inside_the_replica(ray_url: str) -> None:
    async with httpx.AsyncClient(base_url=ray_url, timeout=60) as client:
        before = batch_rows((await client.get("/metrics")).text)
        answers = await asyncio.gather(
            *(client.post("/v2/models/digits/infer", json=BODY) for _ in range(64))
        )
        assert [a.status_code for a in answers] == [200] * 64
        assert answers[0].json()["outputs"][0]["name"] == "probabilities"
        after = batch_rows((await client.get("/metrics")).text)
    rows, batches = after[0] - before[0], after[1] - before[1]
    assert rows == 64
    assert rows / batches > 1, f"{rows} rows in {batches} batches: nothing was batched"


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_session_works_through_the_proxy(ray_url: str) -> None:
    url = ray_url.replace("http://", "ws://") + "/sessions/digits"
    async with websockets.connect(url) as socket:
        hello = json.loads(await socket.recv())
        assert hello["event"] == "session"
        await socket.send(json.dumps({"id": 1, "command": "correct", "digit": 4}))
        assert json.loads(await socket.recv())["number"] == "4"
    async with websockets.connect(f"{url}?resume={hello['resume']}") as socket:
        again = json.loads(await socket.recv())
        assert again["resumed"] is True
        await socket.send(json.dumps({"command": "correct", "digit": 2}))
        assert json.loads(await socket.recv())["number"] == "2"


def replica_actors() -> list[Any]:
    import ray

    return [
        ray.get_actor(actor["name"], namespace=actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if "SERVE_REPLICA" in actor["name"] and "coserve" in actor["name"]
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_killed_replica_is_replaced_and_nothing_hangs(ray_url: str) -> None:
    import ray

    (replica,) = replica_actors()
    outcomes: list[str] = []
    stop = asyncio.Event()

    async def load(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                answer = await client.post("/v2/models/digits/infer", json=BODY)
                outcomes.append(str(answer.status_code))
            except httpx.TimeoutException:
                outcomes.append("timeout")
            except httpx.TransportError:
                outcomes.append("dropped")

    async with httpx.AsyncClient(base_url=ray_url, timeout=30) as client:
        workers = [asyncio.create_task(load(client)) for _ in range(16)]
        while len(outcomes) < 50:  # noqa: ASYNC110 - polling the load's own progress
            await asyncio.sleep(0.05)
        ray.kill(replica, no_restart=True)
        killed_at = len(outcomes)
        deadline = time.monotonic() + 120
        while True:  # the replacement answers again
            await asyncio.sleep(0.5)
            recent = outcomes[killed_at:]
            if recent[-10:] == ["200"] * 10 and len(recent) > 20:
                break
            assert time.monotonic() < deadline, f"no recovery: {recent[-20:]}"
        stop.set()
        await asyncio.gather(*workers)
    assert "timeout" not in outcomes
    failed = set(outcomes) - {"200"}
    # Ray's proxy answers 500/503 for requests its replica died under; retryable.
    assert failed <= {"500", "502", "503", "dropped"}, failed
    (replacement,) = replica_actors()
    assert replacement._actor_id != replica._actor_id
