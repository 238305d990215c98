"""Variable-length inputs padded to buckets: requests of mixed lengths batch, each gets its own.

The model here answers per token and per row (a running sum of the real tokens, their total,
and how many it saw), using the mask coserve gives it; padding changes nothing it says about a
request's own tokens. So every answer under batching must equal the answer to the same request
alone, unpadded, whatever mix of lengths arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import InvalidInput, PythonModel, TensorSpec
from coserve._exceptions import ConfigError, ModelLoadError
from coserve.models import BatchingConfig, ModelConfig, ModelHandle, PaddingConfig

BUCKETS = (4, 8, 16, 32)


class TokenModel:
    """Per token: the running sum of real tokens; per row: their total and count."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, mask, lengths = inputs["tokens"], inputs["mask"], inputs["lengths"]
        self.shapes.append(tokens.shape)
        real = tokens * mask
        assert (mask.sum(axis=1) == lengths).all()
        return {
            "running": np.cumsum(real, axis=1),
            "total": real.sum(axis=1),
            "count": mask.sum(axis=1),
        }


def alone(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """The answer for a request on its own, unpadded."""
    return {
        "running": np.cumsum(tokens, axis=1),
        "total": tokens.sum(axis=1),
        "count": np.full(len(tokens), tokens.shape[1]),
    }


def padded_handle(model: TokenModel, **options: object) -> ModelHandle:
    backend = PythonModel(
        model,
        name="tokens",
        inputs=(
            TensorSpec.of("tokens", "INT64", [-1, -1]),
            TensorSpec.of("mask", "INT64", [-1, -1]),
            TensorSpec.of("lengths", "INT32", [-1]),
        ),
        outputs=(
            TensorSpec.of("running", "INT64", [-1, -1]),
            TensorSpec.of("total", "INT64", [-1]),
            TensorSpec.of("count", "INT64", [-1]),
        ),
    )
    padding = PaddingConfig(("tokens",), BUCKETS, 0, "mask", "lengths", ("running",))
    batching = BatchingConfig(max_batch_size=16, padding=padding, **options)  # type: ignore[arg-type]
    return ModelHandle(backend, batching)


def check(answer: Mapping[str, np.ndarray], tokens: np.ndarray) -> None:
    expected = alone(tokens)
    for name in ("running", "total", "count"):
        np.testing.assert_array_equal(answer[name], expected[name], err_msg=name)


async def test_requests_of_mixed_lengths_share_batches_and_get_their_own_answers() -> None:
    model = TokenModel()
    handle = padded_handle(model)
    rng = np.random.default_rng(0)
    requests = [rng.integers(1, 9, size=(1, n)) for n in (1, 3, 4, 5, 7, 8, 2, 6, 30, 17)]
    try:
        answers = await asyncio.gather(*(handle.infer({"tokens": t}) for t in requests))
    finally:
        await handle.aclose()
    for answer, tokens in zip(answers, requests, strict=True):
        check(answer, tokens)
    # Four buckets, so four batches at most (one per bucket in use), not ten.
    assert sorted({shape[1] for shape in model.shapes}) == [4, 8, 32]
    assert len(model.shapes) == 3
    assert padded_stats(handle) == {4: (4, 10, 16), 8: (4, 26, 32), 32: (2, 47, 64)}


def padded_stats(handle: ModelHandle) -> dict[int, tuple[int, int, int]]:
    assert handle.padder is not None
    return {s.length: (s.requests, s.real, s.padded) for s in handle.padder.statistics()}


async def test_without_padding_each_length_is_a_batch_of_its_own() -> None:
    """The baseline padding improves on: exact-shape buckets, one batch per length."""
    shapes: list[tuple[int, ...]] = []

    def model(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes.append(inputs["tokens"].shape)
        return {"total": inputs["tokens"].sum(axis=1)}

    backend = PythonModel(
        model,
        name="plain",
        inputs=(TensorSpec.of("tokens", "INT64", [-1, -1]),),
        outputs=(TensorSpec.of("total", "INT64", [-1]),),
    )
    handle = ModelHandle(backend, BatchingConfig(max_batch_size=16))
    try:
        await asyncio.gather(
            *(handle.infer({"tokens": np.ones((1, n), np.int64)}) for n in (1, 2, 2, 3, 1))
        )
    finally:
        await handle.aclose()
    # The two requests of length 1 share a batch, so do the two of length 2: three batches.
    assert sorted(shapes) == [(1, 3), (2, 1), (2, 2)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 32)),  # (rows, length) of each request
        min_size=1,
        max_size=24,
    ),
    st.integers(0, 2**16),
)
def test_any_mix_of_lengths_answers_each_request_as_alone(
    shapes: list[tuple[int, int]], seed: int
) -> None:
    """Every caller's answer equals its single, unpadded answer, exactly once."""
    rng = np.random.default_rng(seed)
    requests = [rng.integers(-5, 5, size=(rows, length)) for rows, length in shapes]

    async def run() -> list[dict[str, np.ndarray]]:
        model = TokenModel()
        handle = padded_handle(model, max_wait=0.001)
        try:
            return await asyncio.gather(*(handle.infer({"tokens": t}) for t in requests))
        finally:
            await handle.aclose()
            stats = handle.statistics()
            assert stats.completed == len(requests)
            assert stats.submitted == len(requests)

    # A loop of its own, closed here (asyncio.run would also unset the loop that
    # pytest-asyncio gave the thread, which the next async test still holds).
    loop = asyncio.new_event_loop()
    try:
        answers = loop.run_until_complete(run())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    for answer, tokens in zip(answers, requests, strict=True):
        check(answer, tokens)


