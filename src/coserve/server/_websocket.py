"""Streaming inference over one WebSocket: ``/v2/models/{m}[/versions/{v}]/infer/ws``.

The talk's actor pattern: the connection's handler (the parent) reads messages and spawns one
cheap child coroutine per request; each child awaits the model's batcher and answers over the
socket as soon as its result is ready, tagged with the request's ``id``, in any order. The
children hand their answers to a single writer through a bounded channel, so writes never
interleave, and a connection may have at most ``max_in_flight`` requests at once (reading pauses
at the cap: backpressure, not unbounded buffering).

Messages are Open Inference Protocol requests as JSON text; answers are inference responses,
or ``{"id": ..., "error": "...", "status": 400}`` for a request that failed. A bad message never
closes the connection. When the client goes away, its requests still queued are dropped before
they run. Messages are held to the server's ``max_json_size`` (status 413), and a large one is
decoded in a decoder process, as on the HTTP route.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from coserve._exceptions import ChannelError, CoserveError, InvalidInput, ModelNotFound
from coserve.channels import open_channel
from coserve.models import ModelHandle
from coserve.server._classification import check_classifiable, classify
from coserve.server._decoding import decode_soon
from coserve.server._errors import report
from coserve.server._service import InferenceService
from coserve.server._v2_codec import decode_request_async, encode_response

__all__ = ["CLOSE_MODEL_NOT_FOUND", "CLOSE_TRY_LATER", "PROTOCOL", "websocket_endpoint"]


CLOSE_MODEL_NOT_FOUND = 4404
"""Close code when the URL names no loaded model (application range, after HTTP's 404)."""
CLOSE_TRY_LATER = 1013
"""Close code when the server is not taking work (starting, or its models unloading)."""
PROTOCOL = "websocket"
"""The ``protocol`` label of these requests in the latency metric."""


def _request_id(body: bytes) -> Any:
    """The ``id`` of a message that failed, if it has one that can be echoed."""
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        message = orjson.loads(body)
        if isinstance(message, dict):
            request_id = message.get("id")
            # Never a list or object: echoing one could nest deeper than orjson writes.
            if request_id is None or isinstance(request_id, str | int | float):
                return request_id
    return None


async def _answer(
    service: InferenceService,
    handle: ModelHandle,
    text: str | bytes | None,
    max_json_size: int,
    headers: list[tuple[bytes, bytes]],
) -> bytes:
    """One child's work: decode, infer, encode; errors become an error message for its id.

    ``headers`` are the connection's: each message continues the trace its upgrade named.
    """
    call = service.begin(PROTOCOL, headers)
    body = b""
    try:
        if text is None:
            raise InvalidInput("send requests as JSON text messages")
        body = text.encode() if isinstance(text, str) else text
        decoded = await decode_request_async(body, None, max_json_size=max_json_size)
        decoded.binary_outputs.clear()  # one JSON message per answer
        decoded.all_outputs_binary = False
        check_classifiable(handle.output_datatypes, decoded.classification)
        outputs = await service.infer(
            handle,
            decoded.inputs,
            outputs=decoded.outputs,
            parameters=decoded.parameters,
            call=call,
        )
        outputs, datatypes = classify(
            outputs,
            handle.output_datatypes,
            decoded.classification,
            handle.labels,
            batched=handle.backend.batched,
        )
        answer, _ = encode_response(
            model=handle.name,
            version=handle.version,
            request=decoded,
            outputs=outputs,
            datatypes=datatypes,
        )
        service.observe(call, handle, 200)
        return answer
    except Exception as error:  # the request still gets its one answer (and, if a bug, a log)
        failure = report(error, f"websocket inference on {handle.name}")
        service.observe(call, handle, failure.status)
        request_id = await _failed_id(body, max_json_size)
        return orjson.dumps({"id": request_id, "error": failure.message, "status": failure.status})


async def _failed_id(body: bytes, max_json_size: int) -> Any:
    # Parsed again only on failure; a large message in a decoder process, like its decode.
    if len(body) > max_json_size:
        return None
    with contextlib.suppress(Exception):  # the answer goes out, with or without its id
        finding = decode_soon(len(body), _request_id, body)
        return await finding if isinstance(finding, asyncio.Future) else finding
    return None


def websocket_endpoint(
    service: InferenceService, max_in_flight: int = 256
) -> Callable[[WebSocket], Awaitable[None]]:
    """The WebSocket handler; ``max_in_flight`` bounds each connection's concurrent requests."""

    async def handler(websocket: WebSocket) -> None:
        await websocket.accept()
        name = websocket.path_params["model"]
        try:
            handle = service.resolve(name, websocket.path_params.get("version"))
        except CoserveError as error:
            code = CLOSE_MODEL_NOT_FOUND if isinstance(error, ModelNotFound) else CLOSE_TRY_LATER
            await websocket.close(code=code, reason=str(error)[:120])
            return
        max_json_size = service.state.limits.max_json_size
        headers = websocket.headers.raw
        answers_in, answers_out = open_channel[bytes](max_in_flight)
        slots = asyncio.Semaphore(max_in_flight)
        children: set[asyncio.Task[None]] = set()

        async def child(text: str | bytes | None) -> None:
            try:
                await answers_in.send(await _answer(service, handle, text, max_json_size, headers))
            except ChannelError:
                pass  # the connection closed first: nobody is left to answer
            finally:
                slots.release()

        async def writer() -> None:
            async with answers_out:
                async for payload in answers_out:
                    await websocket.send_text(payload.decode())

        writing = asyncio.create_task(writer())
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await slots.acquire()
                task = asyncio.create_task(child(message.get("text") or message.get("bytes")))
                children.add(task)
                task.add_done_callback(children.discard)
        except WebSocketDisconnect:
            pass
        finally:
            # The client is gone (or the server is stopping): drop what has not run yet.
            for task in list(children):
                task.cancel()
            await asyncio.gather(*children, return_exceptions=True)
            answers_in.close()
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writing

    return handler
