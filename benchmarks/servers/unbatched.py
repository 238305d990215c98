"""Baseline for the serving benchmarks: plain Starlette on uvicorn, one model call per request.

It takes the same Open Inference Protocol JSON body as coserve and calls the same SavedModel
signature inline, once per request, without batching (the "naive" server of the peer study).
The model is ``BENCH_MODEL`` (default: the bundled digits model; see ``peer_model.py``).
Run: ``python benchmarks/servers/unbatched.py PORT``.
"""

from __future__ import annotations

import gc
import sys

import orjson
import uvicorn
from peer_model import PeerModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

model = PeerModel()


async def infer(request: Request) -> Response:
    tensor = orjson.loads(await request.body())["inputs"][0]
    return Response(
        orjson.dumps(model.answer(model.run(model.decode(tensor)))),
        media_type="application/json",
    )


async def ready(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route(f"/v2/models/{model.name}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
)

if __name__ == "__main__":
    gc.collect()
    gc.freeze()  # the same GC treatment coserve gets (DESIGN.md §7)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
