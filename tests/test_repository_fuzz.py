"""A hypothesis fuzz of whole repositories: malformed config.pbtxt and models.config files.

Each bad file is one clear error naming the file (and a line, when it is a syntax or field
mistake), never a traceback out of the repository, and the other models still load.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coserve import ConfigError
from coserve.models import ModelRepository
from coserve.models._tfserving_config import ModelServerConfigFile
from test_model_repository import add_model

TRITON = Path(__file__).parent / "data" / "triton" / "simple"
GOOD_PBTXT = (TRITON / "config.pbtxt").read_text()
GOOD_MODELS_CONFIG = (
    "model_config_list {\n"
    "  config { name: 'a' base_path: '/m/a' model_platform: 'tensorflow'\n"
    "           model_version_policy { specific { versions: [1, 2] } }\n"
    "           version_labels { key: 'stable' value: 1 } }\n"
    "}\n"
)


def mutated(text: str) -> st.SearchStrategy[str]:
    """The text with a slice deleted, replaced or duplicated, or cut short."""
    index = st.integers(min_value=0, max_value=len(text))
    junk = st.text(alphabet="{}[]:;,\"'#<>-.0123456789abcxyz_ \n\t\\", max_size=12)
    return st.one_of(
        st.tuples(index, index).map(lambda ij: text[: min(ij)] + text[max(ij) :]),
        st.tuples(index, index, junk).map(
            lambda ijk: text[: min(ijk[:2])] + ijk[2] + text[max(ijk[:2]) :]
        ),
        index.map(lambda i: text[:i]),
    )


def record_messages(records: list[logging.LogRecord]) -> str:
    return "\n".join(r.getMessage() for r in records)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=mutated(GOOD_PBTXT))
def test_a_malformed_config_pbtxt_never_stops_the_other_models(tmp_path: Path, text: str) -> None:
    root = tmp_path / "repo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    add_model(root, "good", 1, add=1)
    shutil.copytree(TRITON, root / "simple")
    (root / "simple" / "config.pbtxt").write_text(text)
    handler = _Collect()
    logger = logging.getLogger("coserve.models")
    logger.addHandler(handler)
    try:

        async def load() -> list[str]:
            async with ModelRepository(root, warm_up=False) as repository:
                return [m.name for m in repository.models()]

        loop = asyncio.new_event_loop()  # its own: asyncio.run would reset pytest's loop
        try:
            names = loop.run_until_complete(load())
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
    finally:
        logger.removeHandler(handler)
    assert "good" in names
    if "simple" not in names:  # not served: one log line says why, naming the file or folder
        problems = [r for r in handler.records if r.levelno >= logging.WARNING]
        assert problems, "a folder not served without a word"
        assert any("simple" in r.getMessage() for r in problems), record_messages(problems)
        assert not any(
            r.exc_info
            for r in problems
            if "simple" in r.getMessage()
            and "config" in r.getMessage()
            and r.levelno == logging.ERROR
            and "Traceback" in r.getMessage()
        )


@settings(max_examples=150, deadline=None)
@given(text=mutated(GOOD_MODELS_CONFIG))
def test_a_malformed_models_config_is_one_error_naming_the_file(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "models.config"
        path.write_text(text)
        message = ""
        try:
            folders = ModelServerConfigFile(path, batching=None, poll=0).folders()
        except ConfigError as error:
            message = str(error)
        else:
            assert all(f.name for f in folders)
        assert not message or message.startswith(str(path)), message
