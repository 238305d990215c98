"""The inference server: an ASGI app over a model repository, run by ``coserve serve``.

Endpoints: the Open Inference Protocol (KServe V2) REST API under ``/v2`` — server and model
metadata, health, and inference with JSON tensors or the binary tensor data extension.
"""

from coserve.server._app import EXTENSIONS, ServerState, create_app

__all__ = ["EXTENSIONS", "ServerState", "create_app"]