async def test_a_request_over_max_length_or_of_two_lengths_is_refused() -> None:
    backend = PythonModel(
        lambda inputs: {"y": inputs["a"]},
        name="two",
        inputs=(TensorSpec.of("a", "INT64", [-1, -1]), TensorSpec.of("b", "INT64", [-1, -1])),
        outputs=(TensorSpec.of("y", "INT64", [-1, -1]),),
    )
    padding = PaddingConfig(("a", "b"), (4, 8))
    handle = ModelHandle(backend, BatchingConfig(padding=padding))
    try:
        with pytest.raises(InvalidInput, match="length 9 is over the max_length of 8"):
            await handle.infer({"a": np.ones((1, 9), np.int64), "b": np.ones((1, 9), np.int64)})
        with pytest.raises(InvalidInput, match=r"must have one length .* got a 2, b 3"):
            await handle.infer({"a": np.ones((1, 2), np.int64), "b": np.ones((1, 3), np.int64)})
        same = await handle.infer({"a": np.ones((1, 3), np.int64), "b": np.ones((1, 3), np.int64)})
    finally:
        await handle.aclose()
    assert same["y"].shape == (1, 4)  # not trimmed: y is not in trim


def test_padding_names_are_checked_at_load() -> None:
    backend = PythonModel(
        lambda inputs: inputs,
        name="m",
        inputs=(TensorSpec.of("tokens", "INT64", [-1, 16]),),
        outputs=(TensorSpec.of("tokens", "INT64", [-1, 16]),),
    )
    with pytest.raises(ModelLoadError, match="length 16 in the model, so the only bucket"):
        ModelHandle(backend, BatchingConfig(padding=PaddingConfig(("tokens",), (8, 16))))
    with pytest.raises(ModelLoadError, match="'ids' is not an input"):
        ModelHandle(backend, BatchingConfig(padding=PaddingConfig(("ids",), (16,))))
    handle = ModelHandle(backend, BatchingConfig(padding=PaddingConfig(("tokens",), (16,))))
    assert [spec.shape for spec in handle.inputs] == [(-1, -1)]  # clients send any length


PADDED_CONFIG = """
platform = "python"
[padding]
inputs = ["tokens"]
max_length = 64
mask = "mask"
lengths = "lengths"
trim = ["running"]
"""


