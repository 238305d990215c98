"""What a model folder holds: its configuration and its version folders, in the layouts in use.

A model folder is ``<model>/<version>/...`` with numbered version folders, and the first of:

- ``config.toml``: coserve's own configuration (``_config``), which wins over a
  ``config.pbtxt`` beside it;
- ``config.pbtxt``: Triton's (``_triton_config``), completed from the model file where it lacks
  inputs or outputs;
- nothing but version folders that hold a SavedModel (``<version>/saved_model.pb``): TensorFlow
  Serving's layout, served with its signature ``serving_default``. Version folders may be
  zero-padded (``00000123`` is version 123), as TF Serving's own test models are;
- nothing but version folders that hold one of Triton's model files (``<version>/model.onnx``,
  ``model.savedmodel``, ``model.pt``...): Triton's layout with no config, which Triton
  auto-completes from the file, and so does coserve.

A folder that serves nothing says why in the log; it is never skipped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from coserve._exceptions import ConfigError, ModelError
from coserve.models._config import BatchingConfig, ModelConfig, VersionPolicy
from coserve.models._triton_config import TRITON_FILES, holds_triton_model, read_triton_config

__all__ = [
    "ModelFolder",
    "ModelLayout",
    "RepositoryFolders",
    "read_model_folder",
    "repository_folders",
    "triton_config_problem",
]

logger = logging.getLogger("coserve.models")

_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


@dataclass(frozen=True, slots=True)
class ModelFolder:
    """One model folder to serve, and what the command line or a server config says of it.

    Attributes:
        name: The model's name (for a repository's folders, the folder's name).
        path: The folder holding the version folders.
        versions: Which versions to serve, overriding the folder's own config (TF Serving's
            ``model_version_policy``); None: the folder's config decides.
        version_labels: Names for versions (``stable`` → 42), TF Serving's ``version_labels``.
        batching: A batching policy for models whose folder has no coserve config (TF Serving's
            ``--enable_batching`` and batching parameters file); None: coserve's default.
        source: Where the folder was named, for messages (a config file, a flag).
        auto_complete: Complete a Triton config from the model file where it lacks inputs or
            outputs, or is missing (off: Triton's ``--strict-model-config``).
        config_text: A Triton config (text format) to serve the folder with instead of its own
            config file: the repository API's load with a config override; None: the folder's.
    """

    name: str
    path: Path
    versions: VersionPolicy | None = None
    version_labels: Mapping[str, int] = field(default_factory=dict)
    batching: BatchingConfig | None = None
    source: str = ""
    auto_complete: bool = True
    config_text: str | None = None


@dataclass(frozen=True, slots=True)
class ModelLayout:
    """A model folder, read: its config and the folder of each version it will serve.

    Attributes:
        config: The model's configuration.
        versions: The version folders to serve by version (``"123"`` → ``.../00000123``).
        labels: Version labels that name a version being served.
    """

    config: ModelConfig
    versions: Mapping[str, Path]
    labels: Mapping[str, str] = field(default_factory=dict)


def repository_folders(path: Path) -> list[ModelFolder]:
    """Every model folder of a repository: its sub-folders but hidden ones (``.git``)."""
    return [
        ModelFolder(folder.name, folder, source=str(path))
        for folder in sorted(p for p in path.iterdir() if p.is_dir())
        if not folder.name.startswith(".")
    ]


class RepositoryFolders:
    """A repository's model folders as a server serves them: a ``ModelRepository``'s ``folders``.

    Args:
        path: The repository folder.
        batching: The batching policy of folders without a coserve config (TF Serving's flags).
        auto_complete: Complete Triton configs from the model files (off:
            ``--strict-model-config``).
        wanted: Serve only these models (Triton's explicit model control; ``*``: all those
            there now); None: every folder, as it comes and goes. :attr:`wanted` may change
            while serving (the repository API's load and unload); the next reload follows it.
    """

    def __init__(
        self,
        path: Path,
        *,
        batching: BatchingConfig | None = None,
        auto_complete: bool = True,
        wanted: Iterable[str] | None = None,
    ) -> None:
        self.path = path
        self._batching = batching
        self._auto_complete = auto_complete
        chosen = None if wanted is None else set(wanted)
        if chosen is not None and "*" in chosen:  # all there is now; later ones by load
            chosen = set(self.names())
        self.wanted: set[str] | None = chosen
        self.overrides: dict[str, str] = {}
        """Configs (Triton's, text format) given by a load in place of a folder's own."""

    def names(self) -> list[str]:
        """Every model folder's name, wanted or not (blocking: it lists the folder)."""
        return [folder.name for folder in repository_folders(self.path)]

    def __call__(self) -> list[ModelFolder]:
        """The folders to serve now (blocking: it lists the folder)."""
        return [
            self._served(folder)
            for folder in repository_folders(self.path)
            if self.wanted is None or folder.name in self.wanted
        ]

    def folder(self, name: str) -> ModelFolder | None:
        """The folder of the model ``name`` as it would be served, wanted or not (blocking)."""
        found = [f for f in repository_folders(self.path) if f.name == name]
        return self._served(found[0]) if found else None

    def _served(self, folder: ModelFolder) -> ModelFolder:
        return dataclasses.replace(
            folder,
            batching=self._batching,
            auto_complete=self._auto_complete,
            config_text=self.overrides.get(folder.name),
        )


def read_model_folder(folder: ModelFolder) -> ModelLayout | None:
    """Read one model folder's config and pick its versions (blocking: it reads files).

    Returns None, having logged why, when the folder serves nothing.
    """
    path = folder.path
    if not path.is_dir():
        logger.error("model %s: %s is not a folder%s", folder.name, path, _named_in(folder))
        return None
    numbered = _version_folders(folder, log=True)
    config = _config(folder, numbered)
    if config is None:
        return None
    if folder.versions is not None:
        config = dataclasses.replace(config, versions=folder.versions)
    chosen = config.versions.select(list(numbered))
    if not chosen:
        logger.error(
            "model %s: no version folders to serve in %s (policy %s; found %s)",
            folder.name,
            path,
            config.versions.policy,
            ", ".join(str(v) for v in sorted(numbered)) or "none",
        )
        return None
    versions = {str(v): numbered[v] for v in chosen}
    labels = {}
    for label, version in sorted(folder.version_labels.items()):
        if str(version) in versions:
            labels[label] = str(version)
        else:
            logger.error(
                "model %s: version label %r names version %d, which is not served (serving %s)",
                folder.name,
                label,
                version,
                ", ".join(versions),
            )
    return ModelLayout(config, versions, labels)


def triton_config_problem(folder: ModelFolder) -> str | None:
    """Why the folder's Triton config (``config_text``, else its file) cannot be served, if so.

    For a load with a config override, whose caller is told the reason (blocking).
    """
    try:
        read_triton_config(
            folder.path,
            name=folder.name,
            versions=_version_folders(folder, log=False),
            policy=folder.versions,
            auto_complete=folder.auto_complete,
            text=folder.config_text,
        )
    except ModelError as error:
        return str(error)
    return None


def _version_folders(folder: ModelFolder, *, log: bool) -> dict[int, Path]:
    """The folder's version folders by number (``00000123`` is 123)."""
    warn = logger.warning if log else logger.debug
    numbered: dict[int, Path] = {}
    for entry in sorted(folder.path.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not (entry.name.isascii() and entry.name.isdigit()):
            warn(
                "model %s: folder %s is not a version (version folders are numbers)",
                folder.name,
                entry,
            )
            continue
        number = int(entry.name)
        if number in numbered:
            warn(
                "model %s: folders %s and %s are both version %d; serving %s",
                folder.name,
                numbered[number].name,
                entry.name,
                number,
                numbered[number].name,
            )
            continue
        numbered[number] = entry
    return numbered


def _config(folder: ModelFolder, numbered: Mapping[int, Path]) -> ModelConfig | None:
    path = folder.path
    toml = path / "config.toml"
    pbtxt = path / "config.pbtxt"
    if folder.config_text is not None:  # a load's override, in place of any config file
        return _triton(folder, numbered)
    if toml.is_file():
        if pbtxt.is_file():
            logger.debug(
                "model %s: reading config.toml; config.pbtxt beside it is not read", folder.name
            )
        try:
            config = ModelConfig.load(toml, name=folder.name)
        except ConfigError as error:
            logger.error("%s", error)
            return None
        return config
    if pbtxt.is_file():
        return _triton(folder, numbered)
    if any(_is_saved_model(v) for v in numbered.values()):
        # TensorFlow Serving's layout: every version folder is a SavedModel.
        return ModelConfig(
            name=folder.name,
            platform="tensorflow_savedmodel",
            filename=".",
            batching=folder.batching or BatchingConfig(),
            # As TF Serving: no warm-up without a warm-up file. Zeros or empty strings are no
            # input for a graph that parses tf.Examples with required features.
            warm_up=False,
        )
    if holds_triton_model(numbered.values()):
        return _triton(folder, numbered)  # Triton's layout with no config: auto-completed
    logger.warning(
        "folder %s: not served: it has no config.toml or config.pbtxt, and no version folder "
        "holds a model file to serve without one: %s (Triton's layout) or saved_model.pb "
        "(TensorFlow Serving's)%s",
        path,
        ", ".join(TRITON_FILES),
        _named_in(folder),
    )
    return None


def _triton(folder: ModelFolder, numbered: Mapping[int, Path]) -> ModelConfig | None:
    try:
        return read_triton_config(
            folder.path,
            name=folder.name,
            versions=numbered,
            policy=folder.versions,
            auto_complete=folder.auto_complete,
            text=folder.config_text,
        )
    except ModelError as error:  # a bad config, an unreadable or unsupported model file
        logger.error("model %s: not served: %s", folder.name, error)
        return None


def _is_saved_model(version: Path) -> bool:
    return any((version / name).is_file() for name in _SAVED_MODEL_FILES)


def _named_in(folder: ModelFolder) -> str:
    return f" (named in {folder.source})" if folder.source else ""
