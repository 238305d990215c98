"""The model repository on disk: layout, version policies, and reload under traffic.

Models here are real Python-backend models written to a temporary repository as ``model.py``
files, so reload is exercised exactly as a user would drive it: by changing folders.
"""

from __future__ import annotations

import asyncio
import logging
import textwrap
import threading
from pathlib import Path

import pytest

from coserve import ModelLoadError, ModelNotFound, ModelRepository

CONFIG = """
platform = "python"
{extra}
[[inputs]]
name = "x"
datatype = "INT64"
shape = [-1]
[[outputs]]
name = "y"
datatype = "INT64"
shape = [-1]
"""

MODEL = """
import threading
import numpy as np
ENTERED = threading.Event()
GATE = threading.Event()
GATE.set()

def predict(inputs):
    ENTERED.set()
    GATE.wait(30)
    return {{"y": inputs["x"] + {add}}}
"""


def add_model(repo: Path, name: str, version: int, add: int, extra: str = "") -> None:
    folder = repo / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(CONFIG.format(extra=extra))
    (folder / str(version) / "model.py").write_text(textwrap.dedent(MODEL.format(add=add)))


def module_globals(repository: ModelRepository, name: str, version: str) -> dict[str, object]:
    """The loaded model.py's globals, to reach its gate (the test's view into the model)."""
    return repository.get(name, version).backend._predict.__globals__  # type: ignore[attr-defined,no-any-return]


async def infer_one(repository: ModelRepository, name: str, x: int) -> int:
    result = await repository.get(name).infer({"x": [x]})
    return int(result["y"][0])


async def test_every_model_folder_is_loaded(tmp_path: Path) -> None:
    """Each folder with a config.toml and version folders becomes a model; others are ignored."""
    add_model(tmp_path, "plus_one", 1, add=1)
    add_model(tmp_path, "plus_two", 1, add=2)
    (tmp_path / "notes").mkdir()
    async with ModelRepository(tmp_path) as repository:
        assert [m.name for m in repository.models()] == ["plus_one", "plus_two"]
        assert await infer_one(repository, "plus_one", 5) == 6
        assert await infer_one(repository, "plus_two", 5) == 7


async def test_a_folder_that_serves_nothing_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No folder is skipped silently: no config.toml, or a version folder that is no number."""
    add_model(tmp_path, "plus_one", 1, add=1)
    (tmp_path / "plus_one" / "latest").mkdir()
    (tmp_path / "half_plus_two" / "00000123").mkdir(parents=True)  # TF Serving's layout
    (tmp_path / ".git").mkdir()  # hidden folders are not meant as models
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.name for m in repository.models()] == ["plus_one"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("half_plus_two" in m and "no config.toml" in m for m in messages), messages
    assert any("latest" in m and "not a version" in m for m in messages), messages
    assert not any(".git" in m for m in messages), messages


async def test_version_policy_selects_the_served_versions(tmp_path: Path) -> None:
    """Latest N, all, and specific pick the version folders to load."""
    for version in (1, 2, 3):
        add_model(tmp_path, "latest2", version, add=version, extra="[versions]\nlatest = 2")
        add_model(tmp_path, "every", version, add=version, extra='[versions]\npolicy = "all"')
        add_model(
            tmp_path, "chosen", version, add=version,
            extra='[versions]\npolicy = "specific"\nspecific = [1, 3]',
        )  # fmt: skip
    async with ModelRepository(tmp_path) as repository:
        served = {(m.name, m.version) for m in repository.models()}
    assert served == {
        ("latest2", "2"), ("latest2", "3"),
        ("every", "1"), ("every", "2"), ("every", "3"),
        ("chosen", "1"), ("chosen", "3"),
    }  # fmt: skip


async def test_a_broken_model_is_skipped_and_the_rest_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A model with a bad config or a broken file is logged and skipped; the others serve."""
    add_model(tmp_path, "good", 1, add=1)
    add_model(tmp_path, "typo", 1, add=1, extra="max_batch = 3")
    add_model(tmp_path, "broken", 1, add=1)
    (tmp_path / "broken" / "1" / "model.py").write_text("raise ImportError('no such thing')")
    with caplog.at_level(logging.ERROR, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.name for m in repository.models()] == ["good"]
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "max_batch: unknown key" in messages
    assert "no such thing" in messages


