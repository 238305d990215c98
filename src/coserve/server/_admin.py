"""The admin API (``coserve serve --admin``): read and change a model's batching while it serves.

Off unless ``--admin`` is given, and then answering loopback clients only (and the workers'
private Unix sockets): a change of batching options is an operator's act, not a client's.

- ``GET /v2/admin/models/{model}[/versions/{version}]/batching``: the options in force.
- ``POST`` to the same path with a JSON object of options (``max_batch_size``, ``max_wait``,
  ``max_concurrent_batches``, ``max_queue_size``, ``timeout``): applied from the next batch
  without dropping or failing a request (:meth:`ModelHandle.configure`); the answer is the
  options now in force. A bad value is a 400 and changes nothing.

With ``--workers N``, the worker that takes a change applies it, then passes it to every other
worker over their private sockets (``?local=1`` applies it on one worker only); a worker that
cannot be reached makes the answer a 502 naming it (the others keep the change).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coserve._exceptions import InvalidInput
from coserve.models import ModelHandle, ModelRepository
from coserve.server._responses import endpoint, error_response, json_response, read_body
from coserve.server._workers import WorkerInfo, local_request

__all__ = ["admin_routes", "is_local"]

_MAX_BODY = 64 * 1024
_LOOPBACK = ("127.", "::1", "::ffff:127.")


def is_local(request: Request) -> bool:
    """Whether the request came over loopback or a Unix socket (no client address)."""
    client = request.client
    return client is None or not client.host or client.host.startswith(_LOOPBACK)


def _options(handle: ModelHandle) -> dict[str, Any]:
    return {
        "name": handle.name,
        "version": handle.version,
        "batching": {option: getattr(handle.batching, option) for option in handle.LIVE_OPTIONS},
    }


def admin_routes(repository: ModelRepository, worker: WorkerInfo | None) -> list[Route]:
    """The admin API's routes, for ``create_app`` to add when ``--admin`` is given."""

    async def batching(request: Request) -> Response:
        if not is_local(request):
            return error_response("the admin API answers loopback clients only", 403)
        handle = repository.get(request.path_params["model"], request.path_params.get("version"))
        if request.method == "GET":
            return json_response(_options(handle))
        body = await read_body(request, _MAX_BODY)
        try:
            changes = json.loads(body)
        except ValueError as error:
            raise InvalidInput(f"the body must be a JSON object of options: {error}") from None
        if not isinstance(changes, dict):
            raise InvalidInput(
                'the body must be a JSON object of options, e.g. {"max_batch_size": 16}'
            )
        handle.configure(changes)
        if worker is not None and worker.count > 1 and request.query_params.get("local") != "1":
            failed = await _pass_on(worker, request.url.path, body)
            if failed:
                return error_response(
                    f"applied on worker {worker.index}; not on {'; '.join(failed)}", 502
                )
        return json_response(_options(handle))

    paths = (
        "/v2/admin/models/{model}/batching",
        "/v2/admin/models/{model}/versions/{version}/batching",
    )
    return [Route(path, endpoint(batching), methods=["GET", "POST"]) for path in paths]


async def _pass_on(worker: WorkerInfo, path: str, body: bytes) -> list[str]:
    """POST the change to every other worker; what failed, as ``worker i: why``."""
    siblings = [i for i in range(worker.count) if i != worker.index]
    answers = await asyncio.gather(
        *(
            local_request(worker.socket_path(i), "POST", f"{path}?local=1", body, timeout=10.0)
            for i in siblings
        )
    )
    failed = []
    for index, answer in zip(siblings, answers, strict=True):
        if answer is None:
            failed.append(f"worker {index}: it did not answer")
        elif answer[0] != 200:
            failed.append(f"worker {index}: {answer[0]} {answer[1].decode(errors='replace')}")
    return failed
