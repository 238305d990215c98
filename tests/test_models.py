"""The bundled demo models through ModelHandle.infer: real TensorFlow and ONNX Runtime.

The repository is loaded once for the module (TensorFlow starts once); every test talks to the
same handles, as a server's callers would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio
from sklearn.datasets import load_digits

from coserve import InvalidInput, ModelNotFound, ModelRepository
from coserve.models import bundled_repository

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def repository() -> AsyncIterator[ModelRepository]:
    async with ModelRepository() as repo:
        yield repo


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[..., None], data.target


class TestBundledModels:
    async def test_default_repository_serves_both_demo_models(
        self, repository: ModelRepository
    ) -> None:
        """With no path, the repository is the bundled one, with its demo models.

        The TF and ONNX digits models, and the text demo: its classifier, its tokenizer, and
        the ensemble of the two.
        """
        assert repository.path == bundled_repository()
        assert [(m.name, m.version, m.platform) for m in repository.models()] == [
            ("digits", "1", "tensorflow_savedmodel"),
            ("digits_onnx", "1", "onnx_onnxv1"),
            ("sentiment", "1", "tensorflow_savedmodel"),
            ("sentiment_text", "1", "ensemble"),
            ("sentiment_tokenizer", "1", "python"),
        ]
        handle = repository.get("digits")
        assert [s.describe() for s in handle.inputs] == ["FP32[-1, 8, 8, 1]"]
        assert [s.describe() for s in handle.outputs] == ["FP32[-1, 10]"]
        assert handle.labels == tuple(str(d) for d in range(10))

    async def test_tensorflow_and_onnx_give_the_same_predictions(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """The SavedModel and its ONNX export agree, request by request, through infer()."""
        images, labels = digits
        sample = images[:256]
        tf_rows = await asyncio.gather(
            *(repository.get("digits").infer({"image": sample[i : i + 1]}) for i in range(256))
        )
        onnx_rows = await asyncio.gather(
            *(repository.get("digits_onnx").infer({"image": sample[i : i + 1]}) for i in range(256))
        )
        tf_probs = np.concatenate([r["probabilities"] for r in tf_rows])
        onnx_probs = np.concatenate([r["probabilities"] for r in onnx_rows])
        np.testing.assert_allclose(tf_probs, onnx_probs, atol=1e-5)
        assert (tf_probs.argmax(axis=1) == labels[:256]).mean() > 0.95

    async def test_concurrent_single_rows_are_batched(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Concurrent one-row requests share model calls: fewer batches than requests."""
        handle = repository.get("digits_onnx")
        before = handle.statistics()
        images, _ = digits
        await asyncio.gather(*(handle.infer({"image": images[i : i + 1]}) for i in range(100)))
        after = handle.statistics()
        assert after.completed - before.completed == 100
        assert after.batches - before.batches < 100

    async def test_a_request_larger_than_a_batch_is_split_and_reassembled(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """300 rows (max batch 64) come back as 300 rows, in order, equal to row-by-row results."""
        handle = repository.get("digits")
        images, _ = digits
        whole = await handle.infer({"image": images[:300]})
        assert whole["probabilities"].shape == (300, 10)
        for i in (0, 63, 64, 299):
            single = await handle.infer({"image": images[i : i + 1]})
            np.testing.assert_allclose(
                whole["probabilities"][i], single["probabilities"][0], atol=1e-6
            )

    async def test_safe_casts_are_accepted(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """float64 and int inputs are converted to the model's float32; nested lists work too."""
        handle = repository.get("digits")
        images, _ = digits
        as_float32 = await handle.infer({"image": images[:2]})
        as_float64 = await handle.infer({"image": images[:2].astype(np.float64)})
        as_list = await handle.infer({"image": images[:2].tolist()})
        as_ints = await handle.infer({"image": np.zeros((1, 8, 8, 1), dtype=np.int64)})
        np.testing.assert_allclose(
            as_float64["probabilities"], as_float32["probabilities"], atol=1e-6
        )
        np.testing.assert_allclose(as_list["probabilities"], as_float32["probabilities"], atol=1e-6)
        assert as_ints["probabilities"].shape == (1, 10)

    async def test_unknown_model_and_version(self, repository: ModelRepository) -> None:
        """Looking up a model or version that is not loaded raises ModelNotFound."""
        with pytest.raises(ModelNotFound, match="'nope' is not loaded"):
            repository.get("nope")
        with pytest.raises(ModelNotFound, match="no version '7'"):
            repository.get("digits", "7")
        assert repository.get("digits", "1") is repository.get("digits")


BAD_INPUTS = [
    (
        {"pixels": np.zeros((1, 8, 8, 1), np.float32)},
        "has no input 'pixels'; its inputs are: image FP32",
    ),
    ({}, "missing input 'image'"),
    (
        {"image": np.zeros((1, 8, 8, 1), np.float32), "extra": [1]},
        "has no input 'extra'",
    ),
    (
        {"image": np.zeros((8, 8, 1), np.float32)},
        r"expected FP32\[-1, 8, 8, 1\] \(rank 4\), got FP32\[8, 8, 1\]",
    ),
    ({"image": np.zeros((1, 8, 7, 1), np.float32)}, "dimension 2 must be 8"),
    ({"image": np.full((1, 8, 8, 1), "x")}, "expected FP32, got BYTES"),
    ({"image": np.zeros((1, 8, 8, 1), np.complex64)}, "expected FP32"),
    ({"image": [[[[1.0]] * 8] * 8, [[[1.0]] * 8] * 7]}, "not a rectangular array"),
    ({"image": np.zeros((0, 8, 8, 1), np.float32)}, "no rows"),
    ({"image": np.zeros((64 * 1024 + 1, 8, 8, 1), np.float32)}, "65537 rows; at most 65536"),
]


class TestBadInputs:
    @pytest.mark.parametrize(("inputs", "message"), BAD_INPUTS)
    async def test_bad_input_raises_invalid_input_naming_the_problem(
        self, repository: ModelRepository, inputs: dict[str, object], message: str
    ) -> None:
        """Each kind of malformed request is refused before queueing, with a precise message."""
        handle = repository.get("digits")
        before = handle.statistics().submitted
        with pytest.raises(InvalidInput, match=message):
            await handle.infer(inputs)
        assert handle.statistics().submitted == before  # never queued

    async def test_float_to_int_is_refused(self) -> None:
        """An integer input refuses floats (and out-of-range ints): no silent truncation."""
        from coserve import PythonModel, TensorSpec
        from coserve.models import BatchingConfig, ModelHandle

        model = PythonModel(
            lambda inputs: {"y": inputs["x"] * 2},
            name="ints",
            inputs=(TensorSpec.of("x", "INT32", [-1]),),
            outputs=(TensorSpec.of("y", "INT32", [-1]),),
        )
        handle = ModelHandle(model, BatchingConfig(max_batch_size=4))
        try:
            with pytest.raises(InvalidInput, match="FP64 cannot be converted to INT32"):
                await handle.infer({"x": [1.5]})
            with pytest.raises(InvalidInput, match="do not fit INT32"):
                await handle.infer({"x": [2**40]})
            assert (await handle.infer({"x": [3]}))["y"].tolist() == [6]
        finally:
            await handle.aclose()

    async def test_bad_requests_do_not_disturb_concurrent_good_ones(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Good and malformed requests interleaved: every good one succeeds, every bad one fails."""
        handle = repository.get("digits")
        images, _ = digits
        good = [handle.infer({"image": images[i : i + 1]}) for i in range(40)]
        bad = [handle.infer(inputs) for inputs, _ in BAD_INPUTS[:-1] * 4]
        outcomes = await asyncio.gather(*good, *bad, return_exceptions=True)
        assert all(isinstance(o, dict) for o in outcomes[:40])
        assert all(isinstance(o, InvalidInput) for o in outcomes[40:])
        assert handle.statistics().failed == 0

    async def test_unknown_output_is_refused_and_outputs_can_be_selected(
        self, repository: ModelRepository, digits: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Requested outputs must exist; selecting them returns only those."""
        handle = repository.get("digits")
        images, _ = digits
        with pytest.raises(InvalidInput, match="has no output 'logits'"):
            await handle.infer({"image": images[:1]}, outputs=["logits"])
        result = await handle.infer({"image": images[:1]}, outputs=["probabilities"])
        assert list(result) == ["probabilities"]


class TestTextDemo:
    """sentiment: variable-length token ids, padded to buckets so sentences batch."""

    async def test_sentences_of_mixed_lengths_share_batches_and_get_their_own_answer(
        self, repository: ModelRepository
    ) -> None:
        """Each caller gets what the model gives its own unpadded row, asked alone."""
        handle = repository.get("sentiment")
        rng = np.random.default_rng(5)
        sentences = [
            rng.integers(2, 42, size=(1, int(n)), dtype=np.int32) for n in rng.integers(1, 65, 48)
        ]
        # The model itself on each sentence alone, unpadded (no handle, no batching).
        alone = [
            (await asyncio.to_thread(handle.backend.predict, {"tokens": t}))["probabilities"]
            for t in sentences
        ]
        before = handle.statistics().batches
        together = await asyncio.gather(*(handle.infer({"tokens": t}) for t in sentences))
        batches = handle.statistics().batches - before
        assert batches <= 4  # one per bucket in use: 8, 16, 32, 64 (not 48)
        for answer, expected in zip(together, alone, strict=True):
            # The padding is id 0, which the model leaves out (its embedding is zero): the
            # answers agree to the last float32 bits a batched matmul may change.
            np.testing.assert_allclose(answer["probabilities"], expected, rtol=1e-6, atol=1e-7)
        assert handle.padder is not None
        assert {b.length for b in handle.padder.statistics()} <= {8, 16, 32, 64}

    async def test_raw_text_through_the_tokenizer_ensemble(
        self, repository: ModelRepository
    ) -> None:
        texts = ["The movie was great and I love it", "awful food, terrible service", "ok"]
        result = await repository.get("sentiment_text").infer(
            {"text": np.array([t.encode() for t in texts], dtype=object)}
        )
        probabilities = result["probabilities"]
        assert probabilities.shape == (3, 2)
        assert probabilities[0].argmax() == 1  # positive
        assert probabilities[1].argmax() == 0  # negative
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        with pytest.raises(InvalidInput, match="over the max_length of 64"):
            await repository.get("sentiment").infer({"tokens": np.ones((1, 65), np.int32)})
