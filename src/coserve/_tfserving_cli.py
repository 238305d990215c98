"""``coserve tfserving``: TensorFlow Serving's ``tensorflow_model_server`` command line.

A deployment that runs ``tensorflow_model_server --port=8500 --rest_api_port=8501
--model_name=m --model_base_path=/models/m`` changes only the program's name. The flags are TF
Serving's, spelled as it spells them (``--flag=value`` or ``--flag value``; booleans also as
``--flag``, ``--flag=false`` or ``--noflag``), with its defaults: gRPC on 8500, no REST API
unless ``--rest_api_port`` is set, model name ``default``, a look for new versions every second,
no batching unless ``--enable_batching``, every address bound. Its other flags are accepted and
named in a warning as not applied; an unknown flag is an error, as in TF Serving.

How each flag maps onto ``coserve serve`` is in the README ("Coming from TensorFlow Serving").
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IGNORED_FLAGS", "run_tfserving", "tfserving_parser"]

log = logging.getLogger("coserve")

IGNORED_FLAGS = (
    "grpc_socket_path",
    "grpc_channel_arguments",
    "grpc_max_threads",
    "rest_api_num_threads",
    "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support",
    "enable_per_model_batching_parameters",
    "allow_version_labels_for_unavailable_models",
    "enable_signature_method_name_check",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "per_process_gpu_memory_fraction",
    "saved_model_tags",
    "monitoring_config_file",
    "ssl_config_file",
    "platform_config_file",
    "enable_model_warmup",
    "num_load_threads",
    "num_unload_threads",
    "max_num_load_retries",
    "load_retry_interval_micros",
    "flush_filesystem_caches",
    "xla_cpu_compilation_enabled",
    "enable_profiler",
    "thread_pool_factory_config_file",
    "mixed_precision",
    "skip_initialize_tpu",
    "use_tflite_model",
    "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model",
    "tflite_num_interpreters_per_pool",
    "tflite_num_pools",
    "use_alts_credentials",
    "grpc_health_check_service_name",
)
"""TF Serving flags coserve accepts but does not apply (a warning names each one given)."""


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "t", "yes"):
        return True
    if lowered in ("false", "0", "f", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true or false)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def tfserving_parser() -> argparse.ArgumentParser:
    """The parser of TF Serving's flags (those coserve applies, and the others it names)."""
    parser = argparse.ArgumentParser(
        prog="coserve tfserving",
        description=(
            "Serve as TensorFlow Serving's tensorflow_model_server does, taking its flags: "
            "TF Serving's gRPC API (PredictionService, ModelService) on --port, its REST API "
            "(/v1/models/...) on --rest_api_port, and coserve's own APIs (the Open Inference "
            "Protocol under /v2 and on gRPC, /metrics) beside them. Models come from "
            "--model_base_path (<path>/<version>/saved_model.pb) or --model_config_file (a "
            "ModelServerConfig text file)."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default: 8500)")
    parser.add_argument(
        "--rest_api_port",
        type=int,
        default=0,
        help="HTTP/REST port; 0 serves no REST API, as in TF Serving (default: 0)",
    )
    parser.add_argument("--model_name", default="default", help="the model's name")
    parser.add_argument("--model_base_path", type=Path, default=None, help="the model's folder")
    parser.add_argument(
        "--model_config_file",
        type=Path,
        default=None,
        help="a ModelServerConfig text file naming the models (overrides --model_name and "
        "--model_base_path)",
    )
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=_seconds,
        default=0.0,
        help="re-read --model_config_file this often (0: read once)",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=_seconds,
        default=1.0,
        help="look for new and removed version folders this often (0: once, at start)",
    )
    parser.add_argument(
        "--enable_batching",
        type=_bool,
        nargs="?",
        const=True,
        default=False,
        help="batch requests across callers (default: each request runs alone)",
    )
    parser.add_argument(
        "--batching_parameters_file",
        type=Path,
        default=None,
        help="a BatchingParameters text file (needs --enable_batching)",
    )
    # coserve's own, which TF Serving does not have: where to bind, the log level.
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to bind (coserve; default: every address)"
    )  # every address: TF Serving binds them all, and a drop-in must too
    parser.add_argument(
        "--log_level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (coserve; default: info)",
    )
    for flag in IGNORED_FLAGS:  # booleans among them may come bare (--flag), hence the const
        parser.add_argument(
            f"--{flag}", nargs="?", const="true", default=None, help=argparse.SUPPRESS
        )
    return parser


_BOOLEAN_FLAGS = frozenset({"enable_batching", *IGNORED_FLAGS})


def _normalise(argv: Sequence[str]) -> list[str]:
    """The absl boolean spelling argparse lacks: ``--noflag`` is ``--flag=false``."""
    return [
        f"--{arg[4:]}=false"
        if arg.startswith("--no") and "=" not in arg and arg[4:] in _BOOLEAN_FLAGS
        else arg
        for arg in argv
    ]


def run_tfserving(argv: Sequence[str]) -> int:
    """Parse TF Serving's flags and serve; returns the exit status."""
    args = tfserving_parser().parse_args(_normalise(argv))
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    from coserve._exceptions import ConfigError
    from coserve.models._tfserving_config import NO_BATCHING, batching_parameters
    from coserve.server import ServeOptions, serve

    for flag in IGNORED_FLAGS:
        if getattr(args, flag) is not None:
            log.warning("--%s is TensorFlow Serving's; coserve does not apply it", flag)
    if args.batching_parameters_file is not None and not args.enable_batching:
        log.error("--batching_parameters_file needs --enable_batching (as in TF Serving)")
        return 2
    if args.model_config_file is None and args.model_base_path is None:
        log.error("give --model_base_path (with --model_name) or --model_config_file")
        return 2
    try:
        batching = (
            batching_parameters(args.batching_parameters_file)
            if args.enable_batching
            else NO_BATCHING
        )
    except ConfigError as error:
        log.error("%s", error)
        return 2
    if args.model_config_file is not None and args.model_base_path is not None:
        log.warning("--model_config_file is given: --model_name and --model_base_path are unused")
    # TF Serving polls the folders and the config file on their own clocks; coserve re-reads the
    # config file (at most as often as asked) on each reload, so reload at the faster of the two.
    intervals = [
        s
        for s in (args.file_system_poll_wait_seconds, args.model_config_file_poll_wait_seconds)
        if s
    ]
    options = ServeOptions(
        model_base_path=None if args.model_config_file else args.model_base_path,
        model_name=args.model_name,
        model_config_file=args.model_config_file,
        model_config_poll=args.model_config_file_poll_wait_seconds,
        poll_interval=min(intervals, default=0.0),
        default_batching=batching,
        host=args.host,
        port=args.rest_api_port or None,
        grpc_port=args.port,
    )
    return serve(options, ["tfserving", *argv])
