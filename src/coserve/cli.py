"""The ``coserve`` command line: ``coserve serve`` runs the inference server.

``coserve tfserving`` takes TensorFlow Serving's flags instead (``_tfserving_cli``);
``coserve bench`` measures a running server (``coserve.bench``); ``coserve tune`` searches its
batching options for the most throughput under an SLO.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coserve.server import ServeOptions

__all__ = ["main", "parse_size"]

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


def parse_size(text: str) -> int:
    """``64MiB``, ``10MB``, ``1048576`` → bytes.

    Raises:
        argparse.ArgumentTypeError: Not a size.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MiB, 10MB or 1048576")
    return int(float(match.group(1)) * _UNITS[unit])


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _app_spec(text: str) -> tuple[str, str]:
    name, _, spec = text.partition("=")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or ":" not in spec:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=module:factory")
    return name, spec


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coserve",
        description="Asyncio model serving with adaptive request batching.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "tfserving",
        help="serve as TensorFlow Serving's tensorflow_model_server does, with its flags "
        "(coserve tfserving --help)",
        add_help=False,
    )
    commands.add_parser(
        "bench",
        help="load a model on a running server and measure it: latency percentiles, "
        "throughput, goodput under an SLO, the server's batching (coserve bench --help)",
        add_help=False,
    )
    commands.add_parser(
        "ray",
        help="deploy a model repository on Ray Serve, coserve's server and batcher in each "
        "replica (coserve ray deploy --help; the ray extra)",
        add_help=False,
    )
    commands.add_parser(
        "tune",
        help="find the batching options that serve the most under a latency SLO, set live "
        "through the admin API: Pareto front, best config as a [batching] block "
        "(coserve tune --help)",
        add_help=False,
    )
    serve = commands.add_parser(
        "serve",
        help="serve a model repository over HTTP (Open Inference Protocol, TF Serving REST)",
        description=(
            "Serve every model in a model repository over HTTP: the Open Inference Protocol "
            "(KServe V2) REST API and streaming WebSocket under /v2 with health endpoints, "
            "TensorFlow Serving's REST API under /v1, per-session coroutine graphs over WebSocket "
            "at /sessions/APP, and Prometheus metrics at /metrics; and over gRPC on --grpc-port: "
            "the Open Inference Protocol (inference.GRPCInferenceService, with Triton's "
            "ModelStreamInfer), TensorFlow Serving's PredictionService and ModelService, and "
            "grpc.health.v1. With no repository, serve the bundled digits demo models and the "
            "digit assistant session app at /sessions/digits. A model folder is coserve's "
            "(config.toml), Triton's (config.pbtxt, or none: auto-completed from the model "
            "file; Python models and ensembles too) or TensorFlow Serving's "
            "(<version>/saved_model.pb); what coserve does not apply is a warning naming it "
            "(README: Coming from Triton / TensorFlow Serving). SIGTERM or SIGINT turns readiness "
            "off, stops accepting requests, answers the requests already accepted within "
            "--graceful-timeout (WebSocket connections are closed at once; gRPC streams end with "
            "UNAVAILABLE once their requests are answered), and exits 0."
        ),
    )
    serve.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        metavar="DIR",
        help="the model repository folder (default: the bundled demo models)",
    )
    serve.add_argument(
        "--model-base-path",
        type=Path,
        default=None,
        metavar="DIR",
        help="serve one model from its folder of numbered versions (TensorFlow Serving's "
        "layout, <DIR>/<version>/saved_model.pb, or a coserve model folder), instead of a "
        "repository",
    )
    serve.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="the name --model-base-path's model is served by (default: its folder's name)",
    )
    serve.add_argument(
        "--model-control-mode",
        choices=["none", "poll", "explicit"],
        default="none",
        help="Triton's: none loads the repository once; poll also reloads it every "
        "--repository-poll-secs (added, changed and removed models and versions, without "
        "dropping a request); explicit loads only the --load-model models (default: none)",
    )
    serve.add_argument(
        "--repository-poll-secs",
        type=_positive_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how often --model-control-mode poll looks at the repository (default: 15)",
    )
    serve.add_argument(
        "--exit-on-error",
        action="store_true",
        help="Triton's: a model folder or version that cannot be served stops the server at "
        "start (default: it is logged, and the other models are served)",
    )
    serve.add_argument(
        "--admin",
        action="store_true",
        help="serve the admin API to loopback clients (X-Forwarded-For not trusted): GET or "
        "POST (application/json) "
        "/v2/admin/models/NAME[/versions/V]/batching reads or changes a model's batching "
        "options (max_batch_size, max_wait, max_concurrent_batches, max_queue_size, timeout) "
        "while it serves, on every worker (default: off)",
    )
    serve.add_argument(
        "--strict-model-config",
        action="store_true",
        help="Triton's: a config.pbtxt must be there and list its inputs and outputs (no "
        "auto-complete from the model file)",
    )
    serve.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with --model-control-mode explicit, a model to load (repeatable; '*': all)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument(
        "--port",
        "--http-port",
        dest="port",
        type=int,
        default=None,
        help="HTTP port to bind; --http-port is Triton's spelling (default: the PORT "
        "environment variable, as Knative and KServe set it, else 8000)",
    )
    serve.add_argument(
        "--grpc-port",
        dest="grpc_port",
        type=int,
        default=None,
        metavar="PORT",
        help="port for gRPC (the Open Inference Protocol with Triton's streaming, and TensorFlow "
        "Serving's API), on the same address; 0 picks a free port (default: 8001; without the "
        "grpc extra installed, the default serves HTTP only, with a warning)",
    )
    serve.add_argument(
        "--no-grpc",
        action="store_true",
        help="serve no gRPC (HTTP only)",
    )
    serve.add_argument(
        "--max-request-size",
        type=parse_size,
        default=parse_size("64MiB"),
        metavar="SIZE",
        help="largest request body accepted, e.g. 64MiB; larger ones get 413 (default: 64MiB)",
    )
    serve.add_argument(
        "--max-json-size",
        type=parse_size,
        default=parse_size("32MiB"),
        metavar="SIZE",
        help="largest JSON document in an inference or predict request; larger ones get 413 "
        "(big tensors are faster as binary data) (default: 32MiB)",
    )
    serve.add_argument(
        "--max-header-size",
        type=parse_size,
        default=parse_size("32KiB"),
        metavar="SIZE",
        help="largest request head (request line and headers); larger ones get 431 "
        "(default: 32KiB)",
    )
    serve.add_argument(
        "--max-headers",
        type=_positive_int,
        default=100,
        metavar="N",
        help="most header lines in a request; more get 431 (default: %(default)s)",
    )
    serve.add_argument(
        "--head-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time a request head may take once it has begun; then 408 and close "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--body-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="time a request body may go without a byte arriving; then 408 and close "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--min-body-rate",
        type=parse_size,
        default=parse_size("64KiB"),
        metavar="SIZE",
        help="bytes per second a body must bring over each --body-timeout window (default: 64KiB)",
    )
    serve.add_argument(
        "--limit-connections",
        type=_positive_int,
        default=None,
        metavar="N",
        help="open connections allowed at once (per worker); one more gets 503 and is closed "
        "(default: the file-descriptor limit, raised to its hard limit, less 512)",
    )
    serve.add_argument(
        "--graceful-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, time allowed to answer accepted requests (default: %(default)s)",
    )
    serve.add_argument(
        "--app",
        type=_app_spec,
        action="append",
        default=[],
        metavar="NAME=MODULE:FACTORY",
        help=(
            "serve a session app at /sessions/NAME: FACTORY(session) builds each WebSocket "
            "session's graph (repeatable)"
        ),
    )
    serve.add_argument(
        "--max-sessions",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="open sessions allowed at once; more are refused with close code 1013 "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--session-idle-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="close a session whose client sent nothing for this long, with close code 4408 "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--session-store",
        default=None,
        metavar="URL",
        help="keep session state where it outlives the process: each answer is checkpointed "
        "first, and the hello's resume token resumes the session on any worker or host sharing "
        "the store (/sessions/APP?resume=TOKEN). sqlite:PATH (one host, every worker), "
        "redis://HOST:PORT/DB (many hosts; the redis extra) or memory (one process) "
        "(default: none, a session ends with its connection)",
    )
    serve.add_argument(
        "--session-ttl",
        type=_positive_seconds,
        default=3600.0,
        metavar="SECONDS",
        help="how long a stored session may be resumed after its last answer "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes, each with its own copy of the models and batchers, sharing the "
        "port (SO_REUSEPORT); /metrics gathers every worker's series with a worker label; "
        "--max-sessions applies per worker (default: %(default)s)",
    )
    # Set by the supervisor of --workers N for each worker it starts; not for users.
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-dir", type=Path, default=None, help=argparse.SUPPRESS)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: %(default)s)",
    )
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: every log line a JSON object, plus an access-log line per request (model, "
        "version, status, latency, queue and execution time, batch size, trace id), written "
        "by a thread (default: %(default)s)",
    )
    serve.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry spans for requests (continuing an incoming traceparent), batches "
        "(linked to their requests) and session-graph hops; needs coserve[tracing]; export is "
        "configured by the OTEL_* environment variables (default: OTLP over http/protobuf to "
        "localhost:4318)",
    )
    kserve = serve.add_argument_group(
        "KServe",
        "the flags a KServe ServingRuntime passes (deploy/kserve/): --model_name={{.Name}} "
        "--model_dir=/mnt/models --http_port=8080 --grpc_port=8081",
    )
    kserve.add_argument(
        "--model_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the storage initializer put the model: one model folder (numbered "
        "versions, or a config file) is served as --model_name; a folder of model folders is "
        "served as a repository",
    )
    kserve.add_argument("--model_name", dest="model_name", help=argparse.SUPPRESS)
    kserve.add_argument("--http_port", dest="port", type=int, help=argparse.SUPPRESS)
    kserve.add_argument("--grpc_port", dest="grpc_port", type=int, help=argparse.SUPPRESS)
    return parser


