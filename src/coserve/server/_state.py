"""What the server's parts share: the model repository, the limits, readiness."""

from __future__ import annotations

from coserve.models import ModelRepository
from coserve.server._limits import ServerLimits

__all__ = ["ServerState"]


class ServerState:
    """What the endpoints share: the repository, the limits, and whether the server is ready."""

    def __init__(
        self, repository: ModelRepository, *, limits: ServerLimits, graceful_timeout: float
    ) -> None:
        self.repository = repository
        self.limits = limits
        self.graceful_timeout = graceful_timeout
        self.ready = False
        """Readiness, as the health endpoints report it: off from the first sign of shutdown."""
        self.accepting = False
        """Whether inference requests are taken: from the models' loading until they unload.

        Stays on while the server drains after a signal (readiness is already off then), so a
        request a client sent before it learnt of the shutdown is still served.
        """

    @property
    def max_request_size(self) -> int:
        """The largest request body accepted, in bytes."""
        return self.limits.max_request_size
