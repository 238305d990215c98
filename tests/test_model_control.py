"""Triton's model control flags on ``coserve serve``: explicit loading and repository polling.

Two real server processes over Python models (no TensorFlow, so each starts in about a second):
``--model-control-mode explicit --load-model`` serves only the models named, and ``poll``
serves a model folder added while it runs and drops one removed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coserve import InvalidInput
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
        with pytest.raises(InferenceServerException, match=r"a load with files \(file:1/m"):
            client.load_model("types", files={"file:1/model.py": b"x = 1"})
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

            def with_files() -> None:
                client.load_model("types", files={"file:1/model.py": b"x = 1"})

            assert status(with_files, "a load with files") == "StatusCode.UNIMPLEMENTED"

            def bad_config() -> None:
                client.load_model("types", config='{"max_batch_size": "many"}')

            assert status(bad_config, "is not a model config in JSON") == (
                "StatusCode.INVALID_ARGUMENT"
            )
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


TRITON_DATA = Path(__file__).parent / "data" / "triton"

PAIR_ENSEMBLE = """
name: "pair"
platform: "ensemble"
max_batch_size: 8
input [ { name: "A" data_type: TYPE_INT32 dims: [ 16 ] },
        { name: "B" data_type: TYPE_INT32 dims: [ 16 ] } ]
output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 16 ] } ]
ensemble_scheduling {
  step [ {
    model_name: "simple"
    model_version: -1
    input_map { key: "INPUT0" value: "A" }
    input_map { key: "INPUT1" value: "B" }
    output_map { key: "OUTPUT0" value: "SUM" }
  } ]
}
"""


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_load_with_a_config_serves_that_config_until_a_load_without(
    tmp_path: Path, protocol: str
) -> None:
    """Triton's config override: the JSON replaces the folder's config.pbtxt, for that load.

    Loading an ensemble loads the model its step uses, as Triton does.
    """
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    shutil.copytree(TRITON_DATA / "simple", tmp_path / "simple")
    (tmp_path / "pair" / "1").mkdir(parents=True)
    (tmp_path / "pair" / "config.pbtxt").write_text(PAIR_ENSEMBLE)
    server = ServerProcess(
        "--model-repository", str(tmp_path), "--model-control-mode=explicit", grpc=True
    )
    try:
        server.wait_ready()
        assert served(server) == []
        http = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
        client: Any = (
            http if protocol == "http" else triton_grpc.InferenceServerClient(server.grpc_target)
        )
        client.load_model("pair")
        assert sorted(served(server)) == ["pair", "simple"]
        assert "dynamic_batching" not in http.get_model_config("simple")
        override = {
            "name": "simple",
            "platform": "onnxruntime_onnx",
            "max_batch_size": 4,
            "dynamic_batching": {"max_queue_delay_microseconds": 500},
        }
        client.load_model("simple", config=json.dumps(override))
        config = http.get_model_config("simple")
        assert config["max_batch_size"] == 4
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        assert [t["name"] for t in config["input"]] == ["INPUT0", "INPUT1"]  # auto-completed
        wrong = dict(override, name="other")
        with pytest.raises(InferenceServerException, match="must be the model folder's name"):
            client.load_model("simple", config=json.dumps(wrong))
        assert http.get_model_config("simple")["max_batch_size"] == 4  # the last good one
        client.load_model("simple")  # no config: the folder's again
        config = http.get_model_config("simple")
        assert config["max_batch_size"] == 8
        assert "dynamic_batching" not in config
        http.close()
        client.close()
    finally:
        server.close()


def test_a_config_override_must_be_a_model_config_object() -> None:
    from coserve.server._model_control import config_text

    assert "max_batch_size: 4" in config_text("m", '{"max_batch_size": 4}')
    for bad, says in [
        ("[]", "must hold a JSON object"),
        ('{"max_batch_size": "many"}', "is not a model config in JSON"),
        ('{"no_such_field": 1}', "is not a model config in JSON"),
    ]:
        with pytest.raises(InvalidInput, match=says):
            config_text("m", bad)
    with pytest.raises(InvalidInput, match="must be a string"):
        config_text("m", {"max_batch_size": 4})
