"""framepipe's images, built and run for real (scripts/container-test.sh builds them, then runs
this): health, 300 frames through the container's port, /metrics, a drain on `docker stop` while
a stream runs, a hardened run (non-root, read-only root filesystem, no capabilities), the GPU
image's CPU fallback, compose with Prometheus scraping framepipe, and the Kubernetes manifests
rendered and validated against the Kubernetes schemas.

Environment (set by the script): DOCKER_HOST (when it started its own daemon),
FRAMEPIPE_BINARY (the host client), FRAMEPIPE_CONTAINER_WORK (a work folder),
PROMETHEUS_IMAGE (an image made from Debian's prometheus package, if installed).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("FRAMEPIPE_BINARY", str(REPO / "build/default/bin/framepipe"))
WORK = Path(os.environ.get("FRAMEPIPE_CONTAINER_WORK", "/var/tmp/framepipe-container"))
CPU, GPU = "framepipe:cpu", "framepipe:gpu"
# The soak's highest RSS (README "Memory bound": scripts/soak.sh --minutes 10, first half).
SOAK_PEAK_RSS_MIB = 113


def sh(*args: str, timeout: float = 300, check: bool = True) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, alive, what: str, bound: float = 60) -> None:
    """Until `framepipe health` through `port` answers SERVING; fails after `bound` seconds or as
    soon as `alive()` says the server is gone, with `what()` (its logs) in the message."""
    deadline = time.monotonic() + bound
    while True:
        p = subprocess.run([BIN, "health", "--target", f"127.0.0.1:{port}", "--timeout", "2"],
                           capture_output=True, text=True)
        if p.returncode == 0:
            return
        if time.monotonic() > deadline or not alive():
            raise AssertionError(f"never healthy: {p.stdout}{p.stderr}\n{what()}")
        time.sleep(0.1)


class Container:
    """`docker run -d` with gRPC and /metrics published on loopback; waits for health."""

    def __init__(self, image: str, *run_args: str, cmd: Tuple[str, ...] = ()):
        t0 = time.monotonic()
        self.id = sh("docker", "run", "-d", "-p", "127.0.0.1::50051", "-p", "127.0.0.1::9464",
                     *run_args, image, *cmd).strip()
        self.grpc = self.port(50051)
        self.metrics = self.port(9464)
        wait_healthy(self.grpc, self.running, lambda: f"{image}: {self.logs()}")
        self.startup_s = time.monotonic() - t0

    def port(self, p: int) -> int:
        return int(sh("docker", "port", self.id, f"{p}/tcp").split(":")[-1])

    def running(self) -> bool:
        return sh("docker", "inspect", "-f", "{{.State.Running}}", self.id).strip() == "true"

    def logs(self) -> str:
        p = subprocess.run(["docker", "logs", self.id], capture_output=True, text=True)
        return p.stdout + p.stderr

    def exit_code(self) -> int:
        return int(sh("docker", "inspect", "-f", "{{.State.ExitCode}}", self.id))

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.id], capture_output=True)


@pytest.fixture
def containers():
    made: List[Container] = []
    yield made
    for c in made:
        c.remove()


def stream(port: int, frames: int, *extra: str) -> Tuple[subprocess.CompletedProcess, list]:
    """The host client through the container's port; the results (--out lines) in arrival order."""
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        p = subprocess.run([BIN, "stream", "--target", f"127.0.0.1:{port}", "--frames",
                            str(frames), "--size", "640x360", "--out", out.name, "--no-progress",
                            *extra], capture_output=True, text=True, timeout=300)
        lines = [json.loads(line) for line in open(out.name)]
    return p, lines


def assert_complete_in_order(p, lines, frames: int) -> None:
    assert p.returncode == 0, p.stdout + p.stderr
    assert [int(r["seq"]) for r in lines] == list(range(frames)), "count and order"
    assert all(r["status"] == "FRAME_STATUS_OK" for r in lines)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def image_mb(image: str) -> float:
    return int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image)) / 1e6


IMAGES = [CPU] + ([os.environ["FRAMEPIPE_SOURCE_IMAGE"]]
                 if os.environ.get("FRAMEPIPE_SOURCE_IMAGE") else [])


