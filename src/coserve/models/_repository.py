"""The model repository: ``<repo>/<model>/config.toml`` plus ``<repo>/<model>/<version>/`` folders.

Loading blocks (TensorFlow takes seconds), so it runs in a worker thread and the event loop keeps
serving. ``reload()`` loads what was added or changed before it unloads anything, swaps the routing
table in one step, and only then drains and closes the replaced versions: requests in flight on an
old version finish on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self

from coserve._exceptions import ConfigError, ModelLoadError, ModelNotFound
from coserve.models._backend import Backend
from coserve.models._config import ModelConfig
from coserve.models._handle import ModelHandle

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
}


def bundled_repository() -> Path:
    """The model repository shipped inside the package (the digits demo models)."""
    return Path(str(resources.files("coserve") / "demo_models"))


def load_backend(config: ModelConfig, version_dir: Path) -> Backend:
    """Load one version of a model with the backend its platform names (blocking).

    Raises:
        ModelLoadError: The model file is missing or cannot be loaded.
        MissingDependency: The backend's optional extra is not installed.
    """
    path = version_dir / (config.filename or DEFAULT_FILENAMES[config.platform])
    if not path.exists():
        raise ModelLoadError(f"model {config.name!r}: {path} does not exist")
    common = {
        "name": config.name,
        "version": version_dir.name,
        "inputs": config.inputs,
        "outputs": config.outputs,
    }
    if config.platform == "python":
        from coserve.models.backends.python import load_python_model

        return load_python_model(path, **common)  # type: ignore[arg-type]
    if config.platform == "tensorflow_savedmodel":
        from coserve.models.backends.tensorflow import TensorFlowSavedModel

        return TensorFlowSavedModel(
            path,
            signature=config.signature,
            threads=config.threads,
            **common,  # type: ignore[arg-type]
        )
    if config.platform == "tensorflow_keras":
        from coserve.models.backends.tensorflow import TensorFlowKeras

        return TensorFlowKeras(path, threads=config.threads, **common)  # type: ignore[arg-type]
    if config.platform == "onnx_onnxv1":
        from coserve.models.backends.onnx import OnnxModel

        return OnnxModel(path, threads=config.threads, **common)  # type: ignore[arg-type]
    from coserve.models.backends.torch import TorchModel

    return TorchModel(
        path,
        exported=config.platform == "pytorch_export",
        threads=config.threads,
        **common,  # type: ignore[arg-type]
    )


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
        path: The repository folder; None serves the bundled demo models.
        warm_up: Run every batch size once at load (unless a model's config says otherwise).
    """

    def __init__(self, path: Path | str | None = None, *, warm_up: bool = True) -> None:
        self.path = Path(path) if path is not None else bundled_repository()
        self._warm_up = warm_up
        self._configs: dict[str, ModelConfig] = {}
        self._handles: dict[str, dict[str, ModelHandle]] = {}
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

    async def reload(self) -> None:
        """Bring the loaded models in line with the folder, without dropping a request.

        Added, changed and new-version models are loaded first; then the routing table is
        swapped; then removed and replaced versions are unloaded once their requests finish.

        A model whose folder fails to load is logged and skipped (the others still load); if it
        was loaded before, its old versions keep serving.

        Raises:
            ModelLoadError: The repository folder does not exist.
        """
        async with self._reload_lock:
            if not self.path.is_dir():
                raise ModelLoadError(f"model repository {self.path} is not a folder")
            wanted = await asyncio.to_thread(self._scan)
            new_handles: dict[str, dict[str, ModelHandle]] = {}
            new_configs: dict[str, ModelConfig] = {}
            for name, (config, versions) in sorted(wanted.items()):
                old = self._handles.get(name, {})
                same_config = self._configs.get(name) == config
                kept = {v: h for v, h in old.items() if v in versions and same_config}
                try:
                    for version in versions:
                        if version not in kept:
                            kept[version] = await self._load(config, version)
                except Exception as error:
                    logger.error("model %s: not loaded: %s", name, error, exc_info=error)
                    loaded_now = [h for v, h in kept.items() if old.get(v) is not h]
                    for handle in loaded_now:
                        await handle.aclose()
                    if old:  # keep serving what was there
                        new_handles[name] = old
                        new_configs[name] = self._configs[name]
                    continue
                new_handles[name] = kept
                new_configs[name] = config
            retired = [
                handle
                for name, versions in self._handles.items()
                for version, handle in versions.items()
                if new_handles.get(name, {}).get(version) is not handle
            ]
            self._handles, self._configs = new_handles, new_configs
            for handle in retired:
                logger.info(
                    "model %s v%s: unloading after its requests finish", handle.name, handle.version
                )
                await handle.aclose()

    def _scan(self) -> dict[str, tuple[ModelConfig, list[str]]]:
        """Read every model folder's config and pick its versions (runs in a thread)."""
        found: dict[str, tuple[ModelConfig, list[str]]] = {}
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            if folder.name.startswith("."):
                continue  # hidden (.git, editors' folders): not meant as models
            config_path = folder / "config.toml"
            if not config_path.is_file():
                # Never silently: a folder someone put here and that serves nothing.
                logger.warning(
                    "folder %s: not served: it has no config.toml (a model folder needs one, "
                    "beside its numbered version folders)",
                    folder,
                )
                continue
            try:
                config = ModelConfig.load(config_path)
            except ConfigError as error:
                logger.error("%s", error)
                continue
            available = []
            for entry in folder.iterdir():
                if not entry.is_dir():
                    continue
                if entry.name.isdigit():
                    available.append(int(entry.name))
                elif not entry.name.startswith("."):
                    logger.warning(
                        "model %s: folder %s is not a version (version folders are numbers)",
                        config.name,
                        entry,
                    )
            versions = [str(v) for v in config.versions.select(available)]
            if not versions:
                logger.error("model %s: no version folders to serve in %s", config.name, folder)
                continue
            found[config.name] = (config, versions)
        return found

    async def _load(self, config: ModelConfig, version: str) -> ModelHandle:
        start = time.perf_counter()
        backend = await asyncio.to_thread(load_backend, config, self.path / config.name / version)
        warm = 0.0
        if self._warm_up and config.warm_up:
            sizes = config.batching.warm_up_sizes()
            try:
                warm = await asyncio.to_thread(backend.warm_up, sizes)
            except Exception as error:
                await asyncio.to_thread(backend.close)
                raise ModelLoadError(f"model {config.name!r}: warm-up failed: {error!r}") from error
        b = config.batching
        logger.info(
            "model %s v%s (%s) loaded in %.2fs (warm-up %.2fs); batching: max_batch_size=%d"
            " max_wait=%gs slots=%d max_queue_size=%d timeout=%s",
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
        )
        return ModelHandle(backend, config.batching, labels=config.labels)

    async def aclose(self, *, grace_period: float | None = None) -> None:
        """Drain and unload every model."""
        async with self._reload_lock:
            handles = [h for versions in self._handles.values() for h in versions.values()]
            self._handles, self._configs = {}, {}
            await asyncio.gather(*(h.aclose(grace_period=grace_period) for h in handles))
