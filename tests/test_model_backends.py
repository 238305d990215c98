"""Every backend loads a real model file and predicts the same as the framework itself.

The models are tiny and built here, in the test's temporary repository: a Keras model saved as
``.keras``, SavedModels (frozen into a session, or called as a ``tf.function`` when they cannot
be frozen), a PyTorch module saved as TorchScript and as a ``torch.export`` program.
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from coserve import MissingDependency, ModelRepository
from coserve.models._backend import require

SPECS = """
[[inputs]]
name = "features"
datatype = "FP32"
shape = [-1, 3]
[[outputs]]
name = "scores"
datatype = "FP32"
shape = [-1, 2]
"""

ROWS = np.array([[0.5, -1.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 3.0]], dtype=np.float32)


def model_folder(repo: Path, name: str, config: str) -> Path:
    version = repo / name / "1"
    version.mkdir(parents=True)
    (repo / name / "config.toml").write_text(textwrap.dedent(config))
    return version


async def test_keras_model_predicts_like_keras(tmp_path: Path) -> None:
    """A .keras file is served through a traced tf.function, matching the Keras model's output."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((3,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(2, name="scores")(inputs))
    folder = model_folder(tmp_path, "dense", 'platform = "tensorflow_keras"')
    with warnings.catch_warnings():  # Keras 3.15 saving calls np.array(copy=False) on tensors
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(folder / "model.keras")
    # Computed from the weights: an eager Keras 3.15 call trips a numpy-2 deprecation warning.
    weights, bias = model.get_layer("scores").get_weights()
    expected = ROWS @ weights + bias

    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("dense")
        assert [s.name for s in handle.inputs] == ["features"]
        assert [s.name for s in handle.outputs] == ["scores"]
        result = await handle.infer({"features": ROWS})
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-6)


def save_module(module: object, folder: Path) -> None:
    import tensorflow as tf

    serve = module.serve  # type: ignore[attr-defined]
    tf.saved_model.save(
        module, str(folder / "model.savedmodel"), signatures={"serving_default": serve}
    )


