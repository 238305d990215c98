"""Baseline for benchmarks/serving.py: plain Starlette on uvicorn, one model call per request.

It takes the same Open Inference Protocol JSON body as coserve and calls the same SavedModel
signature inline, once per request, without batching (the "naive" server of the peer study).
Run: ``python benchmarks/servers/unbatched.py PORT``.
"""

from __future__ import annotations

import gc
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import orjson
import tensorflow as tf
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coserve.models import bundled_repository

signature = tf.saved_model.load(
    str(bundled_repository() / "digits" / "1" / "model.savedmodel")
).signatures["serving_default"]
signature(image=tf.zeros((1, 8, 8, 1)))  # warm up


async def infer(request: Request) -> Response:
    tensor = orjson.loads(await request.body())["inputs"][0]
    image = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    probabilities = signature(image=tf.constant(image))["probabilities"].numpy()
    body = {
        "model_name": "digits",
        "outputs": [
            {
                "name": "probabilities",
                "shape": list(probabilities.shape),
                "datatype": "FP32",
                "data": probabilities.ravel().tolist(),
            }
        ],
    }
    return Response(orjson.dumps(body), media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/v2/models/digits/infer", infer, methods=["POST"]),
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
