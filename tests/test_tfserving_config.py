"""TF Serving's config files read into coserve's: models.config re-reads, the batching file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from coserve import ConfigError
from coserve.models._tfserving_config import ModelServerConfigFile, batching_parameters


def write_config(path: Path, *entries: str) -> None:
    body = "".join(f"  config {{ {entry} }}\n" for entry in entries)
    path.write_text(f"model_config_list {{\n{body}}}\n")


def test_a_bad_edit_keeps_a_served_model_as_it_was(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry that turns bad on a re-read keeps its model; a bad new one is skipped."""
    path = tmp_path / "models.config"
    write_config(path, "name: 'a' base_path: '/m/a'", "name: 'b' base_path: '/m/b'")
    config_file = ModelServerConfigFile(path, batching=None, poll=1e-9)
    assert [f.name for f in config_file.folders()] == ["a", "b"]
    write_config(
        path,
        "name: 'a' base_path: '/m/a' model_platform: 'tensorflw'",
        "name: 'b' base_path: '/m/b2'",
        "name: 'c'",
    )
    with caplog.at_level(logging.ERROR, logger="coserve.models"):
        folders = config_file.folders()
    assert [(f.name, str(f.path)) for f in folders] == [("a", "/m/a"), ("b", "/m/b2")]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'tensorflw' is not served" in messages
    assert "model c has no base_path" in messages


def test_poll_zero_reads_the_file_once(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    write_config(path, "name: 'a' base_path: '/m/a'")
    config_file = ModelServerConfigFile(path, batching=None, poll=0)
    assert [f.name for f in config_file.folders()] == ["a"]
    write_config(path, "name: 'z' base_path: '/m/z'")
    assert [f.name for f in config_file.folders()] == ["a"]


def test_version_policies_and_labels_are_read(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    write_config(
        path,
        "name: 'all' base_path: 'x' model_version_policy { all {} }",
        "name: 'two' base_path: '/x' model_version_policy { latest { num_versions: 2 } }",
        "name: 'some' base_path: '/x' model_version_policy { specific { versions: [1, 3] } }"
        " version_labels { key: 'stable' value: 3 }",
    )
    folders = {f.name: f for f in ModelServerConfigFile(path, batching=None, poll=0).folders()}
    every = folders["all"].versions
    assert every is not None
    assert every.policy == "all"
    assert folders["all"].path == tmp_path / "x"  # relative: from the file's folder
    two = folders["two"].versions
    assert two is not None
    assert (two.policy, two.latest) == ("latest", 2)
    some = folders["some"].versions
    assert some is not None
    assert (some.policy, some.specific) == ("specific", (1, 3))
    assert dict(folders["some"].version_labels) == {"stable": 3}


def test_a_file_that_is_not_a_model_server_config_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text("model_config_list {\n  config { nmae: 'a' }\n}\n")
    with pytest.raises(ConfigError, match=r"models\.config:2:12: .*nmae"):
        ModelServerConfigFile(path, batching=None, poll=0).folders()


def test_batching_parameters_map_onto_coserves(tmp_path: Path) -> None:
    path = tmp_path / "batching.config"
    path.write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 2500 }\n"
        "num_batch_threads { value: 3 }\nmax_enqueued_batches { value: 4 }\n"
        "allowed_batch_sizes: [8, 16, 32]\n"
    )
    config = batching_parameters(path)
    assert (config.max_batch_size, config.max_wait, config.max_concurrent_batches) == (
        32,
        0.0025,
        3,
    )
    assert config.max_queue_size == 128
    assert config.allowed_batch_sizes == (8, 16, 32)
    assert config.pad_to_allowed_batch_size
    assert config.padding is None
    path.write_text("max_batch_size { value: 32 }\npad_variable_length_inputs: true\n")
    padding = batching_parameters(path).padding
    assert padding is not None
    assert padding.inputs == ()  # every input whose dimension 1 varies
    assert padding.value is None  # each tensor's first element, as TF Serving pads
    assert padding.buckets[:3] == (8, 16, 32)
    path.write_text("max_batch_size { value: 32 }\nallowed_batch_sizes: [8, 16]\n")
    with pytest.raises(
        ConfigError, match=r"batching\.config:2:\d+: the last of allowed_batch_sizes"
    ):
        batching_parameters(path)