def test_the_padding_table(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(PADDED_CONFIG)
    padding = ModelConfig.load(tmp_path / "config.toml").batching.padding
    assert padding is not None
    assert padding.buckets == (8, 16, 32, 64)
    assert (padding.mask, padding.lengths, padding.trim) == ("mask", "lengths", ("running",))
    (tmp_path / "config.toml").write_text(
        PADDED_CONFIG.replace("max_length = 64", "buckets = [10, 20]\nmax_length = 50")
    )
    assert ModelConfig.load(tmp_path / "config.toml").batching.padding.buckets == (10, 20, 50)  # type: ignore[union-attr]
    for bad, says in [
        ("max_length = 64", "give buckets, or max_length"),
        ('inputs = ["tokens"]', "padding.inputs: required"),
    ]:
        (tmp_path / "config.toml").write_text(PADDED_CONFIG.replace(bad, ""))
        with pytest.raises(ConfigError, match=says):
            ModelConfig.load(tmp_path / "config.toml")


PADDED_MODEL = """
import numpy as np

def predict(inputs):
    tokens, mask = inputs["tokens"], inputs["mask"]
    real = tokens * mask
    return {"running": np.cumsum(real, axis=1), "total": real.sum(axis=1)}
"""

SERVED_CONFIG = """
platform = "python"
warm_up = false
[batching]
max_batch_size = 16
max_wait = 0.05
[padding]
inputs = ["tokens"]
buckets = [4, 8, 16]
mask = "mask"
trim = ["running"]
[[inputs]]
name = "tokens"
datatype = "INT64"
shape = [-1, -1]
[[inputs]]
name = "mask"
datatype = "INT64"
shape = [-1, -1]
[[outputs]]
name = "running"
datatype = "INT64"
shape = [-1, -1]
[[outputs]]
name = "total"
datatype = "INT64"
shape = [-1]
"""


@pytest.mark.slow
def test_a_served_padded_model_over_rest_and_its_metrics(tmp_path: Path) -> None:
    """Concurrent V2 requests of mixed lengths: each answered as alone; /metrics per bucket."""
    import concurrent.futures

    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from helpers import ServerProcess
    from server_models import add_model

    add_model(tmp_path, "padded", SERVED_CONFIG, PADDED_MODEL)
    server = ServerProcess("--model-repository", str(tmp_path))
    try:
        server.wait_ready()
        metadata = httpx.get(f"{server.url}/v2/models/padded", timeout=10).json()
        assert [(t["name"], t["shape"]) for t in metadata["inputs"]] == [("tokens", [-1, -1])]
        lengths = [1, 2, 3, 5, 6, 7, 9, 12, 16, 4, 8, 2]

        def call(length: int) -> dict[str, list[int]]:
            tokens = list(range(1, length + 1))
            body = {
                "inputs": [
                    {"name": "tokens", "datatype": "INT64", "shape": [1, length], "data": tokens}
                ]
            }
            answer = httpx.post(f"{server.url}/v2/models/padded/infer", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            return {o["name"]: o["data"] for o in answer.json()["outputs"]}

        with concurrent.futures.ThreadPoolExecutor(len(lengths)) as pool:
            answers = list(pool.map(call, lengths))
        for length, answer in zip(lengths, answers, strict=True):
            assert answer["running"] == np.cumsum(np.arange(1, length + 1)).tolist()
            assert answer["total"] == [length * (length + 1) // 2]
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        samples = [
            sample
            for family in text_string_to_metric_families(metrics)
            if family.name.startswith("coserve_padding")
            for sample in family.samples
        ]
        requests = {
            s.labels["length"]: s.value
            for s in samples
            if s.name == "coserve_padding_bucket_requests_total"
        }
        assert requests == {"4": 5.0, "8": 4.0, "16": 3.0}
        elements = {
            s.labels["kind"]: s.value
            for s in samples
            if s.name == "coserve_padding_elements_total" and s.labels["length"] == "16"
        }
        assert elements == {"real": 9 + 12 + 16, "padded": 3 * 16}
    finally:
        server.close()


async def test_padding_with_the_first_element_and_every_variable_input() -> None:
    """TF Serving's way (pad_variable_length_inputs).

    No input named (every one whose dimension 1 varies), each tensor's first element as the
    padding.
    """
    seen: list[list[int]] = []

    def model(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.extend(inputs["a"].tolist())
        return {"y": inputs["a"]}

    backend = PythonModel(
        model,
        name="first",
        inputs=(TensorSpec.of("a", "INT64", [-1, -1]), TensorSpec.of("fixed", "INT64", [-1, 2])),
        outputs=(TensorSpec.of("y", "INT64", [-1, -1]),),
    )
    padding = PaddingConfig((), (4, 8), value=None)
    handle = ModelHandle(backend, BatchingConfig(padding=padding))
    try:
        await handle.infer({"a": np.array([[5, 3]]), "fixed": np.zeros((1, 2), np.int64)})
    finally:
        await handle.aclose()
    assert seen == [[5, 3, 5, 5]]
    assert handle.padder is not None
    assert [s.name for s in handle.inputs] == ["a", "fixed"]
    fixed_only = PythonModel(
        model,
        name="fixed",
        inputs=(TensorSpec.of("fixed", "INT64", [-1, 2]),),
        outputs=(TensorSpec.of("y", "INT64", [-1, 2]),),
    )
    assert ModelHandle(fixed_only, BatchingConfig(padding=padding)).padder is None  # none varies


# -- what a review found: each of these failed once -----------------------------------------------


async def test_review_cases_of_padding() -> None:
    seen: list[dict[str, tuple[int, ...]]] = []

    def model(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append({name: array.shape for name, array in inputs.items()})
        rows = len(next(iter(inputs.values())))
        shifted = np.zeros((rows, inputs["q"].shape[1] + 1), np.int64) if "q" in inputs else None
        return {
            "out": inputs["q"] if "q" in inputs else np.zeros((rows, 5), np.int64),
            "plus_one": shifted if shifted is not None else np.zeros((rows, 6), np.int64),
        }

    backend = PythonModel(
        model,
        name="review",
        inputs=(
            TensorSpec("q", np.dtype(np.int64), (-1, -1), optional=True),
            TensorSpec.of("d", "INT64", [-1, -1]),
        ),
        outputs=(
            TensorSpec.of("out", "INT64", [-1, -1]),
            TensorSpec.of("plus_one", "INT64", [-1, -1]),
        ),
    )
    # TF Serving's way: no inputs named, so q and d are padded each to its own bucket.
    each = ModelHandle(backend, BatchingConfig(padding=PaddingConfig((), (4, 8), value=0)))
    try:
        await each.infer({"q": np.ones((1, 3), np.int64), "d": np.ones((1, 5), np.int64)})
    finally:
        await each.aclose()
    assert seen[-1] == {"q": (1, 4), "d": (1, 8)}
    # Named inputs, trim: an output of another length than the bucket's is not cut; a request
    # without the (optional) padded input is left as it is.
    named = ModelHandle(
        backend, BatchingConfig(padding=PaddingConfig(("q",), (4, 8), trim=("out", "plus_one")))
    )
    try:
        cut = await named.infer({"q": np.ones((1, 3), np.int64), "d": np.ones((1, 2), np.int64)})
        without = await named.infer({"d": np.ones((2, 2), np.int64)})
        with pytest.raises(InvalidInput, match="over the max_length"):
            await named.infer({"q": np.ones((1, 9), np.int64), "d": np.ones((1, 2), np.int64)})
    finally:
        await named.aclose()
    assert cut["out"].shape == (1, 3)
    assert cut["plus_one"].shape == (1, 5)  # bucket 4 + 1: not the padded dimension, kept
    assert without["out"].shape == (2, 5)
    assert named.padder is not None
    # Counted once run: the refused request (over max_length) and the unpadded one are not.
    assert [(b.length, b.requests, b.rows, b.batches) for b in named.padder.statistics()] == [
        (4, 1, 1, 1)
    ]


def test_a_mask_or_trim_of_the_wrong_shape_is_a_load_error() -> None:
    def backend(mask_shape: list[int], out_shape: list[int]) -> PythonModel:
        return PythonModel(
            lambda inputs: {"y": inputs["t"]},
            name="shapes",
            inputs=(TensorSpec.of("t", "INT64", [-1, -1]), TensorSpec.of("m", "INT64", mask_shape)),
            outputs=(TensorSpec.of("y", "INT64", out_shape),),
        )

    padding = PaddingConfig(("t",), (4, 8), mask="m", trim=("y",))
    with pytest.raises(ModelLoadError, match=r"the mask input 'm' is INT64\[-1\]"):
        ModelHandle(backend([-1], [-1, -1]), BatchingConfig(padding=padding))
    with pytest.raises(ModelLoadError, match="has no variable dimension 1 to cut back"):
        ModelHandle(backend([-1, -1], [-1, 16]), BatchingConfig(padding=padding))
    assert ModelHandle(backend([-1, -1, 1], [-1, -1]), BatchingConfig(padding=padding)).padder