async def test_missing_repository_folder_is_an_error(tmp_path: Path) -> None:
    """Pointing at a folder that does not exist raises ModelLoadError."""
    with pytest.raises(ModelLoadError, match="is not a folder"):
        async with ModelRepository(tmp_path / "absent"):
            pass


async def test_reload_adds_and_removes_models(tmp_path: Path) -> None:
    """reload() loads new model folders and unloads removed ones."""
    add_model(tmp_path, "first", 1, add=1)
    async with ModelRepository(tmp_path) as repository:
        add_model(tmp_path, "second", 1, add=2)
        await repository.reload()
        assert await infer_one(repository, "second", 1) == 3
        for path in sorted((tmp_path / "first").rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        (tmp_path / "first").rmdir()
        await repository.reload()
        with pytest.raises(ModelNotFound):
            repository.get("first")


async def test_reload_picks_up_a_changed_config(tmp_path: Path) -> None:
    """Editing a model's config.toml and reloading serves it with the new settings."""
    add_model(tmp_path, "tuned", 1, add=1)
    async with ModelRepository(tmp_path) as repository:
        assert repository.get("tuned").batching.max_batch_size == 64
        add_model(tmp_path, "tuned", 1, add=1, extra="[batching]\nmax_batch_size = 8")
        await repository.reload()
        assert repository.get("tuned").batching.max_batch_size == 8


async def test_new_version_takes_traffic_while_the_old_one_drains(tmp_path: Path) -> None:
    """A request in flight on v1 finishes on v1 after v2 is loaded; new requests go to v2."""
    add_model(tmp_path, "model", 1, add=100)
    async with ModelRepository(tmp_path) as repository:
        old = repository.get("model")
        gate = module_globals(repository, "model", "1")["GATE"]
        entered = module_globals(repository, "model", "1")["ENTERED"]
        assert isinstance(gate, threading.Event)
        assert isinstance(entered, threading.Event)
        gate.clear()
        entered.clear()
        in_flight = asyncio.create_task(infer_one(repository, "model", 1))
        assert await asyncio.to_thread(entered.wait, 30)  # the v1 request is inside the model

        add_model(tmp_path, "model", 2, add=200)
        reloading = asyncio.create_task(repository.reload())
        # Loading v2 takes real time in a thread, with nothing to await on: watch the routing
        # table switch (it must, before v1 drains); the test's timeout bounds the wait.
        while repository.get("model").version != "2":  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert await infer_one(repository, "model", 1) == 201
        assert not in_flight.done()
        assert not reloading.done()  # still draining v1

        gate.set()
        assert await in_flight == 101
        await reloading
        assert old.closed
        assert [m.version for m in repository.models()] == ["2"]


COUNTING_MODEL = """
BATCH_SIZES = []

def predict(inputs):
    BATCH_SIZES.append(len(inputs["x"]))
    return {"y": inputs["x"]}
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [("[batching]\nmax_batch_size = 8", [1, 2, 4, 8]), ("warm_up = false", [])],
)
async def test_loading_warms_up_every_batch_size_unless_turned_off(
    tmp_path: Path, extra: str, expected: list[int]
) -> None:
    """At load the model runs once per batch size the batcher may form; warm_up = false skips it."""
    add_model(tmp_path, "counted", 1, add=0, extra=extra)
    (tmp_path / "counted" / "1" / "model.py").write_text(COUNTING_MODEL)
    async with ModelRepository(tmp_path) as repository:
        assert module_globals(repository, "counted", "1")["BATCH_SIZES"] == expected


HALF_PLUS_TWO = Path(__file__).parent / "data" / "tfserving" / "saved_model_half_plus_two_cpu"


async def test_tf_serving_layout_is_a_model(tmp_path: Path) -> None:
    """A folder of SavedModel version folders, no config, zero-padded: TF Serving's layout."""
    pytest.importorskip("tensorflow")
    import shutil

    from coserve.models import ModelFolder

    shutil.copytree(HALF_PLUS_TWO, tmp_path / "half_plus_two")
    async with ModelRepository(tmp_path) as repository:
        (status,) = repository.models()
        assert (status.name, status.version, status.platform) == (
            "half_plus_two",
            "123",
            "tensorflow_savedmodel",
        )
        result = await repository.get("half_plus_two").infer({"x": [[1.0], [5.0]]})
        assert result["y"].tolist() == [[2.5], [4.5]]
    # The same folder named directly (--model-base-path), under another name, with a label.
    folder = ModelFolder("hp2", HALF_PLUS_TWO, version_labels={"stable": 123, "gone": 7})
    async with ModelRepository(folders=lambda: [folder]) as repository:
        assert [m.name for m in repository.models()] == ["hp2"]
        assert repository.version_of_label("hp2", "stable") == "123"
        with pytest.raises(ModelNotFound, match="no version label 'gone'"):
            repository.version_of_label("hp2", "gone")  # names no served version: dropped


async def test_a_folder_of_folders_that_are_no_saved_models_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Version folders without saved_model.pb, and no config: the log says what is missing."""
    (tmp_path / "empty" / "1").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert repository.models() == []
    assert any(
        "empty" in r.getMessage() and "saved_model.pb" in r.getMessage() for r in caplog.records
    )


async def test_a_version_that_fails_leaves_the_others_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Versions load one by one: a broken one is skipped, retried once its files change."""
    add_model(tmp_path, "m", 1, add=1, extra='[versions]\npolicy = "all"')
    add_model(tmp_path, "m", 2, add=2, extra='[versions]\npolicy = "all"')
    broken = tmp_path / "m" / "2" / "model.py"
    good = broken.read_text()
    broken.write_text("this is not python\n")
    with caplog.at_level(logging.ERROR, logger="coserve.models"):
        async with ModelRepository(tmp_path) as repository:
            assert [m.version for m in repository.models()] == ["1"]
            caplog.clear()
            await repository.reload()  # unchanged: not tried again, so nothing logged
            assert not [r for r in caplog.records if "m v2" in r.getMessage()]
            broken.write_text(good)
            import os

            stat = broken.stat()  # make sure the change is seen on coarse-mtime filesystems
            os.utime(broken, (stat.st_atime, stat.st_mtime + 5))
            await repository.reload()
            assert [m.version for m in repository.models()] == ["1", "2"]
            assert await infer_one(repository, "m", 1) == 3  # the latest, v2


async def test_a_folder_of_non_ascii_digits_is_no_version(tmp_path: Path) -> None:
    """'²' and full-width digits pass str.isdigit but are not version numbers: skipped."""
    add_model(tmp_path, "plus_one", 1, add=1)
    (tmp_path / "plus_one" / "²").mkdir()
    (tmp_path / "plus_one" / "\uff11\uff12").mkdir()  # full-width 12
    async with ModelRepository(tmp_path) as repository:
        assert [m.version for m in repository.models()] == ["1"]


async def test_a_loaded_model_whose_config_breaks_keeps_serving(tmp_path: Path) -> None:
    """An edit that makes a served model's folder unreadable unloads nothing."""
    add_model(tmp_path, "plus_one", 1, add=1)
    config = tmp_path / "plus_one" / "config.toml"
    good = config.read_text()
    async with ModelRepository(tmp_path) as repository:
        handle = repository.get("plus_one")
        config.write_text(good + "\nnot_a_key = 1\n")
        await repository.reload()
        assert repository.get("plus_one") is handle
        assert await infer_one(repository, "plus_one", 1) == 2
        assert repository.unserved() == ["plus_one"]
        config.write_text(good)
        await repository.reload()
        assert repository.get("plus_one") is handle  # same config again: kept


async def test_a_fresh_reload_loads_changed_files_anew(tmp_path: Path) -> None:
    """reload(fresh=...) reloads a model whose config is unchanged (its files may be new)."""
    add_model(tmp_path, "plus", 1, add=1)
    async with ModelRepository(tmp_path) as repository:
        assert await infer_one(repository, "plus", 1) == 2
        add_model_file = tmp_path / "plus" / "1" / "model.py"
        add_model_file.write_text(textwrap.dedent(MODEL.format(add=5)))
        await repository.reload()
        assert await infer_one(repository, "plus", 1) == 2  # unchanged config: kept
        await repository.reload(fresh={"plus"})
        assert await infer_one(repository, "plus", 1) == 6
