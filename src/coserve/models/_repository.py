"""The model repository: model folders (``<repo>/<model>/<version>/``), loaded and kept in step.

The folders are a repository's sub-folders, or a list that the command line or a server config
file names (TensorFlow Serving's ``--model_base_path`` and ``--model_config_file``), re-read on
every reload; ``_layout`` reads each one.

Loading blocks (TensorFlow takes seconds), so it runs in a worker thread and the event loop keeps
serving. ``reload()`` loads what was added or changed before it unloads anything, swaps the routing
table in one step, and only then drains and closes the replaced versions: requests in flight on an
old version finish on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from coserve._exceptions import ConfigError, ModelLoadError, ModelNotFound
from coserve.models._adapted import AdaptedBackend, model_specs, needs_adapting
from coserve.models._backend import Backend
from coserve.models._config import ModelConfig
from coserve.models._ensemble import EnsembleHandle, check_steps
from coserve.models._handle import ModelHandle
from coserve.models._layout import ModelFolder, ModelLayout, read_model_folder, repository_folders
from coserve.models._sequence import SequenceHandle

__all__ = [
    "DEFAULT_FILENAMES",
    "ModelRepository",
    "ModelStatus",
    "bundled_repository",
    "load_backend",
]

logger = logging.getLogger("coserve.models")

DEFAULT_FILENAMES = {
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_keras": "model.keras",
    "onnx_onnxv1": "model.onnx",
    "pytorch_torchscript": "model.pt",
    "pytorch_export": "model.pt2",
    "python": "model.py",
    "triton_python": "model.py",
}


def bundled_repository() -> Path:
    """The model repository shipped inside the package (the digits demo models)."""
    return Path(str(resources.files("coserve") / "demo_models"))


def load_backend(config: ModelConfig, version_dir: Path, version: str | None = None) -> Backend:
    """Load one version of a model with the backend its platform names (blocking).

    ``version`` is the version's name (default: the folder's name; ``00000123`` is ``123``).

    Raises:
        ModelLoadError: The model file is missing or cannot be loaded.
        MissingDependency: The backend's optional extra is not installed.
    """
    path = version_dir / (config.filename or DEFAULT_FILENAMES[config.platform])
    if (
        config.platform == "tensorflow_savedmodel"
        and config.filename is None
        and not path.exists()
        and (version_dir / "saved_model.pb").is_file()
    ):
        path = version_dir  # the version folder is the SavedModel, as in TF Serving's layout
    if not path.exists():
        raise ModelLoadError(f"model {config.name!r}: {path} does not exist")
    common: dict[str, Any] = {
        "name": config.name,
        "version": version or str(int(version_dir.name)),
        # As the model file has them: a reshape is undone by the AdaptedBackend around it.
        "inputs": model_specs(config, config.inputs),
        "outputs": model_specs(config, config.outputs),
    }
    backend: Backend
    if config.platform == "python":
        from coserve.models.backends.python import load_python_model

        backend = load_python_model(path, **common)
    elif config.platform == "triton_python":
        from coserve.models.backends.triton_python import TritonPythonModelBackend

        backend = TritonPythonModelBackend(path, config=config, **common)
    elif config.platform == "tensorflow_savedmodel":
        from coserve.models.backends.tensorflow import TensorFlowSavedModel

        backend = TensorFlowSavedModel(
            path, signature=config.signature, threads=config.threads, **common
        )
    elif config.platform == "tensorflow_keras":
        from coserve.models.backends.tensorflow import TensorFlowKeras

        backend = TensorFlowKeras(path, threads=config.threads, **common)
    elif config.platform == "onnx_onnxv1":
        from coserve.models.backends.onnx import OnnxModel

        backend = OnnxModel(path, threads=config.threads, **common)
    else:
        from coserve.models.backends.torch import TorchModel

        backend = TorchModel(
            path, exported=config.platform == "pytorch_export", threads=config.threads, **common
        )
    if needs_adapting(config, backend):
        return AdaptedBackend(backend, config)
    return backend


def _newest_change(folder: Path) -> float:
    """The newest modification time under a version folder (0 if it cannot be read)."""
    try:
        newest = folder.stat().st_mtime
        for root, dirs, files in os.walk(folder):
            for entry in (*dirs, *files):
                with contextlib.suppress(OSError):  # removed while walking
                    newest = max(newest, os.stat(os.path.join(root, entry)).st_mtime)
    except OSError:
        return 0.0
    return newest


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One loaded model version, as listings report it."""

    name: str
    version: str
    platform: str


