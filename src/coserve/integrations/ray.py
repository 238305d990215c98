"""coserve on Ray Serve: each replica runs coserve's whole server, batcher included.

A model repository becomes one Ray Serve deployment whose replicas each build the same ASGI app
``coserve serve`` runs (V2 REST, TF Serving REST, the WebSocket routes and session apps,
``/metrics``), from the same flags. Ray's proxy routes requests to replicas; inside a replica,
coserve's own batcher gathers them into batches. ``serve.batch`` is not used: it caps a batch
at the replica's ``max_ongoing_requests`` and fails a batch as a whole.

Two settings matter for batching:

* ``max_ongoing_requests`` defaults to :data:`DEFAULT_MAX_ONGOING_REQUESTS`, not Ray's 5. A
  replica only batches the requests Ray lets into it at once, so 5 would cap every batch at 5.
  coserve bounds its own queues and sheds load with 429/503 beyond them, so Ray need not
  hold requests back.
* With autoscaling, ``target_ongoing_requests`` defaults to
  :data:`DEFAULT_TARGET_ONGOING_REQUESTS`, not Ray's 2. Requests waiting to be batched are
  the point, not a sign of overload.

Sessions: a WebSocket is routed once, at its handshake, so one session's messages all reach
the replica that holds it. A reconnect may land on another replica. With a session store
(``--session-store sqlite:PATH`` for replicas on one host, ``redis://...`` across hosts), the
resume token rebuilds the session there with its state as of the last answer. That is
coserve's own routing through the store; no sticky routing is needed from Ray, whose
consistent-hash router is still experimental and does not survive a change in the replica set.

The coserve app is built on the replica (``serve.ingress`` with a builder), on the event loop
that serves its requests. Ray runs the app's ASGI lifespan there, which loads the models and
starts the batchers. A replica is healthy while coserve is ready.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from coserve._exceptions import ConfigError, MissingDependency

__all__ = [
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "DEFAULT_TARGET_ONGOING_REQUESTS",
    "RayDeployment",
    "build_app",
    "deployment",
]

logger = logging.getLogger("coserve.ray")

DEFAULT_MAX_ONGOING_REQUESTS = 512
"""Requests (and open WebSockets) a replica takes at once: room for several full batches."""
DEFAULT_TARGET_ONGOING_REQUESTS = 64
"""The autoscaler's target per replica: a batch's worth of waiting requests is healthy."""


def _serve() -> Any:
    try:
        from ray import serve
    except ImportError as error:
        raise MissingDependency(
            "coserve on Ray Serve needs Ray: pip install 'coserve[ray]'"
        ) from error
    return serve


@dataclass(frozen=True)
class RayDeployment:
    """How to deploy: the ``coserve serve`` flags each replica runs with, and Ray's settings.

    Attributes:
        serve_args: ``coserve serve`` flags (``--model-repository DIR``, ``--session-store
            URL``, ...). HTTP and gRPC ports are Ray's concern: gRPC is not served.
        name: The deployment's name.
        replicas: A fixed number of replicas (ignored when autoscaling).
        min_replicas: With ``max_replicas``, autoscale between them.
        max_replicas: See ``min_replicas``.
        target_ongoing_requests: The autoscaler's target per replica.
        max_ongoing_requests: Requests a replica takes at once; see the module's notes.
        num_cpus: Ray CPUs reserved per replica.
    """

    serve_args: tuple[str, ...] = ()
    name: str = "coserve"
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = DEFAULT_TARGET_ONGOING_REQUESTS
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    num_cpus: float = 1.0
    ray_actor_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"replicas must be >= 1, got {self.replicas}")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ConfigError("autoscaling needs both min_replicas and max_replicas")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas:  # type: ignore[operator]
            raise ConfigError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and "
                f"{self.max_replicas}"
            )
        if self.max_ongoing_requests < 1 or self.target_ongoing_requests <= 0:
            raise ConfigError("max_ongoing_requests and target_ongoing_requests must be > 0")
        self.options()  # the serve flags must parse here, not on a replica

    def options(self) -> Any:
        """The replicas' :class:`~coserve.server.ServeOptions`, from ``serve_args``.

        Raises:
            ConfigError: The flags do not parse, conflict, or ask for ``--workers`` > 1 (Ray
                makes the replicas).
        """
        from coserve.cli import _parser, serve_options

        try:
            args = _parser().parse_args(["serve", "--no-grpc", *self.serve_args])
        except SystemExit as error:  # argparse has printed why
            raise ConfigError(f"bad coserve serve flags: {shlex.join(self.serve_args)}") from error
        if args.workers != 1:
            raise ConfigError("--workers: on Ray, replicas take the place of worker processes")
        options = serve_options(args)
        if options is None:
            raise ConfigError(f"conflicting coserve serve flags: {shlex.join(self.serve_args)}")
        return options

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of ``serve.deployment`` these options make."""
        settings: dict[str, Any] = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, **self.ray_actor_options},
            # coserve drains its own accepted requests within --graceful-timeout.
            "graceful_shutdown_timeout_s": self.options().graceful_timeout + 5,
        }
        if self.min_replicas is not None:
            settings["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        else:
            settings["num_replicas"] = self.replicas
        return settings


def deployment(config: RayDeployment) -> Any:
    """The Ray Serve application (``serve.run(deployment(config))``) for ``config``."""
    serve = _serve()
    options = config.options()

    def build() -> Any:
        # Runs on each replica: the app, its batchers and its session store are made there.
        from coserve.server._serve import build_app as build_coserve

        built = build_coserve(options)
        if isinstance(built, int):
            raise ConfigError("the coserve app could not be built: the replica's log says why")
        return built[0]

    class CoserveReplica:
        """A Ray Serve replica running coserve's server."""

        def check_health(self) -> None:
            """Unhealthy (Ray replaces the replica) unless coserve is ready to serve."""
            state = self.app.state  # type: ignore[attr-defined]
            if not state.ready:
                raise RuntimeError("coserve is not ready")

    ingress = serve.ingress(build)(CoserveReplica)
    return serve.deployment(ingress, **config.settings()).bind()


def build_app(args: Mapping[str, Any]) -> Any:
    """The application builder for ``serve run coserve.integrations.ray:build_app KEY=VALUE``.

    Keys: ``serve_args`` (``coserve serve`` flags, one string), ``model_repository`` (a
    shortcut for ``--model-repository``), ``name``, ``replicas``, ``min_replicas``,
    ``max_replicas``, ``target_ongoing_requests``, ``max_ongoing_requests``, ``num_cpus``.

    Raises:
        ConfigError: An unknown key, or a bad value.
    """
    known = {
        "serve_args",
        "model_repository",
        "name",
        "replicas",
        "min_replicas",
        "max_replicas",
        "target_ongoing_requests",
        "max_ongoing_requests",
        "num_cpus",
    }
    unknown = set(args) - known
    if unknown:
        raise ConfigError(f"unknown build_app keys: {', '.join(sorted(unknown))}")
    serve_args = shlex.split(str(args.get("serve_args", "")))
    if "model_repository" in args:
        serve_args = ["--model-repository", str(args["model_repository"]), *serve_args]

    def number(key: str, kind: type) -> Any:
        return None if args.get(key) is None else kind(args[key])

    config = RayDeployment(
        serve_args=tuple(serve_args),
        name=str(args.get("name", "coserve")),
        replicas=number("replicas", int) or 1,
        min_replicas=number("min_replicas", int),
        max_replicas=number("max_replicas", int),
        target_ongoing_requests=number("target_ongoing_requests", float)
        or DEFAULT_TARGET_ONGOING_REQUESTS,
        max_ongoing_requests=number("max_ongoing_requests", int) or DEFAULT_MAX_ONGOING_REQUESTS,
        num_cpus=number("num_cpus", float) or 1.0,
    )
    return deployment(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coserve ray",
        description="Deploy a model repository on Ray Serve, coserve's server in each replica.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deploy = commands.add_parser(
        "deploy",
        help="deploy on a Ray cluster (--address), or on a local one run until Ctrl-C",
        description=(
            "Deploy coserve on Ray Serve. Flags after '--' are coserve serve's, for every "
            "replica (e.g. -- --session-store redis://HOST:6379/0). With --address, deploy to "
            "that running cluster and exit; without, start a local Ray cluster, deploy, and "
            "serve until SIGINT or SIGTERM."
        ),
    )
    deploy.add_argument("--model-repository", metavar="DIR", help="the model repository")
    deploy.add_argument("--name", default="coserve", help="application and deployment name")
    deploy.add_argument("--replicas", type=int, default=1, help="replicas (without autoscaling)")
    deploy.add_argument("--min-replicas", type=int, default=None, help="autoscale from this")
    deploy.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this")
    deploy.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=DEFAULT_TARGET_ONGOING_REQUESTS,
        help="autoscaling target per replica (default: %(default)s)",
    )
    deploy.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=DEFAULT_MAX_ONGOING_REQUESTS,
        help="requests a replica takes at once; Ray's default of 5 would cap batches at 5 "
        "(default: %(default)s)",
    )
    deploy.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per replica")
    deploy.add_argument("--address", default=None, help="a running cluster (auto, ray://...)")
    deploy.add_argument("--http-host", default="127.0.0.1", help="Ray's HTTP proxy address")
    deploy.add_argument("--http-port", type=int, default=8000, help="Ray's HTTP proxy port")
    deploy.add_argument("--route-prefix", default="/", help="where the app is served")
    return parser


def main(argv: Sequence[str]) -> int:
    """``coserve ray ...``; returns the exit status."""
    argv = list(argv)
    serve_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_args = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if args.model_repository is not None:
        serve_args = ["--model-repository", args.model_repository, *serve_args]
    try:
        config = RayDeployment(
            serve_args=tuple(serve_args),
            name=args.name,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            max_ongoing_requests=args.max_ongoing_requests,
            num_cpus=args.num_cpus,
        )
        application = deployment(config)
    except (ConfigError, MissingDependency) as error:
        logger.error("%s", error)
        return 2
    import signal
    import threading

    import ray

    serve = _serve()
    ray.init(address=args.address, include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": args.http_host, "port": args.http_port})
    serve.run(application, name=args.name, route_prefix=args.route_prefix)
    logger.info(
        "coserve on Ray Serve at http://%s:%d%s", args.http_host, args.http_port, args.route_prefix
    )
    if args.address is not None:
        return 0  # deployed on a cluster that outlives this command
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()
    ray.shutdown()
    return 0
