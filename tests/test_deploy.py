"""deploy/: the Dockerfile, the KServe runtime and InferenceService, and the plain manifests.

Structural checks with PyYAML; ``kubectl kustomize`` renders each kustomization (offline);
and real ``coserve serve`` processes started with exactly the arguments and environment the
manifests pass (ports swapped for free ones: nothing here binds 8080) answer 200 on every
probe and metrics path the manifests name. There is no cluster, image registry or Docker
daemon on these machines: what that leaves unverified is listed in deploy/README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coserve.models import bundled_repository

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KSERVE = DEPLOY / "kserve"
KUBERNETES = DEPLOY / "kubernetes"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def one(path: Path, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


def runtime_container() -> dict[str, Any]:
    runtime = one(KSERVE / "runtime.yaml", "ClusterServingRuntime")
    (container,) = runtime["spec"]["containers"]
    return dict(container)


def deployment_container() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = one(KUBERNETES / "deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- structure ---------------------------------------------------------------------------------


def test_kserve_runtime_says_what_kserve_needs() -> None:
    runtime = one(KSERVE / "runtime.yaml", "ClusterServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8080"
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    assert {"tensorflow", "onnx", "triton"} <= formats
    container = runtime_container()
    assert container["name"] == "kserve-container"
    args = container["args"]
    assert "--model_name={{.Name}}" in args
    assert "--model_dir=/mnt/models" in args
    assert "--http_port=8080" in args
    assert "--grpc_port=8081" in args
    assert [p["containerPort"] for p in container["ports"]] == [8080]
    for probe in ("readinessProbe", "livenessProbe"):
        assert set(container[probe]["httpGet"]) == {"path"}  # Knative refuses a probe port
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] == container["resources"]["limits"]


def test_inference_service_uses_the_runtime() -> None:
    service = one(KSERVE / "inferenceservice.yaml", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    runtime = one(KSERVE / "runtime.yaml", "ClusterServingRuntime")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert "storageUri" in model


def test_deployment_drains_within_its_grace_period() -> None:
    pod, container = deployment_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    (graceful,) = [a.split("=", 1)[1] for a in container["args"] if "--graceful-timeout" in a]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(graceful)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    assert {"name": "PORT", "value": "8080"} in container["env"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_service_and_monitor_select_the_pods() -> None:
    labels = one(KUBERNETES / "deployment.yaml", "Deployment")["spec"]["template"]["metadata"][
        "labels"
    ]
    service = one(KUBERNETES / "service.yaml", "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}
    monitor = one(KUBERNETES / "servicemonitor.yaml", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("folder", [KSERVE, KUBERNETES])
def test_kustomizations_list_files_that_exist(folder: Path) -> None:
    kustomization = documents(folder / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("folder", [KSERVE, KUBERNETES])
def test_kubectl_kustomize_renders(folder: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # .ci/run installs it (Debian's kubernetes-client)
        pytest.fail("kubectl is not installed: apt-get install kubernetes-client")
    # `kustomize` works offline (`apply --dry-run` would fetch the schema from localhost:8080).
    rendered = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered) if doc}
    expected = {doc["kind"] for path in folder.glob("*.yaml") for doc in documents(path)}
    assert kinds == expected - {"Kustomization"}


def test_dockerfile_follows_the_conventions() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) == 2  # multi-stage: the build tools stay behind
    assert all("-slim" in line for line in froms)
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users == ["1000"]  # numeric, so runAsNonRoot can check it
    assert re.search(r"useradd .*--uid 1000", text)
    (entrypoint,) = [line for line in instructions if line.startswith("ENTRYPOINT ")]
    assert entrypoint.split(" ", 1)[1].startswith("[")  # exec form: SIGTERM reaches coserve
    assert any(line.startswith("HEALTHCHECK ") and "/v2/health/live" in line for line in lines)
    assert not any(line.startswith("ADD ") for line in instructions)
    assert "COPY --from=build /opt/coserve /opt/coserve" in instructions


# -- the manifests' arguments on real servers --------------------------------------------------


class Launched:
    """``coserve serve`` with a manifest's args and environment, its ports made free ones."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coserve.cli", "serve", "--host", "127.0.0.1", *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )

    def wait_ready(self, url: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited:\n{self.log.read()}")
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server not ready")

    def close(self) -> int:
        self.process.terminate()
        status = self.process.wait(60)
        self.log.close()
        return status


def probe_paths(container: dict[str, Any]) -> list[str]:
    return [container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe")]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/mnt/models as KServe's storage initializer would fill it: one model folder."""
    target = tmp_path_factory.mktemp("mnt") / "models"
    shutil.copytree(bundled_repository() / "digits", target)
    return target


@pytest.mark.slow
def test_runtime_args_serve_the_inference_service(model_dir: Path) -> None:
    """The runtime's own args, {{.Name}} as KServe fills it: probes, metrics, the model."""
    container = runtime_container()
    http, grpc = free_port(), free_port()
    name = one(KSERVE / "inferenceservice.yaml", "InferenceService")["metadata"]["name"]
    args = [
        arg.replace("{{.Name}}", name)
        .replace("/mnt/models", str(model_dir))
        .replace("--http_port=8080", f"--http_port={http}")
        .replace("--grpc_port=8081", f"--grpc_port={grpc}")
        for arg in container["args"]
    ]
    assert f"--http_port={http}" in args, "the runtime's HTTP port flag changed"
    server = Launched(args, {"PORT": "1"})  # a flag beats PORT, as on Knative
    try:
        url = f"http://127.0.0.1:{http}"
        server.wait_ready(url)
        annotations = one(KSERVE / "runtime.yaml", "ClusterServingRuntime")["spec"]["annotations"]
        for path in [*probe_paths(container), annotations["prometheus.kserve.io/path"]]:
            assert httpx.get(url + path, timeout=10).status_code == 200, path
        assert httpx.get(f"{url}/v2/models/{name}/ready", timeout=10).status_code == 200
        image = [[[[0.0]] * 8] * 8]
        body = {
            "inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": image}]
        }
        answer = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        with socket.create_connection(("127.0.0.1", grpc), timeout=5):
            pass  # gRPC listens on the runtime's gRPC port
    finally:
        assert server.close() == 0