class ModelRepository:
    """Every model in a repository folder, each version behind its own :class:`ModelHandle`.

    Use it as an async context manager (loads on entry, drains and unloads on exit)::

        async with ModelRepository("models/") as repository:
            handle = repository.get("digits")
            outputs = await handle.infer({"image": images})

    Args:
        path: The repository folder; None serves the bundled demo models (unless ``folders``
            is given).
        folders: Instead of a repository folder, the model folders to serve: called on every
            reload, in a worker thread (it may read a config file); a ``ConfigError`` it raises
            keeps the models loaded as they are.
        description: What the models come from, for logs (default: the repository's path).
        warm_up: Run every batch size once at load (unless a model's config says otherwise).
    """

    def __init__(
        self,
        path: Path | str | None = None,
        *,
        folders: Callable[[], Sequence[ModelFolder]] | None = None,
        description: str | None = None,
        warm_up: bool = True,
    ) -> None:
        self.path: Path | None = None
        if folders is None:
            self.path = Path(path) if path is not None else bundled_repository()
        self.description = description or str(self.path)
        """What the models come from, as logs say it."""
        self._folders = folders
        self._warm_up = warm_up
        self._configs: dict[str, ModelConfig] = {}
        self._handles: dict[str, dict[str, ModelHandle]] = {}
        self._labels: dict[str, dict[str, str]] = {}
        # Versions that failed to load, with the config and files they failed with.
        self._failed: dict[tuple[str, str], tuple[ModelConfig, float]] = {}
        self._unserved: list[str] = []
        self._reload_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.reload()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def folders(self) -> Callable[[], Sequence[ModelFolder]] | None:
        """What lists the model folders, if given (a :class:`RepositoryFolders`, say)."""
        return self._folders

    # -- lookups -----------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ModelHandle:
        """The handle of a model version (default: its highest loaded version).

        Raises:
            ModelNotFound: No such model, or no such version of it.
        """
        versions = self._handles.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not loaded")
        if version is None:
            return versions[max(versions, key=int)]
        handle = versions.get(version)
        if handle is None:
            raise ModelNotFound(
                f"model {name!r} has no version {version!r}; loaded: "
                + ", ".join(sorted(versions, key=int))
            )
        return handle

    def version_of_label(self, name: str, label: str) -> str:
        """The version a version label names (TensorFlow Serving's ``version_labels``).

        Raises:
            ModelNotFound: No such model, or it has no such label.
        """
        self.get(name)
        labels = self._labels.get(name, {})
        version = labels.get(label)
        if version is None:
            known = ", ".join(sorted(labels)) or "none"
            raise ModelNotFound(f"model {name!r} has no version label {label!r}; labels: {known}")
        return version

    def labels(self, name: str) -> dict[str, str]:
        """A model's version labels and the versions they name."""
        return dict(self._labels.get(name, {}))

    def unserved(self) -> list[str]:
        """What the last reload could not serve, each logged with its reason.

        Folders by model name, versions as ``name vN``; Triton's ``--exit-on-error`` reads it.
        """
        return list(self._unserved)

    def config(self, name: str) -> ModelConfig:
        """The configuration a loaded model was read with.

        Raises:
            ModelNotFound: No such model.
        """
        try:
            return self._configs[name]
        except KeyError:
            raise ModelNotFound(f"model {name!r} is not loaded") from None

    def models(self) -> list[ModelStatus]:
        """Every loaded model version, sorted by name then version."""
        return [
            ModelStatus(name, version, handle.platform)
            for name in sorted(self._handles)
            for version, handle in sorted(self._handles[name].items(), key=lambda kv: int(kv[0]))
        ]

    def handles(self) -> list[ModelHandle]:
        """Every loaded handle, in the order of :meth:`models`."""
        return [self.get(m.name, m.version) for m in self.models()]

    # -- loading -----------------------------------------------------------------------------

    async def reload(self, *, fresh: Collection[str] = ()) -> None:
        """Bring the loaded models in line with the folder, without dropping a request.

        ``fresh`` names models to load anew even if their config is unchanged (Triton's
        explicit load of a model already loaded: its files may have changed).

        Added, changed and new-version models are loaded first; then the routing table is
        swapped; then removed and replaced versions are unloaded once their requests finish.

        A model whose folder cannot be read is logged and skipped (the others still load); a
        version that fails to load is logged and skipped (its model's other versions still
        load), and is not tried again until its files change. If none of a model's wanted
        versions loads, the versions it served before keep serving, and so does a model whose
        folder cannot be read any more (an edit gone wrong unloads nothing).

        Raises:
            ModelLoadError: The repository folder does not exist.
        """
        async with self._reload_lock:
            path = self.path
            if path is not None and not path.is_dir():
                raise ModelLoadError(f"model repository {path} is not a folder")
            unserved: list[str] = []
            unreadable: set[str] = set()
            try:
                wanted = await asyncio.to_thread(self._scan, unserved, unreadable)
            except ConfigError as error:
                if not self._handles and not self._configs:
                    raise
                logger.error("%s; the models loaded stay as they are", error)
                return
            new_handles: dict[str, dict[str, ModelHandle]] = {}
            new_configs: dict[str, ModelConfig] = {}
            new_labels: dict[str, dict[str, str]] = {}
            # Ensembles after the models they compose: each is checked against them as loaded.
            for name, (layout, stamps) in _load_order(wanted):
                config = layout.config
                old = self._handles.get(name, {})
                same_config = self._configs.get(name) == config and name not in fresh
                kept = {v: h for v, h in old.items() if v in layout.versions and same_config}
                kept = self._still_wired(kept, new_handles)
                # Each version on its own: one that fails (a half-copied folder) leaves the
                # others serving, and is tried again only once its files change.
                for version, folder in layout.versions.items():
                    if version in kept:
                        continue
                    key, stamp = (name, version), (config, stamps[version])
                    # An ensemble is tried on every reload: what it waits for is its composing
                    # models, not a change of its own files.
                    memo = self._failed.get(key) == stamp and name not in fresh
                    if memo and config.ensemble is None:
                        unserved.append(f"{name} v{version}")
                        continue
                    try:
                        kept[version] = await self._load(config, version, folder, new_handles)
                    except Exception as error:
                        if config.ensemble is None:
                            self._failed[key] = stamp
                        unserved.append(f"{name} v{version}")
                        logger.error(
                            "model %s v%s: not loaded (tried again %s): %s",
                            name,
                            version,
                            "when its files change" if config.ensemble is None else "on reload",
                            error,
                            # A bad ensemble is a config problem, said in full by its message.
                            exc_info=error if config.ensemble is None else None,
                        )
                    else:
                        self._failed.pop(key, None)
                if not kept:
                    old = self._still_wired(old, new_handles)
                    if old:  # nothing new would serve: keep serving what was there
                        new_handles[name] = old
                        new_configs[name] = self._configs[name]
                        new_labels[name] = self._labels.get(name, {})
                    continue
                new_handles[name] = kept
                new_configs[name] = config
                new_labels[name] = {label: v for label, v in layout.labels.items() if v in kept}
            for name, versions in self._handles.items():
                if name not in new_handles and name in unreadable:
                    logger.error("model %s: kept as it was loaded: its folder cannot be read", name)
                    new_handles[name] = versions
                    new_configs[name] = self._configs[name]
                    new_labels[name] = self._labels.get(name, {})
            retired = [
                handle
                for name, versions in self._handles.items()
                for version, handle in versions.items()
                if new_handles.get(name, {}).get(version) is not handle
            ]
            self._handles, self._configs, self._labels = new_handles, new_configs, new_labels
            self._unserved = unserved
            for handle in retired:
                logger.info(
                    "model %s v%s: unloading after its requests finish", handle.name, handle.version
                )
                await handle.aclose()

    def _scan(
        self, unserved: list[str], unreadable: set[str]
    ) -> dict[str, tuple[ModelLayout, dict[str, float]]]:
        """Read every model folder's config and pick its versions (runs in a thread).

        The names of folders that serve nothing (logged, with why) are added to ``unserved``.

        Each layout comes with each version's stamp: the newest modification time of its files.

        Raises:
            ConfigError: The list of folders cannot be read (a server config file).
        """
        folders = repository_folders(self.path) if self.path is not None else []
        if self._folders is not None:
            folders = list(self._folders())
        found: dict[str, tuple[ModelLayout, dict[str, float]]] = {}
        seen: dict[str, Path] = {}
        for folder in folders:
            if folder.name in seen:
                logger.error(
                    "model %s: named twice; serving the first, %s, not %s",
                    folder.name,
                    seen[folder.name],
                    folder.path,
                )
                unserved.append(f"{folder.name} ({folder.path})")
                continue
            seen[folder.name] = folder.path
            layout = read_model_folder(folder)
            if layout is None:
                unserved.append(folder.name)
                unreadable.add(folder.name)
            else:
                stamps = {v: _newest_change(path) for v, path in layout.versions.items()}
                found[folder.name] = (layout, stamps)
        return found

    def _still_wired(
        self, handles: dict[str, ModelHandle], loaded: dict[str, dict[str, ModelHandle]]
    ) -> dict[str, ModelHandle]:
        """``handles`` but the ensembles whose composing models no longer fit them (logged)."""
        wired = {}
        for version, handle in handles.items():
            if isinstance(handle, EnsembleHandle):
                try:
                    check_steps(handle.config, _lookup(loaded))
                except ConfigError as error:
                    logger.error(
                        "model %s v%s: not served any more: %s", handle.name, version, error
                    )
                    continue
            wired[version] = handle
        return wired

    async def _load(
        self,
        config: ModelConfig,
        version: str,
        folder: Path,
        loaded: dict[str, dict[str, ModelHandle]],
    ) -> ModelHandle:
        """Load one version; an ensemble is checked against the models ``loaded`` so far."""
        if config.ensemble is not None:
            check_steps(config, _lookup(loaded))
            logger.info(
                "model %s v%s (ensemble of %s) loaded",
                config.name,
                version,
                ", ".join(dict.fromkeys(step.model for step in config.ensemble.steps)),
            )
            # Resolved through the routing table at call time: reloads are picked up.
            return EnsembleHandle(config, version, self.get)
        start = time.perf_counter()
        backend = await asyncio.to_thread(load_backend, config, folder, version)
        warm = 0.0
        # A stateful model is not warmed up: zeros would be steps of no sequence to it.
        if self._warm_up and config.warm_up and config.sequence is None:
            sizes = config.batching.warm_up_sizes()
            try:
                warm = await asyncio.to_thread(backend.warm_up, sizes)
            except Exception as error:
                await asyncio.to_thread(backend.close)
                raise ModelLoadError(f"model {config.name!r}: warm-up failed: {error!r}") from error
        b = config.batching
        logger.info(
            "model %s v%s (%s) loaded in %.2fs (warm-up %.2fs); batching: max_batch_size=%d"
            " max_wait=%gs slots=%d max_queue_size=%d timeout=%s%s",
            config.name,
            version,
            config.platform,
            time.perf_counter() - start,
            warm,
            b.max_batch_size,
            b.max_wait,
            b.max_concurrent_batches,
            b.max_queue_size,
            f"{b.timeout:g}s" if b.timeout else "none",
            "" if b.combine_requests else " (each request alone: combine_requests=false)",
        )
        if config.sequence is not None:
            try:
                return SequenceHandle(
                    backend, config.batching, config.sequence, labels=config.labels
                )
            except ModelLoadError:
                await asyncio.to_thread(backend.close)
                raise
        return ModelHandle(backend, config.batching, labels=config.labels)

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Drain and unload every model."""
        async with self._reload_lock:
            handles = [h for versions in self._handles.values() for h in versions.values()]
            self._handles, self._configs = {}, {}
            # Ensembles drain first: their requests still need the composing models.
            for batch in (
                [h for h in handles if isinstance(h, EnsembleHandle)],
                [h for h in handles if not isinstance(h, EnsembleHandle)],
            ):
                await asyncio.gather(*(h.aclose(grace_period=grace_period) for h in batch))


def _lookup(loaded: dict[str, dict[str, ModelHandle]]) -> Callable[[str, str | None], ModelHandle]:
    """``ModelRepository.get`` over a routing table being built (``reload``'s)."""

    def get(name: str, version: str | None) -> ModelHandle:
        versions = loaded.get(name)
        if not versions:
            raise ModelNotFound(f"model {name!r} is not loaded")
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r} loaded")
        return versions[version]

    return get


def _load_order(
    wanted: dict[str, tuple[ModelLayout, dict[str, float]]],
) -> list[tuple[str, tuple[ModelLayout, dict[str, float]]]]:
    """Models by name, then ensembles, each after the ensembles it composes (nested ones).

    A cycle of ensembles is cut anywhere: the one loaded first finds the other missing.
    """
    order = [(name, item) for name, item in sorted(wanted.items()) if not _steps_of(item)]
    placed: set[str] = set()

    def place(name: str, visiting: set[str]) -> None:
        if name in placed or name in visiting:
            return
        visiting.add(name)
        for model in _steps_of(wanted[name]):
            if model in wanted and _steps_of(wanted[model]):
                place(model, visiting)
        placed.add(name)
        order.append((name, wanted[name]))

    for name in sorted(wanted):
        if _steps_of(wanted[name]):
            place(name, set())
    return order


def _steps_of(item: tuple[ModelLayout, dict[str, float]]) -> list[str]:
    ensemble = item[0].config.ensemble
    return [] if ensemble is None else [step.model for step in ensemble.steps]
