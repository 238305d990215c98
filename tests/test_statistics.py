"""Triton's statistics extension over HTTP: ``GET /v2/models[/{m}[/versions/{v}]]/stats``.

An in-process server (``serve``) and tritonclient's asyncio HTTP client, whose
``get_inference_statistics`` parses the answers (a sync client would block the server's loop).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http.aio as triton_aio
from tritonclient.http import InferInput
from tritonclient.utils import InferenceServerException

from server_models import add_model
from test_protocol import serve

# Batches of up to 4 rows, lingering so that concurrent requests share a batch; a negative
# input makes the model raise (time.sleep refuses it), failing its whole batch.
BATCHED_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 4
max_wait = 0.2
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1]
"""

BATCHED_MODEL = """
import time

def predict(inputs):
    time.sleep(0.01 + float(inputs["x"].min()))
    return {"y": inputs["x"]}
"""

FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def x_input(value: float) -> list[InferInput]:
    tensor = InferInput("x", [1], "FP32")
    tensor.set_data_from_numpy(np.array([value], dtype=np.float32))
    return [tensor]


def only(stats: dict[str, Any]) -> dict[str, Any]:
    assert len(stats["model_stats"]) == 1
    result: dict[str, Any] = stats["model_stats"][0]
    return result


async def test_counts_and_durations_after_n_inferences(tmp_path: Path) -> None:
    """N requests: N successes, one execution each, and plausible, ordered durations."""
    n = 3
    async with (
        serve(tmp_path, "coserve") as (port, _),
        triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client,
    ):
        for _ in range(n):
            await client.infer("slow", x_input(0.01))
        stats = only(await client.get_inference_statistics("slow"))
        versioned = only(await client.get_inference_statistics("slow", "1"))
    assert (stats["name"], stats["version"]) == ("slow", "1")
    assert versioned["inference_count"] == stats["inference_count"] == n
    assert stats["execution_count"] == n  # max_batch_size = 1: one execution per request
    assert stats["last_inference"] > 1_600_000_000_000  # ms since the epoch
    inference = stats["inference_stats"]
    assert set(inference) >= {*FIELDS, "cache_hit", "cache_miss"}
    assert inference["success"]["count"] == inference["compute_infer"]["count"] == n
    assert inference["queue"]["count"] == n
    assert inference["fail"] == {"count": 0, "ns": 0}
    assert inference["compute_input"]["ns"] == inference["compute_output"]["ns"] == 0
    assert inference["compute_infer"]["ns"] >= n * 10_000_000  # each slept 10 ms
    assert inference["compute_infer"]["ns"] <= inference["success"]["ns"]
    assert inference["queue"]["ns"] + inference["compute_infer"]["ns"] <= inference["success"]["ns"]
    [batch] = stats["batch_stats"]
    assert batch["batch_size"] == 1
    assert batch["compute_infer"]["count"] == n
    assert batch["compute_infer"]["ns"] == inference["compute_infer"]["ns"]


async def test_batches_and_failures(tmp_path: Path) -> None:
    """Shared batches count once per execution; a failing request is counted under fail."""
    add_model(tmp_path, "batched", BATCHED_CONFIG, BATCHED_MODEL)
    async with (
        serve(tmp_path, "coserve") as (port, _),
        triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client,
    ):
        await asyncio.gather(*(client.infer("batched", x_input(0.0)) for _ in range(4)))
        with pytest.raises(InferenceServerException):
            await client.infer("batched", x_input(-1.0))
        stats = only(await client.get_inference_statistics("batched"))
    inference = stats["inference_stats"]
    assert stats["inference_count"] == inference["success"]["count"] == 4
    assert inference["fail"]["count"] == 1
    assert inference["fail"]["ns"] > 0
    assert inference["queue"]["count"] == 5  # the failed request was queued too
    batches = stats["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == stats["execution_count"]
    assert stats["execution_count"] < 5  # the four concurrent requests shared batches
    assert all(b["compute_infer"]["ns"] > 0 for b in batches)
    assert inference["compute_infer"]["ns"] <= inference["success"]["ns"]


async def test_all_models_and_unknown_names(tmp_path: Path) -> None:
    """Without a name every loaded version answers; an unknown model or version is a 400."""
    async with (
        serve(tmp_path, "coserve") as (port, repository),
        triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
    ):
        everything = await client.get_inference_statistics()
        metadata = await client.get_server_metadata()
        loaded = [(m.name, m.version) for m in repository.models()]  # before the shutdown
        unknown_model = await http.get("/v2/models/nope/stats")
        unknown_version = await http.get("/v2/models/slow/versions/7/stats")
        with pytest.raises(InferenceServerException) as refused:
            await client.get_inference_statistics("nope")
    names = [(s["name"], s["version"]) for s in everything["model_stats"]]
    assert names == loaded == [("slow", "1"), ("types", "1")]
    idle = everything["model_stats"][0]
    assert idle["last_inference"] == idle["inference_count"] == idle["execution_count"] == 0
    assert idle["batch_stats"] == []
    assert all(idle["inference_stats"][f] == {"count": 0, "ns": 0} for f in FIELDS)
    assert "statistics" in metadata["extensions"]
    assert refused.value.status() == "400"
    for answer in (unknown_model, unknown_version):
        assert answer.status_code == 400
        assert set(answer.json()) == {"error"}
