"""config.toml parsing and tensor specs: strict, with errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coserve import ConfigError, LatencyTarget
from coserve.models import ModelConfig, TensorSpec, VersionPolicy, datatype_of, dtype_of

BATCH8 = 'platform = "python"\n[batching]\nmax_batch_size = 8'


def write_config(tmp_path: Path, text: str, name: str = "mymodel") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "config.toml"
    path.write_text(text)
    return path


class TestParsing:
    def test_full_config_is_read(self, tmp_path: Path) -> None:
        """Every documented key is read into the config."""
        path = write_config(
            tmp_path,
            """
            platform = "onnx_onnxv1"
            filename = "net.onnx"
            labels = "labels.txt"
            warm_up = false
            [batching]
            max_batch_size = 8
            max_wait = 0.002
            max_concurrent_batches = 2
            max_queue_size = 100
            timeout = 1.5
            grace_period = 3
            allowed_batch_sizes = [1, 4, 8]
            pad_to_allowed_batch_size = true
            [threads]
            intra_op = 2
            inter_op = 1
            [versions]
            policy = "specific"
            specific = [2, 3]
            [[inputs]]
            name = "x"
            datatype = "FP32"
            shape = [-1, 3]
            [[outputs]]
            name = "y"
            datatype = "INT64"
            shape = [-1]
            """,
        )
        (path.parent / "labels.txt").write_text("cat\ndog\n\n")
        config = ModelConfig.load(path)
        assert config.name == "mymodel"
        assert (config.platform, config.filename, config.warm_up) == (
            "onnx_onnxv1",
            "net.onnx",
            False,
        )
        assert config.labels == ("cat", "dog")
        assert config.batching.max_batch_size == 8
        assert config.batching.allowed_batch_sizes == (1, 4, 8)
        assert config.batching.pad_to_allowed_batch_size
        assert (config.threads.intra_op, config.threads.inter_op) == (2, 1)
        assert config.versions == VersionPolicy("specific", 1, (2, 3))
        assert config.inputs == (TensorSpec.of("x", "FP32", [-1, 3]),)
        assert config.outputs == (TensorSpec.of("y", "INT64", [-1]),)

    def test_minimal_config_uses_defaults(self, tmp_path: Path) -> None:
        """Only the platform is required."""
        config = ModelConfig.load(write_config(tmp_path, 'platform = "python"'))
        assert config.batching.max_batch_size == 64
        assert config.batching.max_wait == 0.0
        assert config.batching.target_latency is None
        assert config.versions.policy == "latest"

    def test_a_latency_target_turns_adaptive_batching_on(self, tmp_path: Path) -> None:
        """target_latency is parsed as the batcher and bench parse it."""
        text = 'platform = "python"\n[batching]\ntarget_latency = "p99.9<50ms"'
        config = ModelConfig.load(write_config(tmp_path, text))
        assert config.batching.target_latency == LatencyTarget(99.9, 0.05)

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ('platform = "python"\nmax_batch_size = 3', "max_batch_size"),
            ('platform = "python"\n[batching]\nmax_batch = 3', "batching.max_batch"),
            ('platform = "python"\n[threads]\nintra = 3', "threads.intra"),
            (
                'platform = "python"\n[[inputs]]\nname="x"\ndatatype="FP32"\nshape=[1]\nsize=2',
                "inputs[0].size",
            ),
        ],
    )
    def test_unknown_key_is_an_error_naming_key_and_file(
        self, tmp_path: Path, text: str, key: str
    ) -> None:
        """A misspelt key is refused, and the message names the key and the file."""
        path = write_config(tmp_path, text)
        with pytest.raises(ConfigError, match="unknown key") as caught:
            ModelConfig.load(path)
        assert key in str(caught.value)
        assert str(path) in str(caught.value)

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("", "platform: required"),
            ('platform = "caffe"', "not one of"),
            ('platform = "python"\n[batching]\nmax_batch_size = 0', "batching.max_batch_size"),
            ('platform = "python"\n[batching]\nmax_batch_size = true', "expected int"),
            ('platform = "python"\n[batching]\nmax_wait = -1', "batching.max_wait"),
            ('platform = "python"\n[batching]\ntimeout = 0', "batching.timeout"),
            ('platform = "python"\n[batching]\ntarget_latency = "20ms"', "not a latency target"),
            ('platform = "python"\n[batching]\ntarget_latency = 20', "expected str"),
            (f"{BATCH8}\nallowed_batch_sizes = [4, 2, 8]", "ascending"),
            (f"{BATCH8}\nallowed_batch_sizes = [2, 4]", "must be max_batch_size"),
            ('platform = "python"\n[batching]\npad_to_allowed_batch_size = true', "needs allowed"),
            ('platform = "python"\n[versions]\npolicy = "newest"', "versions.policy"),
            ('platform = "python"\n[versions]\npolicy = "specific"', "needs version numbers"),
            ('platform = "python"\n[[inputs]]\nname = "x"\ndatatype = "FP32"', "shape: required"),
            ('platform = "python"\n[[inputs]]\nname="x"\ndatatype="FLOAT"\nshape=[1]', "datatype"),
            ('platform = "python"\nlabels = "missing.txt"', "labels: cannot read"),
            ("platform = ", "cannot read the model config"),
        ],
    )
    def test_bad_values_are_errors_naming_the_problem(
        self, tmp_path: Path, text: str, fragment: str
    ) -> None:
        """Malformed or out-of-range values raise ConfigError saying what is wrong."""
        with pytest.raises(ConfigError, match=fragment):
            ModelConfig.load(write_config(tmp_path, text))


class TestVersionPolicy:
    def test_latest_all_and_specific(self) -> None:
        """The policy picks the versions to serve out of those on disk."""
        on_disk = [3, 1, 2]
        assert VersionPolicy().select(on_disk) == [3]
        assert VersionPolicy("latest", latest=2).select(on_disk) == [2, 3]
        assert VersionPolicy("all").select(on_disk) == [1, 2, 3]
        assert VersionPolicy("specific", specific=(1, 5)).select(on_disk) == [1]


class TestSpecs:
    @pytest.mark.parametrize(
        ("datatype", "dtype"),
        [("FP32", np.float32), ("INT64", np.int64), ("BOOL", np.bool_), ("BYTES", np.object_)],
    )
    def test_datatypes_map_both_ways(self, datatype: str, dtype: type) -> None:
        """Protocol datatype names and numpy dtypes convert into each other."""
        assert dtype_of(datatype) == np.dtype(dtype)
        assert datatype_of(np.dtype(dtype)) == datatype

    def test_strings_are_bytes_and_unknown_names_are_refused(self) -> None:
        """Str and bytes arrays are BYTES; an unknown datatype name raises ValueError."""
        assert datatype_of(np.array(["a"]).dtype) == "BYTES"
        with pytest.raises(ValueError, match="unknown datatype"):
            dtype_of("FLOAT")
        with pytest.raises(ValueError, match="no inference-protocol datatype"):
            datatype_of(np.dtype(np.complex64))

    def test_spec_describes_itself(self) -> None:
        """A spec knows its datatype, row shape, and a short form for messages."""
        spec = TensorSpec.of("image", "FP32", [-1, 8, 8, 1])
        assert spec.datatype == "FP32"
        assert spec.row_shape == (8, 8, 1)
        assert spec.describe() == "FP32[-1, 8, 8, 1]"
        with pytest.raises(ValueError, match="dimensions"):
            TensorSpec.of("bad", "FP32", [-2])
