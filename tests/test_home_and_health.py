"""First contact: ``GET /`` says what the server is; health answers carry a JSON body too.

The status code stays the answer for tritonclient and Kubernetes; the body (``{"live": true}``,
``{"ready": true}``, a model's name and ``ready``) is for clients that read it, such as the
KServe SDK. A real server in process, real HTTP.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import tritonclient.http.aio as triton_aio

from test_protocol import serve


async def test_the_home_page_names_the_server_its_models_and_its_apis(tmp_path: Path) -> None:
    """``GET /``: the server, whether it is ready, each model's versions, and the API paths."""
    async with serve(tmp_path, "coserve") as (port, _), httpx.AsyncClient() as client:
        home = (await client.get(f"http://127.0.0.1:{port}/")).json()
    assert home["name"] == "coserve"
    assert home["ready"] is True
    assert {"name": "slow", "versions": ["1"]} in home["models"]
    assert {"name": "types", "versions": ["1"]} in home["models"]
    assert home["endpoints"]["inference"] == "POST /v2/models/{model}/infer"
    assert home["endpoints"]["metrics"] == "/metrics"


async def test_health_answers_have_json_bodies_beside_their_status(tmp_path: Path) -> None:
    """live, ready and model ready: the same answer in the body as in the status code."""
    async with serve(tmp_path, "coserve") as (port, _), httpx.AsyncClient() as client:
        base = f"http://127.0.0.1:{port}/v2"
        live = await client.get(f"{base}/health/live")
        ready = await client.get(f"{base}/health/ready")
        model = await client.get(f"{base}/models/types/ready")
        versioned = await client.get(f"{base}/models/types/versions/1/ready")
        missing = await client.get(f"{base}/models/nope/ready")
        # tritonclient reads only the status codes, and still does.
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{port}") as tritonclient:
            assert await tritonclient.is_server_live()
            assert await tritonclient.is_server_ready()
            assert await tritonclient.is_model_ready("types")
            assert not await tritonclient.is_model_ready("nope")
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert (model.status_code, model.json()) == (
        200,
        {"name": "types", "version": "1", "ready": True},
    )
    assert versioned.json()["ready"] is True
    assert (missing.status_code, missing.json()) == (400, {"name": "nope", "ready": False})
