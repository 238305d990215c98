"""Triton's classification extension: outputs asked for as their top k classes.

Real tritonclient clients (``InferRequestedOutput(name, class_count=k)``) against an in-process
server, over REST and gRPC, on a Python model with class labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpc_client
import tritonclient.http.aio as http_client

from coserve import InvalidInput
from coserve.server._classification import classify
from server_models import add_model
from test_grpc_limits import grpc_server
from test_protocol import serve

SCORES_CONFIG = """
platform = "python"
labels = "labels.txt"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]
[[outputs]]
name = "scores"
datatype = "FP32"
shape = [-1, 4]
[[outputs]]
name = "name"
datatype = "BYTES"
shape = [-1]
"""

SCORES_MODEL = """
import numpy as np

def predict(inputs):
    x = inputs["x"]
    return {"scores": x, "name": np.array([b"row"] * len(x), dtype=object)}
"""


def add_scores(folder: Path) -> Path:
    add_model(folder, "scores", SCORES_CONFIG, SCORES_MODEL)
    (folder / "scores" / "labels.txt").write_text("cat\ndog\nbird\n")  # one label short
    return folder


def test_top_classes_are_written_as_triton_writes_them() -> None:
    """Largest first, 'value:index:label' with nine decimals; no label past the labels file."""
    outputs = {"scores": np.array([[0.1, 0.7, 0.2, 0.9], [0.5, 0.5, 0.0, 0.25]], np.float32)}
    answered, datatypes = classify(outputs, {"scores": "FP32"}, {"scores": 3}, ["cat", "dog"])
    assert datatypes == {"scores": "BYTES"}
    assert answered["scores"].tolist() == [
        [b"0.900000:3", b"0.700000:1:dog", b"0.200000:2"],
        [b"0.500000:0:cat", b"0.500000:1:dog", b"0.250000:3"],  # ties: index order
    ]
    integers = {"n": np.array([[3, 7, 1]], dtype=np.int32)}
    ranked, _ = classify(integers, {"n": "INT32"}, {"n": 2}, [])
    assert ranked["n"].tolist() == [[b"7:1", b"3:0"]]  # integers as they are, as Triton
    whole, _ = classify(
        {"v": np.arange(10, dtype=np.float32)}, {"v": "FP32"}, {"v": 3}, [], batched=False
    )
    assert whole["v"].tolist() == [b"9.000000:9", b"8.000000:8", b"7.000000:7"]  # shape [k]
    everything, _ = classify(outputs, {"scores": "FP32"}, {"scores": 10}, [])
    assert everything["scores"].shape == (2, 4)  # k beyond the classes: all of them
    with pytest.raises(InvalidInput, match="not numeric"):
        classify({"n": np.array([b"a"], dtype=object)}, {"n": "BYTES"}, {"n": 1}, [])


async def test_classification_over_rest_with_tritonclient(tmp_path: Path) -> None:
    async with serve(add_scores(tmp_path), "coserve") as (port, _):
        client = http_client.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            data = http_client.InferInput("x", [1, 4], "FP32")
            data.set_data_from_numpy(np.array([[0.1, 0.7, 0.2, 0.9]], dtype=np.float32))
            for binary in (False, True):
                result = await client.infer(
                    "scores",
                    [data],
                    outputs=[
                        http_client.InferRequestedOutput(
                            "scores", binary_data=binary, class_count=2
                        )
                    ],
                )
                # tritonclient gives JSON strings as str, binary ones as bytes
                answer = [
                    [v.decode() if isinstance(v, bytes) else v for v in row]
                    for row in result.as_numpy("scores").tolist()
                ]
                assert answer == [["0.900000:3", "0.700000:1:dog"]]
            with pytest.raises(Exception, match="not numeric"):
                await client.infer(
                    "scores",
                    [data],
                    outputs=[http_client.InferRequestedOutput("name", class_count=1)],
                )
        finally:
            await client.close()


async def test_classification_over_grpc_with_tritonclient(tmp_path: Path) -> None:
    async with grpc_server(add_scores(tmp_path)) as (server, _):
        client = grpc_client.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            data = grpc_client.InferInput("x", [2, 4], "FP32")
            data.set_data_from_numpy(
                np.array([[0.1, 0.7, 0.2, 0.9], [4, 3, 2, 1]], dtype=np.float32)
            )
            result = await client.infer(
                "scores",
                [data],
                outputs=[grpc_client.InferRequestedOutput("scores", class_count=1)],
            )
            assert result.as_numpy("scores").tolist() == [
                [b"0.900000:3"],
                [b"4.000000:0:cat"],
            ]
            metadata = await client.get_server_metadata()
            assert "classification" in metadata.extensions
        finally:
            await client.close()
