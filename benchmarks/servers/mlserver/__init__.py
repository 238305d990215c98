"""MLServer 1.7.1 as a peer for the serving benchmarks, serving a SavedModel (default: digits).

Stdlib only: this module is imported by the benchmark in coserve's environment, while MLServer
itself runs in ``benchmarks/.venv-mlserver`` (created by :func:`ensure_mlserver_venv`). From
``benchmarks/serving.py`` (whose folder is ``sys.path[0]`` when run as a script; ``servers`` is a
namespace package, and this package must not be imported as a top-level ``mlserver``, which would
shadow the real one)::

    from servers.mlserver import ensure_mlserver_venv, mlserver_launch

    python = ensure_mlserver_venv()
    launch = mlserver_launch(python, http_port=..., grpc_port=..., metrics_port=...)
    Served("mlserver", launch.command, launch.infer_url, launch.ready_url, launch.env)
    # gRPC: launch.grpc_target ("127.0.0.1:PORT"), model "digits", input "image" FP32 [1, 8, 8, 1]

The model folder is this folder: ``model-settings.json`` names ``runtime.SavedModelRuntime``
(``runtime.py``), with adaptive batching (max batch 64, 2 ms). Another model is served from a
folder :func:`write_model_settings` fills, with ``BENCH_MODEL`` naming its SavedModel in
``base_env`` (``peer_model.py``). Server settings come from
``MLSERVER_*`` environment variables (no ``settings.json``, so nothing else in the tree is read).
``parallel_workers=1`` (MLServer's default): the main process runs the HTTP/gRPC front ends and
the adaptive batcher and hands each batch to one inference worker process, the shape of mosec's
one-worker peer (front end + one Python worker). ``0`` would run TensorFlow on the front end's
event loop, a setup that neither MLServer's docs nor the mosec peer use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = HERE.parents[1]
VENV = BENCHMARKS / ".venv-mlserver"

# A set that resolves together and passes ``pip check`` (2026-12, CPython 3.11): MLServer 1.7.1
# wants protobuf <7 and grpcio >=1.67.1, TensorFlow 2.21 protobuf >=6.31.1,<8. uvloop stays on
# 0.21: MLServer 1.7.1's inference workers die on uvloop >= 0.22 ("no current event loop").
REQUIREMENTS = (
    "mlserver==1.7.1",
    "tensorflow-cpu==2.21.0",
    "numpy==2.4.6",
    "uvloop==0.21.0",
    "protobuf==6.33.6",
    "grpcio==1.85.3",
)


def ensure_mlserver_venv(venv: Path = VENV) -> Path:
    """The Python of MLServer's venv, created with :data:`REQUIREMENTS` on first use."""
    python = venv / "bin" / "python"
    marker = venv / ".requirements"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"creating {venv} ({', '.join(REQUIREMENTS)})...", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
        check=True,
    )
    marker.write_text(wanted)
    return python


@dataclass
class MLServerLaunch:
    """How to start one MLServer and where to reach it."""

    command: list[str]
    env: dict[str, str]
    http_port: int
    grpc_port: int
    metrics_port: int
    scratch: Path = field(repr=False)
    model: str = "digits"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC server."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def infer_url(self) -> str:
        """REST inference URL (Open Inference Protocol JSON body, as coserve's)."""
        return f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/infer"

    @property
    def metrics_url(self) -> str:
        """MLServer's Prometheus endpoint (its own port); see :func:`mlserver_batches`."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def ready_url(self) -> str:
        """200 once the model is loaded in its inference worker(s)."""
        return f"http://127.0.0.1:{self.http_port}/v2/models/{self.model}/ready"


def mlserver_launch(
    python: Path,
    *,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    parallel_workers: int = 1,
    base_env: dict[str, str] | None = None,
    model_folder: Path = HERE,
    model: str = "digits",
) -> MLServerLaunch:
    """``mlserver start`` on ``model_folder`` (default: this one), on 127.0.0.1 only.

    MLServer writes its Prometheus multiprocess files and unpacked environments under the working
    directory by default; both go to a fresh temporary folder instead (``scratch``; delete it after
    the server stops). ``debug`` is off (it would log every request); metrics stay on, as shipped.
    """
    scratch = Path(tempfile.mkdtemp(prefix="mlserver-bench-"))
    env = {
        **(os.environ if base_env is None else base_env),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http_port),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics_port),
        "MLSERVER_PARALLEL_WORKERS": str(parallel_workers),
        "MLSERVER_DEBUG": "false",
        "MLSERVER_METRICS_DIR": str(scratch / "metrics"),
        "MLSERVER_ENVIRONMENTS_DIR": str(scratch / "envs"),
    }
    # runtime.py, for a model folder that is not this one
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(HERE), env.get("PYTHONPATH"))))
    mlserver = python.parent / "mlserver"
    return MLServerLaunch(
        [str(mlserver), "start", str(model_folder)],
        env,
        http_port,
        grpc_port,
        metrics_port,
        scratch,
        model,
    )


def write_model_settings(
    folder: Path,
    *,
    name: str,
    input: tuple[str, str, list[int]],
    output: tuple[str, str, list[int]],
    max_batch_size: int = 64,
) -> Path:
    """A model folder for :func:`mlserver_launch`: ``model-settings.json`` with adaptive batching.

    ``input`` and ``output`` are (name, datatype, shape) with the batch dimension as -1; the
    batcher waits at most 2 ms for a batch to fill, as the other peers do.
    """
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "name": name,
        "implementation": "runtime.SavedModelRuntime",
        "platform": "tensorflow_savedmodel",
        "max_batch_size": max_batch_size,
        "max_batch_time": 0.002,
        "inputs": [{"name": input[0], "datatype": input[1], "shape": input[2]}],
        "outputs": [{"name": output[0], "datatype": output[1], "shape": output[2]}],
        "parameters": {"version": "1"},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return folder


def mlserver_batches(metrics_url: str, model: str = "digits") -> tuple[float, float]:
    """(requests, batches) so far, like ``Served.batches`` in serving.py; diff two readings.

    ``requests``: ``model_infer_request_duration_count`` of the model (one per request, REST and
    gRPC); ``batches``: ``parallel_request_queue_count``, observed once per call the dispatcher
    hands to an inference worker, i.e. once per adaptive batch (plus one per model load). Only
    meaningful with ``parallel_workers >= 1``.
    """
    with urllib.request.urlopen(metrics_url, timeout=10) as answer:
        text = answer.read().decode()
    requests = sum(
        float(value)
        for value in re.findall(
            rf'^model_infer_request_duration_count{{model="{re.escape(model)}",[^}}]*}} (\S+)$',
            text,
            re.M,
        )
    )
    batches = re.search(r"^parallel_request_queue_count (\S+)$", text, re.M)
    return requests, float(batches.group(1)) if batches else 0.0