def _is_model_folder(path: Path) -> bool:
    """Whether ``path`` is one model's folder (not a repository of them)."""
    markers = ("config.toml", "config.pbtxt", "saved_model.pb")
    return any((path / name).is_file() for name in markers) or any(
        child.is_dir() and child.name.isdigit() for child in path.iterdir()
    )


def _http_port(args: argparse.Namespace) -> int | None:
    """--port, else the PORT environment variable (Knative's), else 8000."""
    if args.port is not None:
        return int(args.port)
    port = os.environ.get("PORT", "")
    if not port:
        return 8000
    try:
        return int(port)
    except ValueError:
        raise SystemExit(f"coserve serve: PORT={port!r} is not a port number") from None


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    stop_logging = None
    if args.log_format == "json":
        from coserve.server._access_log import json_logging

        worker = {} if args.worker_index is None else {"worker": args.worker_index}
        stop_logging = json_logging(args.log_level.upper(), static=worker)
    else:
        worker_tag = "" if args.worker_index is None else f"[worker {args.worker_index}]"
        logging.basicConfig(
            level=args.log_level.upper(),
            format=f"%(asctime)s %(levelname)-7s %(name)s{worker_tag}: %(message)s",
        )
    from coserve.server import serve

    try:
        options = serve_options(args)
        return 2 if options is None else serve(options, argv)
    finally:
        if stop_logging is not None:
            stop_logging()  # what is queued is written before the process exits