async def test_savedmodel_runs_frozen_and_predicts_like_its_signature(tmp_path: Path) -> None:
    """A SavedModel with variables runs as a frozen graph and answers as its signature does."""
    import tensorflow as tf

    class Dense(tf.Module):
        def __init__(self) -> None:
            self.weights = tf.Variable(tf.random.stateless_normal((3, 2), seed=(1, 2)))
            self.bias = tf.Variable([0.25, -0.5])

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.matmul(features, self.weights) + self.bias, "double": 2 * features}

    module = Dense()
    folder = model_folder(tmp_path, "dense", 'platform = "tensorflow_savedmodel"')
    save_module(module, folder)
    expected = module.serve(tf.constant(ROWS))
    async with ModelRepository(tmp_path) as repository:
        result = await repository.get("dense").infer({"features": ROWS})
        assert repository.get("dense").backend.frozen  # type: ignore[attr-defined]
    np.testing.assert_allclose(result["scores"], expected["scores"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(result["double"], expected["double"].numpy())


def test_a_session_without_the_fast_callable_uses_the_public_one() -> None:
    """Should TensorFlow drop ``_make_callable_from_options``, ``make_callable`` still runs."""
    import tensorflow as tf

    from coserve.models.backends.tensorflow import _callable

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        tf.identity(2 * x, name="y")
    session = tf.compat.v1.Session(graph=graph)

    class PublicOnly:
        graph = session.graph
        make_callable = session.make_callable

    try:
        for target in (session, PublicOnly()):
            (result,) = _callable(target, ["x:0"], ["y:0"])(np.array([1.5, -2.0], np.float32))
            assert result.tolist() == [3.0, -4.0]
    finally:
        session.close()


async def test_savedmodels_that_cannot_be_frozen_run_as_functions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A signature that updates a variable keeps doing so; one with a lookup table still works."""
    import tensorflow as tf

    class Counter(tf.Module):
        def __init__(self) -> None:
            self.count = tf.Variable(0.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            self.count.assign_add(1.0)
            return {"y": x + self.count}

    class Table(tf.Module):
        def __init__(self) -> None:
            keys, values = tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64)
            initializer = tf.lookup.KeyValueTensorInitializer(keys, values)
            self.table = tf.lookup.StaticHashTable(initializer, -1)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self.table.lookup(x)}

    save_module(Counter(), model_folder(tmp_path, "counter", 'platform = "tensorflow_savedmodel"'))
    save_module(Table(), model_folder(tmp_path, "table", 'platform = "tensorflow_savedmodel"'))
    with caplog.at_level(logging.INFO, logger="coserve.models"):
        async with ModelRepository(tmp_path, warm_up=False) as repository:
            counter, table = repository.get("counter"), repository.get("table")
            assert not counter.backend.frozen  # type: ignore[attr-defined]
            assert not table.backend.frozen  # type: ignore[attr-defined]
            first = await counter.infer({"x": np.array([10.0], dtype=np.float32)})
            second = await counter.infer({"x": np.array([10.0], dtype=np.float32)})
            looked_up = await table.infer({"x": np.array([b"b", b"a", b"z"], dtype=object)})
    assert first["y"].tolist() == [11.0]
    assert second["y"].tolist() == [12.0]  # the variable kept counting
    assert looked_up["y"].tolist() == [2, 1, -1]
    refused = [
        r.getMessage() for r in caplog.records if "cannot run as a frozen graph" in r.getMessage()
    ]
    assert len(refused) == 2


class TinyNet:
    """Builds the same small torch module for both PyTorch formats."""

    @staticmethod
    def build() -> tuple[object, object]:
        import torch

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        net.eval()
        with torch.inference_mode():
            expected = net(torch.from_numpy(ROWS)).numpy()
        return net, expected


def save_torchscript(net: object, path: Path) -> None:
    """Script and save a module; torch 2.13 deprecates scripting, not loading TorchScript files."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        scripted = torch.jit.script(net)
    scripted.save(str(path))


async def test_torchscript_model_predicts_like_torch(tmp_path: Path) -> None:
    """A TorchScript file is served with the specs its config gives, matching the module."""
    net, expected = TinyNet.build()
    folder = model_folder(tmp_path, "scripted", 'platform = "pytorch_torchscript"\n' + SPECS)
    save_torchscript(net, folder / "model.pt")
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("scripted")
        assert handle.platform == "pytorch_torchscript"
        result = await handle.infer({"features": ROWS})
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-6)


async def test_torch_export_program_predicts_like_torch(tmp_path: Path) -> None:
    """A torch.export program with a dynamic batch is served at every warm-up batch size."""
    import torch

    net, expected = TinyNet.build()
    folder = model_folder(
        tmp_path,
        "exported",
        'platform = "pytorch_export"\n[batching]\nmax_batch_size = 8\n' + SPECS,
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        net,
        (torch.from_numpy(ROWS),),
        dynamic_shapes=({0: batch},),  # type: ignore[arg-type]
    )
    torch.export.save(program, str(folder / "model.pt2"))
    async with ModelRepository(tmp_path) as repository:  # warm-up runs batch sizes 1, 2, 4, 8
        result = await repository.get("exported").infer({"features": ROWS})
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-5, atol=1e-6)


async def test_torch_model_without_specs_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PyTorch files carry no named specs, so a config without them is a load error."""
    net, _ = TinyNet.build()
    folder = model_folder(tmp_path, "nospecs", 'platform = "pytorch_torchscript"')
    save_torchscript(net, folder / "model.pt")
    async with ModelRepository(tmp_path) as repository:
        assert repository.models() == []
    assert "needs [[inputs]] and [[outputs]]" in caplog.text


async def test_onnx_threads_come_from_the_config() -> None:
    """[threads] intra_op reaches the ONNX Runtime session options."""
    async with ModelRepository() as repository:
        backend = repository.get("digits_onnx").backend
        options = backend._session.get_session_options()  # type: ignore[attr-defined]
        assert options.intra_op_num_threads == 2
        assert options.inter_op_num_threads == 1


def test_a_missing_extra_names_the_pip_command() -> None:
    """An optional dependency that is not installed raises MissingDependency saying what to do."""
    with pytest.raises(MissingDependency, match=r"pip install 'coserve\[magic\]'") as caught:
        require("coserve_no_such_module", "magic")
    assert isinstance(caught.value, ImportError)


async def test_python_model_file_without_predict_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Python model's file must define predict(inputs)."""
    folder = model_folder(tmp_path, "empty", 'platform = "python"\n' + SPECS)
    (folder / "model.py").write_text("VALUE = 1\n")
    async with ModelRepository(tmp_path) as repository:
        assert repository.models() == []
    assert "defines no predict(inputs) function" in caplog.text
