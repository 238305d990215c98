"""The admin API (``coserve serve --admin``): read and change a model's batching while it serves.

Off unless ``--admin`` is given, and then answering loopback peers only (and the workers'
private Unix sockets): a change of batching options is an operator's act, not a client's. With
``--admin`` no ``X-Forwarded-For`` is trusted (the peer is the socket's), and a request that
carries an ``Origin`` header (a browser's, which a web page may send to localhost) or a POST
that is not ``application/json`` is refused, so a page in the operator's browser cannot change
anything.

- ``GET /v2/admin/models/{model}[/versions/{version}]/batching``: the options in force.
  With a ``target_latency``, the answer's ``adaptive`` object holds what the adaptive mode
  learned and chose (:class:`~coserve.AdaptiveState`) on the worker that answered.
- ``POST`` to the same path with a JSON object of options (``max_batch_size``, ``max_wait``,
  ``max_concurrent_batches``, ``max_queue_size``, ``timeout``, ``target_latency`` as text such
  as ``"p99<20ms"`` or null): applied from the next batch without dropping or failing a request
  (:meth:`ModelHandle.configure`); the answer is the options now in force. A bad value is a
  400 and changes nothing.

With ``--workers N``, the worker that takes a change applies it, then passes it to every other
worker over their private sockets (``?local=1`` applies it on one worker only); a worker that
cannot be reached makes the answer a 502 naming it (the others keep the change). Two changes
sent at once to different workers may each reach the others in either order: send changes
one at a time. A worker the supervisor replaces after a crash starts from the model's config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
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


def is_local(request: Request) -> bool:
    """Whether the request came over a Unix socket or from a loopback address.

    A Unix socket is told by the server's own address (uvicorn gives ``(path, None)``), not by
    a missing client address, which a TCP peer that reset its connection also has.
    """
    server = request.scope.get("server")
    if server is not None and server[1] is None:
        return True
    client = request.client
    if client is None:
        return False
    try:
        address = ipaddress.ip_address(client.host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def _options(handle: ModelHandle) -> dict[str, Any]:
    batching = {option: getattr(handle.batching, option) for option in handle.LIVE_OPTIONS}
    target = batching["target_latency"]
    batching["target_latency"] = None if target is None else str(target)
    answer: dict[str, Any] = {"name": handle.name, "version": handle.version, "batching": batching}
    adaptive = handle.statistics().adaptive
    if adaptive is not None:  # what the adaptive mode learned and chose, on this worker
        answer["adaptive"] = dataclasses.asdict(adaptive)
    return answer


def admin_routes(repository: ModelRepository, worker: WorkerInfo | None) -> list[Route]:
    """The admin API's routes, for ``create_app`` to add when ``--admin`` is given."""

    async def batching(request: Request) -> Response:
        if not is_local(request):
            return error_response("the admin API answers loopback clients only", 403)
        if "origin" in request.headers:
            return error_response("the admin API does not answer browsers (Origin)", 403)
        handle = repository.get(request.path_params["model"], request.path_params.get("version"))
        if request.method == "GET":
            return json_response(_options(handle))
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            return error_response("send the options as Content-Type: application/json", 415)
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
            # The path as it came (still percent-encoded), so a sibling reads the same names.
            failed = await _pass_on(worker, request.scope["raw_path"].decode("ascii"), body)
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