@pytest.mark.parametrize("image", IMAGES)
def test_cpu_image_health_stream_metrics(containers, image):
    c = Container(image)
    containers.append(c)
    p, lines = stream(c.grpc, 300)
    assert_complete_in_order(p, lines, 300)
    text = scrape(c.metrics)
    m = re.search(r'^framepipe_frames_total\{[^}]*status="ok"[^}]*\} (\d+)', text, re.M)
    assert m and int(m.group(1)) == 300, "the container's /metrics counts the 300 frames"
    assert 'framepipe_build_info{backend="cpu"' in text
    print(f"\n{image}: {image_mb(image):.0f} MB, healthy {c.startup_s:.2f} s after docker run; "
          f"300 frames answered in order through port {c.grpc}; /metrics counts them")


def test_docker_stop_drains_a_running_stream(containers):
    c = Container(CPU)
    containers.append(c)
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        client = subprocess.Popen([BIN, "stream", "--target", f"127.0.0.1:{c.grpc}", "--frames",
                                   "100000", "--fps", "100", "--size", "640x360", "--out",
                                   out.name, "--no-progress"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the stream is running: 100 results have arrived
            with open(out.name) as f:
                if sum(1 for _ in f) >= 100:
                    break
            time.sleep(0.05)
        t0 = time.monotonic()
        sh("docker", "stop", "-t", "40", c.id, timeout=60)
        stop_s = time.monotonic() - t0
        output = client.communicate(timeout=60)[0]
        lines = [json.loads(line) for line in open(out.name)]
    assert c.exit_code() == 0, c.logs()
    assert lines, "the stream ran"
    assert [int(r["seq"]) for r in lines] == list(range(len(lines))), "in order, no gap"
    assert all(r["status"] == "FRAME_STATUS_OK" for r in lines)
    m = re.search(r"answered \((\d+) frames\)", output)
    assert m, output
    assert int(m.group(1)) == len(lines), "every admitted frame answered"
    logs = c.logs()
    assert "event=signal signal=SIGTERM" in logs and "event=server_stopped drained=true" in logs
    print(f"\ndocker stop during a stream: {len(lines)} admitted frames, all answered in order; "
          f"container exit code {c.exit_code()}; stop took {stop_s:.2f} s")


def test_hardened_run_non_root_read_only_no_capabilities(containers):
    c = Container(CPU, "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                  "--user", "10001:10001")
    containers.append(c)
    assert sh("docker", "exec", c.id, "id", "-u").strip() == "10001"
    p, lines = stream(c.grpc, 100)
    assert_complete_in_order(p, lines, 100)
    with pytest.raises(AssertionError):
        sh("docker", "exec", c.id, "touch", "/opt/framepipe/x")  # the root filesystem is read-only


def test_gpu_image_falls_back_to_the_cpu_with_one_log_line(containers):
    c = Container(GPU)
    containers.append(c)
    logs = c.logs()
    fallback = [line for line in logs.splitlines() if "event=backend_fallback" in line]
    assert len(fallback) == 1, logs
    assert "backend=cpu" in fallback[0]
    p, lines = stream(c.grpc, 300)
    assert_complete_in_order(p, lines, 300)
    print(f"\n{GPU}: {image_mb(GPU):.0f} MB, healthy {c.startup_s:.2f} s after docker run; "
          f"{fallback[0].split('reason=')[-1]}")


def compose_available(compose: List[str]) -> bool:
    if compose == ["docker-compose"]:
        return shutil.which("docker-compose") is not None
    return subprocess.run([*compose, "version"], capture_output=True).returncode == 0


@pytest.mark.parametrize("compose", [["docker-compose"], ["docker", "compose"]],
                         ids=["docker-compose", "docker compose"])
def test_compose_brings_up_framepipe_with_prometheus_scraping_it(compose):
    if not compose_available(compose):
        pytest.skip(f"`{' '.join(compose)}` is not installed (Debian 12 packages docker-compose "
                    "1.29 only; the compose v2 plugin comes from Docker's own repository)")
    env = dict(os.environ, FRAMEPIPE_CPU_IMAGE=CPU, FRAMEPIPE_GRPC_PORT=str(free_port()),
               FRAMEPIPE_METRICS_PORT=str(free_port()), PROMETHEUS_PORT=str(free_port()),
               COMPOSE_PROJECT_NAME="framepipe-test")
    services = ["framepipe-cpu"]
    if os.environ.get("PROMETHEUS_IMAGE"):
        services.append("prometheus")
    base = [*compose, "-f", str(REPO / "docker/compose.yaml"), "--profile", "cpu"]
    run = lambda *a, **kw: subprocess.run([*base, *a], env=env, capture_output=True, text=True,
                                          timeout=300, **kw)
    try:
        up = run("up", "-d", *services)
        assert up.returncode == 0, up.stdout + up.stderr
        port = int(env["FRAMEPIPE_GRPC_PORT"])
        wait_healthy(port, lambda: True, lambda: run("logs").stdout)
        p, lines = stream(port, 100)
        assert_complete_in_order(p, lines, 100)
        if "prometheus" not in services:
            pytest.skip("framepipe came up and streamed; Prometheus skipped: no prometheus "
                        "binary on this machine to make its image (Debian package prometheus)")
        url = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1/targets"
        deadline = time.monotonic() + 90
        health = None
        while time.monotonic() < deadline:
            try:
                targets = json.load(urllib.request.urlopen(url, timeout=5))["data"]["activeTargets"]
                health = [t["health"] for t in targets if t["labels"]["job"] == "framepipe"]
                if health == ["up"]:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert health == ["up"], f"Prometheus target health: {health}\n{run('logs').stdout}"
        q = f"http://127.0.0.1:{env['PROMETHEUS_PORT']}/api/v1/query?query=framepipe_build_info"
        result = json.load(urllib.request.urlopen(q, timeout=5))["data"]["result"]
        assert result and result[0]["metric"]["backend"] == "cpu"
        print(f"\n{' '.join(compose)}: framepipe + Prometheus up, target health up; Grafana not "
              "started: no Debian package or registry here (the deploy test checks its "
              "provisioning and that every dashboard query names an exported metric)")
    finally:
        run("down", "-v", "--remove-orphans")


def test_kubernetes_manifests_render_and_validate():
    rendered = sh("kubectl", "kustomize", str(REPO / "docker/k8s"))
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    extra = [yaml.safe_load((REPO / "docker/k8s" / f).read_text())
             for f in ("servicemonitor.yaml",)]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service",
                     "Service"], kinds
    # Schemas: the npm kubernetes-models packages (generated from the Kubernetes OpenAPI).
    npm = WORK / "npm"
    if not (npm / "node_modules/kubernetes-models").is_dir():
        sh("npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(npm),
           "kubernetes-models@4", "@kubernetes-models/prometheus-operator@4", timeout=600)
    script = npm / "validate.js"
    script.write_text(VALIDATE_JS)
    out = sh("node", str(script), json.dumps(docs + extra), timeout=60)
    assert out.strip().endswith(f"{len(docs) + len(extra)} valid"), out
    # The GPU deployment asks for a GPU and the memory its flags allow.
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    res = c["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 1 and res["limits"]["nvidia.com/gpu"] == 1
    flag = lambda name: int(next(a.split("=")[1] for a in c["args"] if a.startswith(name + "=")))
    mib = lambda q: int(q[:-2]) * 1024 if q.endswith("Gi") else int(q[:-2])
    budget = flag("--max-memory-mb") + flag("--transport-memory-mb")
    # RSS = what the flags let frames and messages hold + the process's own baseline (the soak's
    # peak); the limit leaves a quarter on top, the request covers the frame budget + baseline.
    assert mib(res["limits"]["memory"]) >= 1.25 * (budget + SOAK_PEAK_RSS_MIB)
    assert mib(res["requests"]["memory"]) >= flag("--max-memory-mb") + SOAK_PEAK_RSS_MIB


VALIDATE_JS = r"""
// Validates each Kubernetes object (argv[2]: a JSON array) against its schema.
const docs = JSON.parse(process.argv[2]);
const core = {
  'v1/Service': () => require('kubernetes-models/v1/Service').Service,
  'apps/v1/Deployment': () => require('kubernetes-models/apps/v1/Deployment').Deployment,
  'policy/v1/PodDisruptionBudget': () =>
      require('kubernetes-models/policy/v1/PodDisruptionBudget').PodDisruptionBudget,
  'autoscaling/v2/HorizontalPodAutoscaler': () =>
      require('kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler').HorizontalPodAutoscaler,
  'monitoring.coreos.com/v1/ServiceMonitor': () =>
      require('@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor')
          .ServiceMonitor,
};
let ok = 0;
for (const d of docs) {
  const key = `${d.apiVersion}/${d.kind}`;
  if (!core[key]) { console.log(`no schema for ${key}`); process.exit(1); }
  const Model = core[key]();
  try {
    new Model(d).validate();
    ok++;
    console.log(`${key} ${d.metadata.name}: valid`);
  } catch (e) {
    console.log(`${key} ${d.metadata.name}: INVALID ${e.message}`);
    process.exit(1);
  }
}
console.log(`${ok} valid`);
"""
