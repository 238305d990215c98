"""Server assembly: what ``coserve serve`` runs, from options to a process that serves.

:func:`serve` loads nothing itself: it builds the app (``create_app``), binds the sockets, and
runs uvicorn with coserve's HTTP protocol on uvloop; or, with ``workers > 1``, supervises that
many worker processes that share the port (``_workers``). A signal (SIGTERM, SIGINT) turns
readiness off first, then drains: HTTP requests already accepted are answered within the
graceful timeout, and the exit status is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from coserve._exceptions import ConfigError, MissingDependency
from coserve.models._config import BatchingConfig
from coserve.server._limits import ServerLimits

if TYPE_CHECKING:
    from coserve.models import ModelRepository
    from coserve.server._session_state import SessionStates
    from coserve.server._sessions import SessionFactory
    from coserve.server._v2_rest import InferenceRoute
    from coserve.server._workers import WorkerInfo

__all__ = ["ServeOptions", "serve"]

log = logging.getLogger("coserve.server")


@dataclass(frozen=True)
class ServeOptions:
    """What ``coserve serve`` was asked to do (its command-line options)."""

    model_repository: Path | None = None
    """The model repository folder; None serves the bundled demo models and session app
    (unless ``model_base_path`` or ``model_config_file`` names the models)."""
    model_base_path: Path | None = None
    """One model's folder (its numbered versions in it), TF Serving's ``--model_base_path``."""
    model_name: str | None = None
    """The name that model is served by (default: its folder's name)."""
    model_config_file: Path | None = None
    """A TF Serving ``ModelServerConfig`` text file naming the models to serve."""
    model_config_poll: float = 0.0
    """Re-read ``model_config_file`` this often, in seconds (0: read it once)."""
    poll_interval: float = 0.0
    """Look for added and removed version folders this often, in seconds (0: never)."""
    model_control_mode: str = "none"
    """Triton's ``--model-control-mode``: ``explicit`` allows the repository API's load and
    unload (``poll`` is ``poll_interval``)."""
    exit_on_error: bool = False
    """Triton's ``--exit-on-error``: a model folder or version that cannot be served stops the
    server at start (else it is logged and the others are served)."""
    strict_model_config: bool = False
    """Triton's ``--strict-model-config``: no auto-complete of ``config.pbtxt``."""
    admin: bool = False
    """Serve the admin API (live batching options) to loopback clients."""
    load_models: tuple[str, ...] | None = None
    """Triton's explicit model control: serve only these of the repository's models (``*``:
    all); None: every model."""
    default_batching: BatchingConfig | None = None
    """The batching policy of models whose folder has no coserve config (TF Serving's
    batching flags); None: coserve's default."""
    host: str = "127.0.0.1"
    port: int | None = 8000
    """The HTTP port; None serves no HTTP (gRPC only, TF Serving's ``--rest_api_port=0``)."""
    limits: ServerLimits = field(default_factory=ServerLimits)
    """Bounds on what one client may make the server hold (``max_connections`` aside)."""
    limit_connections: int | None = None
    """Open connections allowed at once; None: the file-descriptor budget, once the limit is
    raised (``connection_budget``)."""
    graceful_timeout: float = 30.0
    grpc_port: int | None = 8001
    """The gRPC port (Triton's convention); None serves no gRPC."""
    grpc_optional: bool = False
    """Without the ``grpc`` extra, serve HTTP only with a warning (the port was not asked
    for), rather than refuse to start."""
    apps: tuple[tuple[str, str], ...] = ()
    """Session apps as ``(name, "module:factory")``."""
    max_sessions: int = 1000
    session_idle_timeout: float | None = 300.0
    session_store: str | None = None
    """Where sessions' state is checkpointed (``open_store``'s URL); None: not kept."""
    session_ttl: float = 3600.0
    """Seconds a stored session may be resumed after its last answer."""
    workers: int = 1
    tracing: bool = False
    """Trace requests, batches and session-graph hops with OpenTelemetry (the ``tracing``
    extra), configured by the ``OTEL_*`` environment variables."""
    log_format: str = "text"
    """``text``, or ``json``: every log record a JSON line, and an access-log line per request."""
    worker_index: int | None = None
    """Set in the worker processes that ``workers > 1`` starts."""
    worker_dir: Path | None = None


def build_app(
    options: ServeOptions, *, worker: WorkerInfo | None = None, grpc_port: int | None = None
) -> tuple[InferenceRoute, dict[str, SessionFactory]] | int:
    """The ASGI app the options describe, and its session apps; an exit status if they are bad.

    What ``coserve serve`` runs under uvicorn, and what a Ray Serve replica runs under Ray's
    proxy (:mod:`coserve.integrations.ray`). Nothing is loaded until the app's lifespan starts.
    """
    from coserve.models import bundled_repository
    from coserve.models._layout import RepositoryFolders
    from coserve.server._app import create_app
    from coserve.server._limits import connection_budget
    from coserve.server._model_control import ModelControl
    from coserve.server._sessions import SessionManager, load_factory

    try:
        repository = _repository(options)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    apps: dict[str, SessionFactory] = {}
    if repository.path == bundled_repository():
        from coserve.demo_apps import digit_assistant

        apps["digits"] = digit_assistant.create
    try:
        apps.update((name, load_factory(spec)) for name, spec in options.apps)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    try:
        states = _session_states(options)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    sessions = SessionManager(
        repository,
        apps,
        max_sessions=options.max_sessions,
        idle_timeout=options.session_idle_timeout,
        drain_timeout=options.graceful_timeout,
        states=states,
    )
    limits = options.limits.replace(
        max_connections=options.limit_connections or connection_budget()
    )
    tracing = None
    if options.tracing:
        try:
            from coserve.server._tracing import tracing_from_environment

            tracing = tracing_from_environment()
        except ImportError as error:
            log.error("--tracing needs OpenTelemetry: install coserve[tracing] (%s)", error)
            return 2
        except ConfigError as error:
            log.error("--tracing: %s", error)
            return 2
    access_log = None
    if options.log_format == "json":
        from coserve.server._access_log import AccessLog

        access_log = AccessLog()
    grpc = None
    if grpc_port is not None:
        from coserve.server._grpc_server import GrpcOptions

        grpc = GrpcOptions(host=options.host, port=grpc_port, reuse_port=worker is not None)
    app = create_app(
        repository,
        limits=limits,
        graceful_timeout=options.graceful_timeout,
        sessions=sessions,
        worker=worker,
        grpc=grpc,
        poll_interval=options.poll_interval or None,
        exit_on_error=options.exit_on_error,
        admin=options.admin,
        tracing=tracing,
        access_log=access_log,
        model_control=ModelControl(
            repository,
            repository.folders if isinstance(repository.folders, RepositoryFolders) else None,
            options.model_control_mode,
        ),
    )
    return app, apps


def serve(options: ServeOptions, argv: Sequence[str]) -> int:
    """Serve until a signal; returns the exit status.

    ``argv`` is the command line the options came from: the supervisor of ``workers > 1``
    starts each worker with it.
    """
    worker = None
    if options.worker_index is not None:
        assert options.worker_dir is not None, "a worker is started with its --worker-dir"
        from coserve.server._workers import WorkerInfo, die_with_parent

        die_with_parent()
        worker = WorkerInfo(options.worker_index, options.workers, options.worker_dir)
    if options.workers > 1 and worker is None:
        return _supervise(options, argv)

    import uvicorn

    from coserve.server._limits import raise_descriptor_limit
    from coserve.server._native_http import CoserveHttpProtocol
    from coserve.server._workers import bind, bind_unix

    raise_descriptor_limit()
    servable, grpc_port = _grpc_port(options)
    if not servable:
        return 2
    built = build_app(options, worker=worker, grpc_port=grpc_port)
    if isinstance(built, int):
        return built
    app, apps = built
    repository = app.state.repository
    state = app.state
    grace = options.graceful_timeout

    class Server(uvicorn.Server):
        """uvicorn, except that a signal first turns readiness off, and exit status stays 0."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if state.ready:
                log.info(
                    "received %s: not ready; draining accepted requests", signal.Signals(sig).name
                )
            state.ready = False
            if app.dashboard is not None:  # its streams never end by themselves
                with contextlib.suppress(RuntimeError):
                    asyncio.get_running_loop().call_soon_threadsafe(app.dashboard.close)
            if app.grpc is not None:  # gRPC health off and its drain begun, at the next tick
                with contextlib.suppress(RuntimeError):  # no loop running: nothing to stop
                    asyncio.get_running_loop().call_soon_threadsafe(app.grpc.begin_stop, grace)
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # gRPC drains beside HTTP, from the signal on (begun there already, unless the exit
            # came otherwise); the lifespan waits for it to finish before the models unload.
            if app.grpc is not None:
                app.grpc.begin_stop(grace)
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutting down, which would make the exit status
            # 128+N; a clean drain is a success, so handle the signals without re-raising.
            previous = {
                s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port or 0,
        loop="uvloop",
        http=CoserveHttpProtocol,
        lifespan="on",
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(options.graceful_timeout) or 1,
        # The admin API trusts loopback peers: with it on, no X-Forwarded-For may stand in
        # for the real peer (uvicorn would trust one from a proxy on this host).
        proxy_headers=not options.admin,
    )
    host, port = options.host, options.port
    try:
        sockets = [] if port is None else [bind(host, port, reuse_port=worker is not None)]
        if worker is not None:  # the private socket the other workers gather metrics through
            sockets.append(bind_unix(worker.socket_path()))
    except OSError as error:
        log.error("cannot listen on %s:%s: %s", host, port, error)
        return 1
    if port is None:
        log.info("coserve serving %s over gRPC only (no HTTP port)", repository.description)
    else:
        log.info("coserve serving %s on http://%s:%d", repository.description, host, port)
        for name in apps:
            log.info("session app %r at ws://%s:%d/sessions/%s", name, host, port, name)
    server = Server(config)
    server.run(sockets=sockets)
    return 0 if server.started else 1


def _session_states(options: ServeOptions) -> SessionStates | None:
    """The session store the options name, or None.

    Raises:
        ConfigError: The URL is not a store's, or ``memory`` was asked of several workers.
    """
    from coserve.server._session_state import SessionStates
    from coserve.sessions import MemoryStore, open_store

    if options.session_store is None:
        return None
    try:
        store = open_store(options.session_store)
    except MissingDependency as error:
        raise ConfigError(str(error)) from error
    if isinstance(store, MemoryStore) and options.workers > 1:
        raise ConfigError(
            "--session-store memory keeps each worker's sessions to itself: with --workers, "
            "use sqlite:PATH"
        )
    return SessionStates(store, session_ttl=options.session_ttl)


def _repository(options: ServeOptions) -> ModelRepository:
    """The repository the options name: a folder, one model folder, or a TF Serving config.

    Raises:
        ConfigError: The options name the models in two ways, or a folder that is not there.
    """
    from coserve.models import ModelRepository
    from coserve.models._layout import ModelFolder, RepositoryFolders

    named = [
        flag
        for flag, value in (
            ("--model-repository", options.model_repository),
            ("--model-base-path", options.model_base_path),
            ("--model-config-file", options.model_config_file),
        )
        if value is not None
    ]
    if len(named) > 1:
        raise ConfigError(f"{' and '.join(named)} both name the models: give one")
    batching = options.default_batching
    if options.model_config_file is not None:
        from coserve.models._tfserving_config import ModelServerConfigFile

        config_file = ModelServerConfigFile(
            options.model_config_file, batching=batching, poll=options.model_config_poll
        )
        config_file.folders()  # a config that cannot be read stops the server at start
        return ModelRepository(folders=config_file.folders, description=str(config_file))
    if options.model_base_path is not None:
        base = options.model_base_path
        if not base.is_dir():
            raise ConfigError(f"--model-base-path {base} is not a folder")
        model = ModelFolder(
            options.model_name or base.name, base, batching=batching, source="--model-base-path"
        )
        return ModelRepository(folders=lambda: [model], description=f"{base} ({model.name})")
    wanted = options.load_models
    if options.model_repository is not None:
        path = options.model_repository
        if not path.is_dir():
            raise ConfigError(f"model repository {path} is not a folder")
        folders = RepositoryFolders(
            path, batching=batching, auto_complete=not options.strict_model_config, wanted=wanted
        )
        if folders.wanted is not None:
            missing = sorted(folders.wanted - set(folders.names()))
            if missing:
                raise ConfigError(
                    f"--load-model {', '.join(missing)}: no such model folder in {path}"
                )
        return ModelRepository(folders=folders, description=str(path))
    if wanted is not None:
        raise ConfigError("--model-control-mode explicit needs --model-repository")
    return ModelRepository()


def _grpc_port(options: ServeOptions) -> tuple[bool, int | None]:
    """Whether the options can be served, and the gRPC port to serve (None: no gRPC).

    Without the ``grpc`` extra (or with a protobuf runtime older than the generated modules,
    a VersionError), a port asked for is an error (logged); the default one only a warning,
    and the server serves HTTP only.
    """
    if options.grpc_port is None:
        return True, None
    try:
        import coserve.server._grpc_server  # noqa: F401 - only whether it imports
    except Exception as error:
        if not options.grpc_optional:
            log.error("cannot serve gRPC (%s): install coserve[grpc], or pass --no-grpc", error)
            return False, None
        log.warning("serving HTTP only: gRPC needs coserve[grpc] (%s)", error)
        return True, None
    return True, options.grpc_port


def _supervise(options: ServeOptions, argv: Sequence[str]) -> int:
    from coserve.server._workers import bind, run_supervisor

    servable, grpc_port = _grpc_port(options)
    if not servable:
        return 2
    if options.port is None:
        log.error("--workers needs an HTTP port")
        return 2
    if grpc_port is None:
        argv = [*argv, "--no-grpc"]
    host, port = options.host, options.port
    try:  # fail here, once, if an address is taken, rather than in every worker
        reservation = bind(host, port, reuse_port=True)
        grpc_reservation = None if grpc_port is None else bind(host, grpc_port, reuse_port=True)
    except OSError as error:
        log.error("cannot listen on %s: %s", host, error)
        return 1
    # Held, bound but never listening, while the workers run: they take no connections, keep
    # the ports from programs that do not share them, and fix the ports that 0 chose.
    with reservation, grpc_reservation or contextlib.nullcontext():
        port = reservation.getsockname()[1]
        argv = [*argv, "--port", str(port)]
        if grpc_reservation is not None:
            argv += ["--grpc-port", str(grpc_reservation.getsockname()[1])]
        log.info("coserve starting %d workers on http://%s:%d", options.workers, host, port)
        return run_supervisor(argv, options.workers, options.graceful_timeout)
