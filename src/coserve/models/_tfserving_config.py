"""TensorFlow Serving's configuration files, read into coserve's own configuration.

- ``--model_config_file``: a ``ModelServerConfig`` text file (``model_config_list { config {
  name, base_path, model_platform, model_version_policy, version_labels } }``) becomes the model
  folders to serve (:class:`ModelServerConfigFile`), re-read as often as the server polls it.
- ``--batching_parameters_file``: a ``BatchingParameters`` text file becomes the
  :class:`BatchingConfig` of every model it serves (:func:`batching_parameters`):

  ==========================  ==============================================================
  TF Serving                  coserve ``[batching]``
  ==========================  ==============================================================
  ``max_batch_size``          ``max_batch_size`` (default 1000, as TF Serving's)
  ``batch_timeout_micros``    ``max_wait`` = µs / 10⁶ (default 0)
  ``num_batch_threads``       ``max_concurrent_batches`` (default: the CPUs; TF Serving's
                              pool is shared by every model, coserve's slots are per model)
  ``max_enqueued_batches``    ``max_queue_size`` = that * ``max_batch_size`` (default 10)
  ``allowed_batch_sizes``     ``allowed_batch_sizes`` with ``pad_to_allowed_batch_size``
                              (TF Serving always pads a batch up to the next allowed size)
  ``pad_variable_length_      ``[padding]`` of every input whose dimension 1 varies, padded
  inputs``                    with the tensor's first element as TF Serving pads, to
                              power-of-two buckets (TF Serving pads to the batch's longest,
                              and every dimension; coserve pads dimension 1, and batches the
                              others by exact shape)
  ==========================  ==============================================================

A field coserve does not apply (large-batch splitting, thread pool names,
``logging_config``...) is a warning that names it and its line; a field neither message has is
an error naming the file and line (``_textproto``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from coserve._exceptions import ConfigError
from coserve.models._config import BatchingConfig, PaddingConfig, VersionPolicy
from coserve.models._layout import ModelFolder
from coserve.models._textproto import Decoded, load
from coserve.models._textproto_schemas import (
    TFS_BATCHING_PARAMETERS,
    TFS_MODEL_SERVER_CONFIG,
)

__all__ = ["NO_BATCHING", "ModelServerConfigFile", "batching_parameters"]

logger = logging.getLogger("coserve.models")

NO_BATCHING = BatchingConfig(max_batch_size=1024, max_concurrent_batches=4, combine_requests=False)
"""TF Serving without ``--enable_batching``: each request runs alone, a few at a time."""

_APPLIED_BATCHING = frozenset(
    {
        "max_batch_size",
        "batch_timeout_micros",
        "num_batch_threads",
        "max_enqueued_batches",
        "allowed_batch_sizes",
        "pad_variable_length_inputs",
    }
)

TFS_MAX_LENGTH = 65536
"""The longest dimension 1 ``pad_variable_length_inputs`` pads to (TF Serving has no bound)."""


def _wrapped(decoded: Decoded, key: str, default: int) -> int:
    """A ``google.protobuf.Int64Value``-style field's value (``max_batch_size { value: 8 }``)."""
    if key not in decoded:
        return default
    value: int = decoded[key].get("value", 0)
    return value


def batching_parameters(path: Path | None) -> BatchingConfig:
    """The batching policy a ``BatchingParameters`` file gives (None: TF Serving's defaults).

    Raises:
        ConfigError: The file cannot be read or parsed, or a value is out of range (naming the
            file and line).
    """
    if path is None:
        return BatchingConfig(
            max_batch_size=1000,
            max_concurrent_batches=os.cpu_count() or 1,
            max_queue_size=10 * 1000,
        )
    decoded = load(path, TFS_BATCHING_PARAMETERS)
    for key in decoded:
        if key not in _APPLIED_BATCHING:
            logger.warning(
                "%s: %s is not applied by coserve (it batches without it)", decoded.where(key), key
            )
    max_batch_size = _wrapped(decoded, "max_batch_size", 1000)
    timeout_micros = _wrapped(decoded, "batch_timeout_micros", 0)
    threads = _wrapped(decoded, "num_batch_threads", os.cpu_count() or 1)
    enqueued = _wrapped(decoded, "max_enqueued_batches", 10)
    for key, value, least in (
        ("max_batch_size", max_batch_size, 1),
        ("batch_timeout_micros", timeout_micros, 0),
        ("num_batch_threads", threads, 1),
        ("max_enqueued_batches", enqueued, 1),
    ):
        if value < least:
            where = decoded.where(key) if key in decoded else str(path)
            raise ConfigError(f"{where}: {key} must be >= {least}, got {value}")
    allowed = tuple(decoded.get("allowed_batch_sizes", ()))
    if allowed:
        where = decoded.where("allowed_batch_sizes")
        if any(size < 1 for size in allowed) or list(allowed) != sorted(set(allowed)):
            raise ConfigError(f"{where}: allowed_batch_sizes must increase, got {list(allowed)}")
        if allowed[-1] != max_batch_size:
            raise ConfigError(
                f"{where}: the last of allowed_batch_sizes ({allowed[-1]}) must equal "
                f"max_batch_size ({max_batch_size})"
            )
    padding = None
    if decoded.get("pad_variable_length_inputs"):
        padding = PaddingConfig((), PaddingConfig.powers_of_two(TFS_MAX_LENGTH), value=None)
    return BatchingConfig(
        max_batch_size=max_batch_size,
        max_wait=timeout_micros / 1e6,
        max_concurrent_batches=threads,
        max_queue_size=enqueued * max_batch_size,
        allowed_batch_sizes=allowed,
        pad_to_allowed_batch_size=bool(allowed),
        padding=padding,
    )


