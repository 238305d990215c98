"""Client JSON is bounded: nesting (400, never a traceback), size (413), time on the event loop.

Every JSON route is covered: V2 inference on both HTTP protocols (coserve's native path and plain
uvicorn's, the ASGI path), TensorFlow Serving's ``:predict``, the V2 WebSocket, and (against a
real ``coserve serve``) the digit assistant's session messages. Nesting depths straddle each
limit that matters: 32 (the most dimensions a tensor may have), 64 (numpy's), ~500 (where a
recursive walk met Python's recursion limit), 1024 (orjson's own).

A large JSON body is decoded in a decoder process. These tests stop that process (SIGSTOP), so
a decode cannot finish until they let it, and check what the server does meanwhile: no timing.

The measurements behind the decoder processes are in ``coserve.server._decoding``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from coserve._exceptions import QueueFull
from coserve.server._decoding import LARGE_JSON, DecoderPool, decoder_pool
from coserve.server._limits import ServerLimits
from helpers import ServerProcess
from test_protocol import PROTOCOLS, wait_until
from test_protocol import serve as serve_app

DEEP = [33, 64, 500, 1000, 1100]
"""Nesting depths that no tensor has: over 32 dimensions, over numpy's 64, over orjson's 1024."""


MODELS = {
    # Rows of any width: one row can carry megabytes.
    "wide": (
        'platform = "python"\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, -1]\n'
        '[[outputs]]\nname = "y"\ndatatype = "FP32"\nshape = [-1, -1]\n',
        'def predict(inputs):\n    return {"y": inputs["x"]}\n',
    ),
    "words": (
        'platform = "python"\n'
        '[[inputs]]\nname = "text"\ndatatype = "BYTES"\nshape = [-1, -1]\n'
        '[[outputs]]\nname = "count"\ndatatype = "INT32"\nshape = [-1]\n',
        "import numpy as np\n\n"
        "def predict(inputs):\n"
        '    return {"count": np.array([row.size for row in inputs["text"]], dtype=np.int32)}\n',
    ),
}


@contextlib.asynccontextmanager
async def serve(folder: Path, protocol: str, **limits: int) -> AsyncIterator[str]:
    """An in-process server on ``protocol`` with the Python test models; yields its URL.

    Besides the shared models, ``MODELS``: 'wide' (FP32) and 'words' (BYTES) take one row of
    any width.
    """
    for name, (config, model) in MODELS.items():
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "config.toml").write_text(config)
        (folder / name / "1" / "model.py").write_text(model)
    async with serve_app(folder, protocol, limits=ServerLimits(**limits)) as (port, _):
        yield f"127.0.0.1:{port}"


def nested(depth: int, leaf: str = "0") -> str:
    """A JSON value: ``leaf`` inside ``depth`` arrays."""
    return "[" * depth + leaf + "]" * depth


def v2_bodies(depth: int) -> dict[str, str]:
    """V2 requests with JSON nested ``depth`` levels (at ``@``) in each place a client can."""
    tensor = '{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]'
    templates = {
        "data": '{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": @}]}',
        "BYTES data": '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
        '"data": @}]}',
        "parameters": '{"inputs": [' + tensor + '}], "parameters": {"timeout": @}}',
        "input parameters": '{"inputs": [' + tensor + ', "parameters": {"binary_data_size": @}}]}',
        "outputs": '{"inputs": [' + tensor + '}], "outputs": [{"name": "y", "parameters": @}]}',
    }
    leaves = {"BYTES data": '"a"'}
    return {
        where: template.replace("@", nested(depth, leaves.get(where, "0")))
        for where, template in templates.items()
    }


def tfserving_bodies(depth: int) -> dict[str, str]:
    """TF Serving predict requests nested ``depth`` levels: in values, in b64 objects."""
    b64 = '{"b64": "YQ=="}'
    return {
        "instances": '{"instances": @}'.replace("@", nested(depth)),
        "inputs": '{"inputs": @}'.replace("@", nested(depth)),
        "named inputs": '{"inputs": {"x": @}}'.replace("@", nested(depth)),
        "b64 in instances": '{"instances": @}'.replace("@", nested(depth, b64)),
        "b64 in named rows": '{"instances": [{"x": @}]}'.replace("@", nested(depth, b64)),
        "signature_name": '{"inputs": [0], "signature_name": @}'.replace("@", nested(depth)),
    }


def assert_short_client_error(status: int, answer: dict[str, Any], what: str) -> None:
    assert status == 400, f"{what}: {status} {answer}"
    assert len(answer["error"]) < 300, f"{what}: {answer['error']}"


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """No traceback and nothing at error level: client mistakes are not server failures."""
    loud = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud]


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_deep_json_to_v2_inference_is_a_400(
    protocol: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """V2 inference answers JSON nested deeper than a tensor can be with a short 400, quietly."""
    async with serve(tmp_path, protocol) as address, httpx.AsyncClient() as client:
        for depth in DEEP:
            for where, body in v2_bodies(depth).items():
                model = "types" if where == "BYTES data" else "slow"
                answer = await client.post(
                    f"http://{address}/v2/models/{model}/infer", content=body
                )
                assert_short_client_error(answer.status_code, answer.json(), f"{where} {depth}")
        served = await client.post(
            f"http://{address}/v2/models/slow/infer", content=v2_bodies(1)["data"]
        )
        assert served.status_code == 200
    assert_quiet(caplog)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_v2_data_nested_as_deep_as_a_tensor_may_be_is_served(
    protocol: str, tmp_path: Path
) -> None:
    """Nesting within the 32-dimension bound is not refused: 30 levels of data are flattened."""
    async with serve(tmp_path, protocol) as address, httpx.AsyncClient() as client:
        answer = await client.post(
            f"http://{address}/v2/models/slow/infer", content=v2_bodies(30)["data"]
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [0.0]


async def test_deep_json_to_tfserving_predict_is_a_400(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """TF Serving's predict answers deep JSON (values, b64 objects) with a short 400, quietly."""
    async with serve(tmp_path, "coserve") as address, httpx.AsyncClient() as client:
        for depth in [30, *DEEP]:  # 30 deep is a shape the model refuses: a 400 too
            for where, body in tfserving_bodies(depth).items():
                answer = await client.post(f"http://{address}/v1/models/slow:predict", content=body)
                assert_short_client_error(answer.status_code, answer.json(), f"{where} {depth}")
        served = await client.post(
            f"http://{address}/v1/models/slow:predict", content='{"instances": [0.0]}'
        )
        assert served.status_code == 200
        assert served.json() == {"predictions": [0.0]}
    assert_quiet(caplog)


