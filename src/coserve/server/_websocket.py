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
they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from coserve._exceptions import ChannelError, CoserveError, InvalidInput
from coserve.channels import open_channel
from coserve.models import ModelHandle, ModelRepository
from coserve.server._codec import decode_request_async, encode_response
from coserve.server._http import status_of

__all__ = ["CLOSE_MODEL_NOT_FOUND", "websocket_endpoint"]

logger = logging.getLogger("coserve.server")

CLOSE_MODEL_NOT_FOUND = 4404
"""Close code when the URL names no loaded model (application range, after HTTP's 404)."""


def _request_id(text: str | bytes) -> Any:
    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
        message = orjson.loads(text)
        if isinstance(message, dict):
            return message.get("id")
    return None


async def _answer(handle: ModelHandle, text: str | bytes | None) -> bytes:
    """One child's work: decode, infer, encode; errors become an error message for its id."""
    request_id = None
    try:
        if text is None:
            raise InvalidInput("send requests as JSON text messages")
        request_id = _request_id(text)
        decoded = await decode_request_async(text.encode() if isinstance(text, str) else text, None)
        decoded.binary_outputs.clear()  # one JSON message per answer
        decoded.all_outputs_binary = False
        outputs = await handle.infer(decoded.inputs, outputs=decoded.outputs)
        body, _ = encode_response(
            model=handle.name,
            version=handle.version,
            request=decoded,
            outputs=outputs,
            datatypes={s.name: s.datatype for s in handle.outputs},
        )
        return body
    except CoserveError as error:
        status = status_of(error)
        if status == 500:
            logger.error("websocket request failed: %s", error, exc_info=error)
        return orjson.dumps({"id": request_id, "error": str(error), "status": status})
    except Exception as error:  # a bug: the request still gets its one answer, and a log line
        logger.exception("websocket request %r: internal error", request_id)
        message = f"internal error: {error!r}"
        return orjson.dumps({"id": request_id, "error": message, "status": 500})


def websocket_endpoint(repository: ModelRepository, max_in_flight: int = 256) -> Any:
    """The WebSocket handler; ``max_in_flight`` bounds each connection's concurrent requests."""

    async def handler(websocket: WebSocket) -> None:
        await websocket.accept()
        name = websocket.path_params["model"]
        try:
            handle = repository.get(name, websocket.path_params.get("version"))
        except CoserveError as error:
            await websocket.close(code=CLOSE_MODEL_NOT_FOUND, reason=str(error)[:120])
            return
        answers_in, answers_out = open_channel[bytes](max_in_flight)
        slots = asyncio.Semaphore(max_in_flight)
        children: set[asyncio.Task[None]] = set()

        async def child(text: str | bytes | None) -> None:
            try:
                await answers_in.send(await _answer(handle, text))
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
