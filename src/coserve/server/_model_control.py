"""Triton's model repository extension: the repository's index, and loading and unloading.

``POST /v2/repository/index`` lists every model folder of the repository with its state
(``READY`` for each version served; ``UNAVAILABLE`` with a reason otherwise), or only the ready
ones with ``{"ready": true}``. ``POST /v2/repository/models/{m}/load`` and ``.../unload`` change
which models are served, in Triton's explicit model control mode
(``--model-control-mode explicit``) only, as in Triton: the repository reloads, which loads a
model before routing to it and drains one before unloading it, so no request is lost. A load
that fails is a 400 naming the model (the log says why). A load with a config override
(``"parameters": {"config": "<ModelConfig as JSON>"}``) serves the model with that config in
place of its folder's, until a load without one; a load with files (``file:...``) is refused.
Loading an ensemble loads its composing models too, as Triton does.

gRPC's ``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload``
(``_grpc_inference``) call the same methods (:meth:`ModelControl.repository_index`,
:meth:`~ModelControl.load_model`, :meth:`~ModelControl.unload_model`), so both protocols have
one behaviour and the same errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, text_format
from starlette.requests import Request
from starlette.responses import Response

from coserve._exceptions import InvalidInput, ModelNotFound, Unsupported
from coserve.models import ModelHandle, ModelRepository
from coserve.models._layout import RepositoryFolders, read_model_folder, triton_config_problem
from coserve.server._protos.model_config import ModelConfig
from coserve.server._responses import json_response, read_body
from coserve.server._v2_codec import load_json_object

__all__ = ["ModelControl"]

_MAX_BODY = 64 * 1024  # a load, an unload or an index request is a small JSON object


class ModelControl:
    """The repository API over one repository, in the server's model control mode.

    Args:
        repository: The served repository.
        folders: Its folders (None: the repository was not named as a folder, so there is no
            index to give and nothing to load).
        mode: Triton's model control mode: ``none``, ``poll`` or ``explicit``.
    """

    def __init__(
        self, repository: ModelRepository, folders: RepositoryFolders | None, mode: str
    ) -> None:
        self._repository = repository
        self._folders = folders
        self._mode = mode
        # One load or unload at a time: each changes what is wanted, then reloads, and a
        # failed load puts back what it changed; two at once would undo each other's.
        self._changing = asyncio.Lock()

    # -- the one implementation, shared by HTTP and gRPC -----------------------------------

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model folder and its state, as Triton's index entries.

        Each served version is ``{"name", "version", "state": "READY"}``; a folder not served
        is ``{"name", "state": "UNAVAILABLE", "reason"}``, left out when ``ready_only``.
        """
        names = (
            await asyncio.to_thread(self._folders.names)
            if self._folders is not None
            else sorted({m.name for m in self._repository.models()})
        )
        served: dict[str, list[str]] = {}
        for model in self._repository.models():
            served.setdefault(model.name, []).append(model.version)
        wanted = None if self._folders is None else self._folders.wanted
        entries: list[dict[str, str]] = []
        for name in names:
            versions = served.get(name)
            if versions:
                entries += [{"name": name, "version": v, "state": "READY"} for v in versions]
            elif not ready_only:
                reason = (
                    "unloaded"
                    if wanted is not None and name not in wanted
                    else "not served (the server's log says why)"
                )
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": reason})
        return entries

    async def load_model(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Serve the model ``name`` (or reload it), with the load's ``parameters``.

        ``config`` (a string: Triton's ``ModelConfig`` as JSON) serves the model with that
        config in place of its folder's; a later load without one goes back to the folder's.
        An ensemble's composing models are loaded with it. Loads and unloads run one at a time.

        Raises:
            Unsupported: Not in explicit mode, or a files override (``file:...``).
            InvalidInput: No such model folder, a config that is not a ModelConfig, or the
                model failed to load.
        """
        async with self._changing:
            await self._load(name, parameters or {})

    async def _load(self, name: str, parameters: Mapping[str, Any]) -> None:
        files = [key for key in parameters if key.startswith("file:")]
        if files:
            raise Unsupported(
                f"a load with files ({files[0]}) is not supported: coserve reads a model's "
                "files from its folder"
            )
        text = None if "config" not in parameters else config_text(name, parameters["config"])
        folders = self._explicit("load")
        if name not in await asyncio.to_thread(folders.names):
            raise InvalidInput(f"failed to load '{name}': no such model folder in {folders.path}")
        assert folders.wanted is not None  # explicit mode keeps a set
        before = set(map(id, self._handles(name)))
        wanted, overrides = set(folders.wanted), dict(folders.overrides)
        if text is None:
            folders.overrides.pop(name, None)
        else:
            folders.overrides[name] = text
        if text is not None:  # a bad override is the caller's to hear about, with its reason
            folder = folders.folder(name)
            assert folder is not None
            problem = await asyncio.to_thread(triton_config_problem, folder)
            if problem is not None:
                folders.overrides.clear()
                folders.overrides.update(overrides)
                raise InvalidInput(f"failed to load '{name}': {problem}")
        folders.wanted |= await asyncio.to_thread(_with_composing, folders, name)
        # Fresh: a load of a loaded model reloads it, as Triton does (its files may be new).
        await self._repository.reload(fresh={name})
        after = self._handles(name)
        if not after or any(id(handle) in before for handle in after):
            if not after:  # as it was: what this load added is not wanted
                folders.wanted.intersection_update(wanted | {h.name for h in self._all()})
            folders.overrides.clear()
            folders.overrides.update(overrides)
            raise InvalidInput(f"failed to load '{name}' (the server's log says why)")

    def _all(self) -> list[ModelHandle]:
        return [self._repository.get(m.name, m.version) for m in self._repository.models()]

    def _handles(self, name: str) -> list[ModelHandle]:
        return [
            self._repository.get(m.name, m.version)
            for m in self._repository.models()
            if m.name == name
        ]

    async def unload_model(self, name: str) -> None:
        """Drain the model ``name``'s requests, then unload it.

        Raises:
            Unsupported: Not in explicit mode.
            ModelNotFound: The model is not loaded.
        """
        async with self._changing:
            await self._unload(name)

    async def _unload(self, name: str) -> None:
        folders = self._explicit("unload")
        assert folders.wanted is not None
        if name not in folders.wanted and not any(
            m.name == name for m in self._repository.models()
        ):
            raise ModelNotFound(f"failed to unload '{name}': it is not loaded")
        folders.wanted.discard(name)
        folders.overrides.pop(name, None)  # a later load reads the folder's config again
        await self._repository.reload()

    # -- the HTTP endpoints ------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        """``POST /v2/repository/index``: every model folder and its state."""
        body = await self._body(request)
        return json_response(await self.repository_index(body.get("ready") is True))

    async def load(self, request: Request) -> Response:
        """``POST /v2/repository/models/{m}/load``: serve the model (or reload it)."""
        body = await self._body(request)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        await self.load_model(request.path_params["model"], parameters)
        return json_response({})

    async def unload(self, request: Request) -> Response:
        """``POST /v2/repository/models/{m}/unload``: drain the model's requests, then unload it."""
        await self._body(request)  # parameters such as unload_dependents: nothing to unload
        await self.unload_model(request.path_params["model"])
        return json_response({})

    def _explicit(self, what: str) -> RepositoryFolders:
        if self._mode != "explicit" or self._folders is None or self._folders.wanted is None:
            raise Unsupported(
                f"explicit model {what} is not allowed in model control mode {self._mode}: "
                "start the server with --model-control-mode explicit"
            )
        return self._folders

    async def _body(self, request: Request) -> dict[str, Any]:
        body = await read_body(request, _MAX_BODY)
        return load_json_object(body) if body.strip() else {}


def config_text(name: str, value: Any) -> str:
    """A load's ``config`` parameter (Triton's ModelConfig as JSON) in text format.

    Parsed as Triton parses it (protobuf's JSON mapping of ModelConfig), so a field that
    ModelConfig does not have is an error here, as there.

    Raises:
        InvalidInput: Not a string, or not a ModelConfig in JSON.
    """
    if not isinstance(value, str):
        raise InvalidInput(
            f"failed to load '{name}': parameter 'config' must be a string holding the "
            f"model's config as JSON, got {type(value).__name__}"
        )
    if not value.lstrip().startswith("{"):
        raise InvalidInput(
            f"failed to load '{name}': parameter 'config' must hold a JSON object (the "
            "model's config)"
        )
    message = ModelConfig()
    try:
        json_format.Parse(value, message)
    except json_format.ParseError as error:
        raise InvalidInput(
            f"failed to load '{name}': parameter 'config' is not a model config in JSON: {error}"
        ) from None
    return text_format.MessageToString(message)


def _with_composing(folders: RepositoryFolders, name: str) -> set[str]:
    """The model and, for an ensemble, every model its steps use, however deep (blocking)."""
    found: set[str] = {name}
    seen: set[str] = set()
    todo = [name]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        folder = folders.folder(model)
        if folder is None:  # a step's model with no folder: the ensemble's load says so
            continue
        found.add(model)
        layout = read_model_folder(folder)
        if layout is not None and layout.config.ensemble is not None:
            todo += [step.model for step in layout.config.ensemble.steps]
    return found