def serve_options(args: argparse.Namespace) -> ServeOptions | None:
    """The options ``coserve serve``'s parsed flags describe; None (logged) if they conflict.

    Also what :mod:`coserve.integrations.ray` runs each replica with, so every serve flag
    works there too.
    """
    from coserve.server import ServeOptions
    from coserve.server._limits import ServerLimits

    log = logging.getLogger("coserve")
    if args.model_dir is not None:
        if args.model_repository is not None or args.model_base_path is not None:
            log.error("--model_dir names the models: drop --model-repository/--model-base-path")
            return None
        if not args.model_dir.is_dir():
            log.error("--model_dir %s is not a folder", args.model_dir)
            return None
        if _is_model_folder(args.model_dir):
            args.model_base_path = args.model_dir
        else:
            args.model_repository = args.model_dir
            if args.model_name is not None:
                log.info(
                    "--model_dir %s holds model folders: serving each by its folder's name, "
                    "not as %r",
                    args.model_dir,
                    args.model_name,
                )
                args.model_name = None
    if args.model_name is not None and args.model_base_path is None:
        log.error("--model-name needs --model-base-path (or --model_dir)")
        return None
    if args.model_control_mode == "explicit" and args.workers > 1:
        # Each worker would keep its own set of loaded models: a load reaches one of them.
        log.error("--model-control-mode explicit serves one worker's models: drop --workers")
        return None
    if args.load_model and args.model_control_mode != "explicit":
        log.error("--load-model needs --model-control-mode explicit (as in Triton)")
        return None
    options = ServeOptions(
        model_repository=args.model_repository,
        model_base_path=args.model_base_path,
        model_name=args.model_name,
        poll_interval=args.repository_poll_secs if args.model_control_mode == "poll" else 0.0,
        load_models=tuple(args.load_model) if args.model_control_mode == "explicit" else None,
        model_control_mode=args.model_control_mode,
        exit_on_error=args.exit_on_error,
        strict_model_config=args.strict_model_config,
        admin=args.admin,
        host=args.host,
        port=_http_port(args),
        limits=ServerLimits(
            max_request_size=args.max_request_size,
            max_json_size=args.max_json_size,
            max_header_size=args.max_header_size,
            max_headers=args.max_headers,
            head_timeout=args.head_timeout,
            body_timeout=args.body_timeout,
            min_body_rate=args.min_body_rate,
        ),
        limit_connections=args.limit_connections,
        graceful_timeout=args.graceful_timeout,
        grpc_port=None if args.no_grpc else (8001 if args.grpc_port is None else args.grpc_port),
        grpc_optional=args.grpc_port is None,
        apps=tuple(args.app),
        max_sessions=args.max_sessions,
        session_idle_timeout=args.session_idle_timeout or None,
        session_store=args.session_store,
        session_ttl=args.session_ttl,
        workers=args.workers,
        tracing=args.tracing,
        log_format=args.log_format,
        worker_index=args.worker_index,
        worker_dir=args.worker_dir,
    )
    return options


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``coserve`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tfserving"]:  # TF Serving's flags, parsed its way
        from coserve._tfserving_cli import run_tfserving

        return run_tfserving(argv[1:])
    if argv[:1] == ["bench"]:
        try:
            from coserve.bench._cli import main as bench
        except ImportError as error:
            print(
                f"coserve bench needs the tools extra ({error.name} is missing): "
                "pip install 'coserve[tools]'",
                file=sys.stderr,
            )
            return 1
        return bench(argv[1:])
    if argv[:1] == ["tune"]:
        try:
            from coserve.bench._tune import main as tune
        except ImportError as error:
            print(
                f"coserve tune needs the tools extra ({error.name} is missing): "
                "pip install 'coserve[tools]'",
                file=sys.stderr,
            )
            return 1
        return tune(argv[1:])
    if argv[:1] == ["ray"]:
        from coserve.integrations.ray import main as ray

        return ray(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args, argv)
    return 2  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