async def test_deep_json_on_the_v2_websocket_is_a_400_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deep JSON on the inference WebSocket gets a 400 answer with its id; the socket stays."""
    async with (
        serve(tmp_path, "coserve") as address,
        websockets.connect(f"ws://{address}/v2/models/slow/infer/ws") as socket,
    ):
        for depth in DEEP:
            for where, body in v2_bodies(depth).items():
                if where == "BYTES data":
                    continue  # another model: the V2 HTTP test covers it
                await socket.send(body.replace('{"inputs"', '{"id": "deep", "inputs"', 1))
                answer = json.loads(await socket.recv())
                assert_short_client_error(answer["status"], answer, f"{where} {depth}")
                # orjson stops reading at its depth limit, before the id: none to echo then
                assert answer["id"] == ("deep" if depth < 1024 else None)
        await socket.send(v2_bodies(1)["data"])
        assert "outputs" in json.loads(await socket.recv())
    assert_quiet(caplog)


@pytest.fixture(scope="module")
def demo_server() -> Iterator[ServerProcess]:
    """A real ``coserve serve`` of the bundled demo: TensorFlow's digits and the digit sessions."""
    process = ServerProcess("--max-json-size", "1MiB")
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


async def test_deep_json_in_digit_session_messages_is_a_400_answer(
    demo_server: ServerProcess,
) -> None:
    """The digit assistant answers deep images with a 400, ignores deep extra fields, carries on."""
    url = demo_server.url.replace("http://", "ws://") + "/sessions/digits"
    async with websockets.connect(url) as socket:
        assert json.loads(await socket.recv())["event"] == "session"
        for depth in [30, *DEEP]:
            await socket.send('{"id": "deep", "image": @}'.replace("@", nested(depth)))
            answer = json.loads(await socket.recv())
            assert_short_client_error(answer["status"], answer, f"image {depth}")
            command = '{"id": "deep", "command": "history", "extra": @}'
            await socket.send(command.replace("@", nested(depth)))
            answer = json.loads(await socket.recv())
            if depth < 1024:  # a key nobody reads is never walked, however deep
                assert answer["history"] == [], answer
            else:  # past orjson's own limit
                assert_short_client_error(answer["status"], answer, f"command {depth}")
        await socket.send(json.dumps({"id": "ok", "image": [[8] * 8] * 8}))
        assert "error" not in json.loads(await socket.recv())
    assert "Traceback" not in demo_server.output()