class ModelServerConfigFile:
    """The models a ``ModelServerConfig`` text file names, re-read every ``poll`` seconds.

    Call :meth:`folders` on each reload: it re-reads the file when ``poll`` seconds have passed
    since the last read (never, for ``poll`` 0, after the first), else returns what it read.

    Args:
        path: The file (TF Serving's ``--model_config_file``).
        batching: The batching policy of its models (TF Serving's batching flags).
        poll: Seconds between reads (``--model_config_file_poll_wait_seconds``).
    """

    def __init__(self, path: Path, *, batching: BatchingConfig | None, poll: float) -> None:
        self.path = path
        self._batching = batching
        self._poll = poll
        self._read_at: float | None = None
        self._folders: list[ModelFolder] = []

    def __str__(self) -> str:
        return f"--model_config_file {self.path}"

    def folders(self) -> list[ModelFolder]:
        """The model folders the file names (blocking: it may read the file).

        Raises:
            ConfigError: The file cannot be read, or is not a ``ModelServerConfig``.
        """
        now = time.monotonic()
        if self._read_at is not None and (not self._poll or now - self._read_at < self._poll):
            return self._folders
        self._folders = self._read()
        self._read_at = now
        return self._folders

    def _read(self) -> list[ModelFolder]:
        decoded = load(self.path, TFS_MODEL_SERVER_CONFIG)
        if "custom_model_config" in decoded:
            raise ConfigError(
                f"{decoded.where('custom_model_config')}: custom_model_config is not supported; "
                "list the models in model_config_list"
            )
        listed = decoded.get("model_config_list")
        configs: list[Decoded] = [] if listed is None else listed.get("config", [])
        if not configs:
            logger.warning("%s: model_config_list names no models", self.path)
        # A bad entry for a model served from an earlier read keeps that model as it was (TF
        # Serving refuses the whole edit); a bad new one is skipped, the others still load.
        previous = {folder.name: folder for folder in self._folders}
        folders: list[ModelFolder] = []
        for config in configs:
            folder = self._folder(config)
            if folder is None and config.get("name") in previous:
                folder = previous[config["name"]]
                logger.error("model %s: kept as it was configured before", folder.name)
            if folder is not None:
                folders.append(folder)
        return folders

    def _folder(self, config: Decoded) -> ModelFolder | None:
        """One ``config { ... }`` entry; None (logged) if it cannot be served."""
        name: str = config.get("name", "")
        where = config.path if not config.positions else _first_position(config)
        if not name:
            logger.error("%s: a model config without a name is not served", where)
            return None
        base_path: str = config.get("base_path", "")
        if not base_path:
            logger.error("%s: model %s has no base_path; not served", where, name)
            return None
        platform = config.get("model_platform", "")
        if platform not in ("", "tensorflow"):
            logger.error(
                "%s: model %s: model_platform %r is not served (only 'tensorflow')",
                config.where("model_platform"),
                name,
                platform,
            )
            return None
        applied = ("name", "base_path", "model_platform", "model_version_policy", "version_labels")
        for key in config:
            if key not in applied:
                logger.warning(
                    "%s: model %s: %s is not applied by coserve", config.where(key), name, key
                )
        base = Path(base_path)
        if (
            not base.is_absolute()
        ):  # TF Serving wants absolute paths; relative to the file is kinder
            base = self.path.parent / base
        labels: dict[str, int] = dict(config.get("version_labels", {}))
        try:
            versions = _version_policy(config.get("model_version_policy"))
        except ConfigError as error:
            logger.error("%s; model %s is not served", error, name)
            return None
        return ModelFolder(
            name,
            base,
            versions=versions,
            version_labels=labels,
            batching=self._batching,
            source=str(self.path),
        )


def _first_position(config: Decoded) -> str:
    line, column = min(config.positions.values())
    return f"{config.path}:{line}:{column}"


def _version_policy(policy: Any) -> VersionPolicy | None:
    """``model_version_policy { latest { num_versions: 2 } | all {} | specific {...} }``."""
    if not policy:
        return None
    if "all" in policy:
        return VersionPolicy("all")
    if "specific" in policy:
        versions = tuple(policy["specific"].get("versions", ()))
        if not versions:
            raise ConfigError(
                f"{policy.where('specific')}: a specific version policy needs versions"
            )
        return VersionPolicy("specific", specific=versions)
    latest = policy.get("latest", {}).get("num_versions", 1) or 1
    return VersionPolicy("latest", latest=latest)
