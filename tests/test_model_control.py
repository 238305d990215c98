"""Triton's model control flags on ``coserve serve``: explicit loading and repository polling.

Two real server processes over Python models (no TensorFlow, so each starts in about a second):
``--model-control-mode explicit --load-model`` serves only the models named, and ``poll``
serves a model folder added while it runs and drops one removed.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess
from server_models import SLOW_CONFIG, SLOW_MODEL, TYPES_CONFIG, TYPES_MODEL, add_model

pytestmark = pytest.mark.slow


def served(server: ServerProcess) -> list[str]:
    return [m["name"] for m in httpx.get(f"{server.url}/", timeout=10).json()["models"]]


def test_explicit_mode_loads_only_the_models_named(tmp_path: Path) -> None:
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    add_model(tmp_path, "slow", SLOW_CONFIG, SLOW_MODEL)
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "slow",
    )
    try:
        server.wait_ready()
        assert served(server) == ["slow"]
        assert httpx.get(f"{server.url}/v2/models/types/ready").status_code == 400
    finally:
        server.close()


def test_explicit_mode_refuses_a_model_that_is_not_there(tmp_path: Path) -> None:
    """--load-model naming no folder stops the server at start, naming it (exit 2)."""
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--model-control-mode=explicit",
        "--load-model=nope",
    )
    try:
        assert server.process.wait(timeout=60) == 2
        assert "--load-model nope: no such model folder" in server.output()
    finally:
        server.close()


def test_poll_mode_follows_the_repository(tmp_path: Path) -> None:
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.2",
    )
    try:
        server.wait_ready()
        assert served(server) == ["types"]
        add_model(tmp_path, "slow", SLOW_CONFIG, SLOW_MODEL)
        shutil.rmtree(tmp_path / "types")
        deadline = time.monotonic() + 60
        while served(server) != ["slow"]:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        answer = httpx.post(
            f"{server.url}/v2/models/slow/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    finally:
        server.close()


def test_load_model_needs_explicit_mode() -> None:
    server = ServerProcess("--load-model", "types")
    try:
        assert server.process.wait(timeout=60) == 2
        assert "--load-model needs --model-control-mode explicit" in server.output()
    finally:
        server.close()


def test_exit_on_error_stops_the_server_naming_what_failed(tmp_path: Path) -> None:
    """--exit-on-error: a folder that cannot be served fails the start (non-zero), named."""
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "config.toml").write_text('platform = "nope"\n')
    server = ServerProcess("--model-repository", str(tmp_path), "--exit-on-error")
    try:
        assert server.process.wait(timeout=60) != 0
        output = server.output()
        assert "--exit-on-error: not served: broken" in output
        assert "'nope' is not one of" in output  # and the log says why
    finally:
        server.close()
    # Without the flag the same repository serves what it can.
    server = ServerProcess("--model-repository", str(tmp_path))
    try:
        server.wait_ready()
        assert served(server) == ["types"]
    finally:
        server.close()


def test_strict_model_config_refuses_to_auto_complete(tmp_path: Path) -> None:
    """--strict-model-config: a Triton folder with no config.pbtxt is not served."""
    shutil.copytree(
        Path(__file__).parent / "data" / "triton" / "simple_no_config", tmp_path / "simple"
    )
    server = ServerProcess(
        "--model-repository", str(tmp_path), "--strict-model-config", "--exit-on-error"
    )
    try:
        assert server.process.wait(timeout=60) != 0
        assert "--strict-model-config allows no auto-complete" in server.output()
    finally:
        server.close()


def test_the_repository_api_loads_and_unloads_in_explicit_mode(tmp_path: Path) -> None:
    """The load_model, unload_model and get_model_repository_index of tritonclient work."""
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    add_model(tmp_path, "slow", SLOW_CONFIG, SLOW_MODEL)
    server = ServerProcess(
        "--model-repository", str(tmp_path), "--model-control-mode=explicit", "--load-model=types"
    )
    try:
        server.wait_ready()
        client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        index = {entry["name"]: entry for entry in client.get_model_repository_index()}
        assert index["types"]["state"] == "READY"
        assert index["slow"] == {"name": "slow", "state": "UNAVAILABLE", "reason": "unloaded"}
        ready = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()
        assert [e["name"] for e in ready] == ["types"]
        client.load_model("slow")
        assert client.is_model_ready("slow")
        client.unload_model("types")
        assert not client.is_model_ready("types")
        assert served(server) == ["slow"]
        with pytest.raises(InferenceServerException, match="no such model folder"):
            client.load_model("nope")
        with pytest.raises(InferenceServerException, match="config or files override"):
            client.load_model("types", config='{"max_batch_size": 4}')
        client.close()
    finally:
        server.close()


def test_load_and_unload_need_explicit_mode(tmp_path: Path) -> None:
    """In the default mode the index answers, and a load is refused saying which mode allows it."""
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    server = ServerProcess("--model-repository", str(tmp_path))
    try:
        server.wait_ready()
        index = httpx.post(f"{server.url}/v2/repository/index", timeout=10)
        assert index.json() == [{"name": "types", "version": "1", "state": "READY"}]
        refused = httpx.post(f"{server.url}/v2/repository/models/types/unload", timeout=10)
        assert refused.status_code == 501
        assert "--model-control-mode explicit" in refused.json()["error"]
        assert served(server) == ["types"]
    finally:
        server.close()


def test_the_grpc_repository_rpcs_load_and_unload_in_explicit_mode(tmp_path: Path) -> None:
    """tritonclient.grpc's load_model, unload_model and index: HTTP's semantics and errors."""
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    def status(call: Callable[[], object], text: str) -> str:
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert text in str(raised.value.message())
        return str(raised.value.status())

    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    add_model(tmp_path, "slow", SLOW_CONFIG, SLOW_MODEL)
    server = ServerProcess(
        "--model-repository",
        str(tmp_path),
        "--model-control-mode=explicit",
        "--load-model=types",
        grpc=True,
    )
    try:
        server.wait_ready()
        with triton_grpc.InferenceServerClient(server.grpc_target) as client:
            index = {m.name: m for m in client.get_model_repository_index().models}
            assert (index["types"].version, index["types"].state) == ("1", "READY")
            slow = index["slow"]
            assert (slow.version, slow.state, slow.reason) == ("", "UNAVAILABLE", "unloaded")
            client.load_model("slow")
            assert client.is_model_ready("slow")
            assert sorted(served(server)) == ["slow", "types"]
            client.unload_model("types")
            assert not client.is_model_ready("types")
            assert served(server) == ["slow"]
            assert [m.name for m in client.get_model_repository_index().models] == [
                "slow",
                "types",
            ]
            assert status(lambda: client.load_model("nope"), "no such model folder") == (
                "StatusCode.INVALID_ARGUMENT"
            )

            def override() -> None:
                client.load_model("types", config='{"max_batch_size": 4}')

            assert status(override, "config or files override") == "StatusCode.UNIMPLEMENTED"
            assert status(lambda: client.unload_model("types"), "it is not loaded") == (
                "StatusCode.NOT_FOUND"
            )
            assert served(server) == ["slow"]
    finally:
        server.close()


def test_a_load_of_a_loaded_model_reloads_it(tmp_path: Path) -> None:
    """As Triton: load on a served model picks up its new files; a failed one is a 400."""
    add_model(tmp_path, "slow", SLOW_CONFIG, SLOW_MODEL)
    model = tmp_path / "slow" / "1" / "model.py"
    server = ServerProcess(
        "--model-repository", str(tmp_path), "--model-control-mode=explicit", "--load-model=slow"
    )

    def answer() -> float:
        response = httpx.post(
            f"{server.url}/v2/models/slow/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]},
            timeout=10,
        )
        return float(response.json()["outputs"][0]["data"][0])

    try:
        server.wait_ready()
        assert answer() == 0.0
        model.write_text(SLOW_MODEL.replace('{"y": inputs["x"]}', '{"y": inputs["x"] + 7}'))
        assert httpx.post(f"{server.url}/v2/repository/models/slow/load").status_code == 200
        assert answer() == 7.0
        model.write_text("this is not python\n")
        failed = httpx.post(f"{server.url}/v2/repository/models/slow/load")
        assert failed.status_code == 400
        assert answer() == 7.0  # the loaded version keeps serving
    finally:
        server.close()


def test_explicit_mode_refuses_several_workers(tmp_path: Path) -> None:
    add_model(tmp_path, "types", TYPES_CONFIG, TYPES_MODEL)
    server = ServerProcess(
        "--model-repository", str(tmp_path), "--model-control-mode=explicit", "--workers=2"
    )
    try:
        assert server.process.wait(timeout=60) == 2
        assert "drop --workers" in server.output()
    finally:
        server.close()