@pytest.mark.slow
def test_deployment_args_and_port_environment() -> None:
    """The Deployment's args with PORT from its env (a free port here): probes and metrics."""
    _, container = deployment_container()
    http = free_port()
    state = Path(tempfile.mkdtemp())
    args = [
        arg.replace("--grpc-port=8081", f"--grpc-port={free_port()}").replace(
            "/var/lib/coserve", str(state)
        )
        for arg in container["args"]
    ]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PORT"] == "8080"
    server = Launched(args, {**env, "PORT": str(http)})
    try:
        url = f"http://127.0.0.1:{http}"
        server.wait_ready(url)
        monitor = one(KUBERNETES / "servicemonitor.yaml", "ServiceMonitor")
        paths = [*probe_paths(container), monitor["spec"]["endpoints"][0]["path"]]
        for path in paths:
            assert httpx.get(url + path, timeout=10).status_code == 200, path
    finally:
        assert server.close() == 0
        shutil.rmtree(state, ignore_errors=True)


def test_kserve_flags_resolve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """PORT is the default HTTP port; --model_dir tells a model folder from a repository."""
    from coserve.cli import _http_port, _is_model_folder, _parser

    def parsed(*argv: str) -> Any:
        return _parser().parse_args(["serve", *argv])

    monkeypatch.delenv("PORT", raising=False)
    assert _http_port(parsed()) == 8000
    monkeypatch.setenv("PORT", "9123")
    assert _http_port(parsed()) == 9123
    assert _http_port(parsed("--http_port=9200")) == 9200
    assert _http_port(parsed("--port", "9300")) == 9300
    monkeypatch.setenv("PORT", "eighty")
    with pytest.raises(SystemExit, match="PORT='eighty' is not a port number"):
        _http_port(parsed())
    args = parsed("--model_name=digits", "--grpc_port=9001", "--model_dir", str(tmp_path))
    assert (args.model_name, args.grpc_port) == ("digits", 9001)
    assert _is_model_folder(bundled_repository() / "digits")
    assert not _is_model_folder(bundled_repository())