def test_deep_json_to_a_real_server_logs_no_traceback(demo_server: ServerProcess) -> None:
    """``coserve serve`` answers deep TF Serving and V2 bodies with 400s and logs no traceback."""
    with httpx.Client(base_url=demo_server.url) as client:
        for depth in DEEP:
            for body in tfserving_bodies(depth).values():
                answer = client.post("/v1/models/digits:predict", content=body)
                assert_short_client_error(answer.status_code, answer.json(), body[:40])
            for body in v2_bodies(depth).values():
                answer = client.post("/v2/models/digits/infer", content=body)
                assert_short_client_error(answer.status_code, answer.json(), body[:40])
        assert client.get("/v2/health/ready").status_code == 200
    assert "Traceback" not in demo_server.output()


# -- size -------------------------------------------------------------------------------------

JSON_LIMIT = 64 * 1024


def padded_v2_body(size: int, request_id: str = "big") -> bytes:
    """A valid request for the slow model (0 s) whose JSON is about ``size`` bytes."""
    return json.dumps(
        {
            "id": request_id,
            "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}],
            "parameters": {"padding": [0.5] * (size // 5)},
        }
    ).encode()


def padded_tfserving_body(size: int) -> bytes:
    """A valid predict request for the slow model whose JSON is about ``size`` bytes."""
    return json.dumps({"inputs": [0.0], "padding": [0.5] * (size // 5)}).encode()


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_v2_json_over_max_json_size_is_a_413_that_names_binary_data(
    protocol: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON over max_json_size is refused with 413 and a pointer to the binary tensor extension."""
    async with (
        serve(tmp_path, protocol, max_json_size=JSON_LIMIT) as address,
        httpx.AsyncClient() as client,
    ):
        answer = await client.post(
            f"http://{address}/v2/models/slow/infer", content=padded_v2_body(2 * JSON_LIMIT)
        )
        assert answer.status_code == 413
        assert "Inference-Header-Content-Length" in answer.json()["error"]
        assert "binary" in answer.json()["error"]
        served = await client.post(
            f"http://{address}/v2/models/slow/infer", content=padded_v2_body(JSON_LIMIT // 2)
        )
        assert served.status_code == 200
    assert_quiet(caplog)


def binary_v2_request(
    name: str, datatype: str, shape: list[int], data: bytes
) -> tuple[bytes, dict[str, str]]:
    """A request with one input whose data travels as binary after a small JSON header."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + data, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_numeric_binary_data_beyond_max_json_size_is_served_on_its_fast_path(
    protocol: str, tmp_path: Path
) -> None:
    """Numeric binary data does not count as JSON, and skips the decoder processes: no parse."""
    values = np.arange(1 << 18, dtype="<f4")  # 1 MiB: over the JSON limit, and over LARGE_JSON
    body, headers = binary_v2_request("x", "FP32", [1, values.size], values.tobytes())
    async with (
        serve(tmp_path, protocol, max_json_size=JSON_LIMIT) as address,
        httpx.AsyncClient() as client,
    ):
        decoded_before = decoder_pool().statistics().decoded
        answer = await client.post(
            f"http://{address}/v2/models/wide/infer", content=body, headers=headers
        )
        assert answer.status_code == 200, answer.text
        assert decoder_pool().statistics().decoded == decoded_before
    json_length = int(answer.headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(answer.content[json_length:], "<f4"), values)


async def test_binary_bytes_data_of_many_elements_is_split_off_the_loop(tmp_path: Path) -> None:
    """Binary BYTES data is split element by element, so a large one goes to a decoder process."""
    elements = [b"%d" % i for i in range(100_000)]
    data = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    body, headers = binary_v2_request("text", "BYTES", [1, len(elements)], data)
    async with serve(tmp_path, "coserve") as address, httpx.AsyncClient(timeout=30) as client:
        decoded_before = decoder_pool().statistics().decoded
        answer = await client.post(
            f"http://{address}/v2/models/words/infer", content=body, headers=headers
        )
        assert answer.status_code == 200, answer.text
        assert decoder_pool().statistics().decoded == decoded_before + 1
    json_length = int(answer.headers["inference-header-content-length"])
    assert np.frombuffer(answer.content[json_length:], "<i4").tolist() == [len(elements)]


async def test_tfserving_json_over_max_json_size_is_a_413_that_names_the_v2_api(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A predict body over max_json_size gets 413 saying that V2's binary extension is faster."""
    async with (
        serve(tmp_path, "coserve", max_json_size=JSON_LIMIT) as address,
        httpx.AsyncClient() as client,
    ):
        url = f"http://{address}/v1/models/slow:predict"
        answer = await client.post(url, content=padded_tfserving_body(2 * JSON_LIMIT))
        assert answer.status_code == 413
        assert "V2" in answer.json()["error"]
        assert "Inference-Header-Content-Length" in answer.json()["error"]
        async with httpx.AsyncClient() as another:  # the refused body was never read
            served = await another.post(url, content=padded_tfserving_body(JSON_LIMIT // 2))
        assert served.status_code == 200
    assert_quiet(caplog)


async def test_websocket_message_over_max_json_size_gets_a_413_answer(tmp_path: Path) -> None:
    """A WebSocket message over max_json_size is answered with status 413; the socket stays."""
    async with (
        serve(tmp_path, "coserve", max_json_size=JSON_LIMIT) as address,
        websockets.connect(f"ws://{address}/v2/models/slow/infer/ws") as socket,
    ):
        await socket.send(padded_v2_body(2 * JSON_LIMIT).decode())
        answer = json.loads(await socket.recv())
        assert answer["status"] == 413
        assert "binary" in answer["error"]
        await socket.send(padded_v2_body(100, "small").decode())
        assert json.loads(await socket.recv())["id"] == "small"


# -- decoding off the event loop ----------------------------------------------------------------


@contextlib.contextmanager
def decoders_stopped() -> Iterator[tuple[int, ...]]:
    """SIGSTOP every decoder process (started already); SIGCONT them on the way out."""
    pids = decoder_pool().statistics().workers
    assert pids, "the decoder processes have not started"
    assert os.getpid() not in pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def pending_decodes(count: int) -> None:
    await wait_until(
        lambda: decoder_pool().statistics().pending == count, f"{count} pending decode(s)"
    )


BIG = 4 * LARGE_JSON


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
async def test_large_v2_json_is_decoded_in_another_process_while_others_are_served(
    protocol: str, tmp_path: Path
) -> None:
    """While a large V2 body's decode cannot finish, a small request is answered; then it is."""
    async with serve(tmp_path, protocol) as address, httpx.AsyncClient(timeout=30) as client:
        url = f"http://{address}/v2/models/slow/infer"
        assert (await client.post(url, content=padded_v2_body(BIG))).status_code == 200
        with decoders_stopped():
            big = asyncio.create_task(client.post(url, content=padded_v2_body(BIG)))
            await pending_decodes(1)
            small = await client.post(url, content=padded_v2_body(100, "small"))
            assert small.status_code == 200
            assert small.json()["id"] == "small"
            assert not big.done()
            assert decoder_pool().statistics().pending == 1
        answer = await big
        assert answer.status_code == 200
        assert answer.json()["id"] == "big"


async def test_large_tfserving_json_is_decoded_in_another_process_while_others_are_served(
    tmp_path: Path,
) -> None:
    """While a large predict body's decode cannot finish, a small predict is answered."""
    async with serve(tmp_path, "coserve") as address, httpx.AsyncClient(timeout=30) as client:
        url = f"http://{address}/v1/models/slow:predict"
        assert (await client.post(url, content=padded_tfserving_body(BIG))).status_code == 200
        with decoders_stopped():
            big = asyncio.create_task(client.post(url, content=padded_tfserving_body(BIG)))
            await pending_decodes(1)
            small = await client.post(url, content='{"instances": [0.0]}')
            assert small.status_code == 200
            assert not big.done()
        answer = await big
        assert answer.status_code == 200
        assert answer.json() == {"outputs": [0.0]}


async def test_large_predict_body_decodes_b64_in_the_decoder_process_as_a_small_one_would(
    tmp_path: Path,
) -> None:
    """A large predict body is decoded in a decoder process with its b64 values, as if small."""
    text = base64.b64encode(b"big request").decode()
    rows = [{"text": {"b64": text}, "flag": True, "count": i} for i in range(2)]
    small = json.dumps({"instances": rows}).encode()
    large = json.dumps({"instances": rows, "padding": [0.5] * (BIG // 5)}).encode()
    async with serve(tmp_path, "coserve") as address, httpx.AsyncClient(timeout=30) as client:
        url = f"http://{address}/v1/models/types:predict"
        decoded = decoder_pool().statistics().decoded
        answers = [await client.post(url, content=body) for body in (small, large)]
        assert decoder_pool().statistics().decoded == decoded + 1  # the large one only
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    assert answers[1].json()["predictions"][1]["upper"] == "BIG REQUEST"


async def test_large_websocket_message_is_decoded_while_smaller_ones_are_answered(
    tmp_path: Path,
) -> None:
    """On one WebSocket, a small request is answered while a large one's decode is held up."""
    async with (
        serve(tmp_path, "coserve") as address,
        websockets.connect(f"ws://{address}/v2/models/slow/infer/ws") as socket,
    ):
        await socket.send(padded_v2_body(BIG, "warm").decode())
        assert json.loads(await socket.recv())["id"] == "warm"
        with decoders_stopped():
            await socket.send(padded_v2_body(BIG, "big").decode())
            await pending_decodes(1)
            await socket.send(padded_v2_body(100, "small").decode())
            assert json.loads(await socket.recv())["id"] == "small"
            assert decoder_pool().statistics().pending == 1
        assert json.loads(await socket.recv())["id"] == "big"


async def test_decoder_processes_stop_with_the_server(tmp_path: Path) -> None:
    """The decoder processes a server started are gone once it has stopped: none leak."""
    async with serve(tmp_path, "coserve") as address, httpx.AsyncClient(timeout=30) as client:
        url = f"http://{address}/v2/models/slow/infer"
        assert (await client.post(url, content=padded_v2_body(BIG))).status_code == 200
        pids = decoder_pool().statistics().workers
        assert pids
        for pid in pids:
            os.kill(pid, 0)  # running
    assert decoder_pool().statistics().workers == ()
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # exited, and reaped
            os.kill(pid, 0)


async def test_decoder_pool_refuses_work_beyond_its_bound() -> None:
    """A pool holding max_pending decodes refuses one more at once, with QueueFull (a 429)."""
    pool = DecoderPool(workers=1, max_pending=1)
    try:
        sleeping = pool.submit(time.sleep, 60)
        with pytest.raises(QueueFull):
            pool.submit(len, b"")
        os.kill(pool.statistics().workers[0], signal.SIGKILL)
        with pytest.raises(RuntimeError):
            await sleeping
    finally:
        await pool.aclose()


async def test_decoder_pool_bounds_the_bytes_it_holds() -> None:
    """Beyond max_pending_bytes of pending JSON one more is refused; alone, any size is taken."""
    pool = DecoderPool(workers=1, max_pending=8, max_pending_bytes=1000)
    try:
        big = pool.submit(time.sleep, 1, size=1500)  # larger than the bound, but alone
        with pytest.raises(QueueFull, match="1 large JSON bodies \\(1500 bytes\\)"):
            pool.submit(len, b"", size=1)
        assert pool.statistics().pending_bytes == 1500
        await big
        assert pool.statistics().pending_bytes == 0  # given back when it ended
        small = [pool.submit(time.sleep, 0.5, size=400) for _ in range(2)]
        with pytest.raises(QueueFull):
            pool.submit(len, b"", size=400)  # 1200 > 1000
        assert await asyncio.gather(*small) == [None, None]
        assert pool.statistics().pending_bytes == 0
    finally:
        await pool.aclose()


async def test_a_decoder_process_that_dies_fails_one_decode_and_is_replaced() -> None:
    """A killed decoder process fails the decode it held; the next decode runs in a new one."""
    pool = DecoderPool(workers=1, max_pending=2)
    try:
        sleeping = pool.submit(time.sleep, 60)
        (first,) = pool.statistics().workers
        os.kill(first, signal.SIGKILL)
        with pytest.raises(RuntimeError, match="decoder process"):
            await sleeping
        assert await pool.submit(struct.calcsize, "<Q") == 8
        (second,) = pool.statistics().workers
        assert second != first
    finally:
        await pool.aclose()
    assert pool.statistics().workers == ()
