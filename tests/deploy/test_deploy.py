"""Deployment checks that need no container engine (ctest label `deploy`).

* The runtime bundle the images ship (scripts/bundle-runtime.sh) is built from this build and
  runs: the Dockerfiles' ENTRYPOINT + CMD start a real server from it, their HEALTHCHECK command
  answers healthy (and unhealthy once it stopped), SIGTERM drains and exits 0.
* The Dockerfiles parse; every file they COPY from the context exists (and is not excluded by
  .dockerignore); what they COPY from the build stage is what the bundle script produces; the
  packages the build stage installs exist in Debian 12.
* docker/compose.yaml and the Prometheus/Grafana files parse and agree with each other and with
  the image: ports, health command, scrape target, provisioning paths; every metric the Grafana
  dashboard queries is exported by the server.
* docker/k8s/*.yaml parse; the Deployment's args start the real binary, its gRPC probes answer
  on the port the args bind, grace period covers preStop + drain, Services/PDB/ServiceMonitor
  select what exists, and the HPA's metrics come from series the server exports.

Env: FRAMEPIPE_BINARY (the built framepipe), FRAMEPIPE_BUILD_DIR (its build tree).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = DOCKER / "k8s"
KNOWN = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "HEALTHCHECK",
         "ENTRYPOINT", "CMD", "STOPSIGNAL", "LABEL", "VOLUME", "SHELL", "ONBUILD"}


# ---------------------------------------------------------------- helpers
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def parse_dockerfile(path: Path) -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: List[Tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def exec_form(args: str) -> List[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def stages(instructions: List[Tuple[str, str]]) -> List[Dict]:
    result: List[Dict] = []
    for ins, args in instructions:
        if ins == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            result.append({"image": parts[0], "name": name, "ins": []})
        elif result:
            result[-1]["ins"].append((ins, args))
        else:
            assert ins == "ARG", f"{ins} before the first FROM"
    return result


def dockerignore() -> List[str]:
    pats = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line.rstrip("/"))
    return pats


def ignored(rel: str, patterns: List[str]) -> bool:
    import fnmatch

    for p in patterns:
        if p.startswith("**/"):
            if any(fnmatch.fnmatch(part, p[3:]) for part in rel.split("/")):
                return True
        elif rel == p or rel.startswith(p + "/") or fnmatch.fnmatch(rel, p):
            return True
    return False


def split_copy(args: str) -> Tuple[Dict[str, str], List[str], str]:
    tokens = shlex.split(args)
    flags = {}
    while tokens and tokens[0].startswith("--"):
        k, _, v = tokens.pop(0)[2:].partition("=")
        flags[k] = v
    assert len(tokens) >= 2, args
    return flags, tokens[:-1], tokens[-1]


class Running:
    """A command run as the image would run it, with its output in a file."""

    def __init__(self, argv: List[str]):
        self.log = tempfile.NamedTemporaryFile(prefix="framepipe-deploy-", delete=False)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_started(self) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if re.search(r"event=server_started|\"event\":\"server_started\"", self.text()):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv} exited {self.proc.returncode}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.argv} did not start:\n{self.text()}")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"no exit within {timeout} s of SIGTERM:\n{self.text()}")
        os.unlink(self.log.name)
        return self.proc.returncode


def rewrite(argv: List[str], bundle: Path, ports: Dict[int, int]) -> List[str]:
    """The image's paths -> the local bundle; 0.0.0.0:P / 127.0.0.1:P -> 127.0.0.1:<free>."""
    out = []
    for a in argv:
        a = a.replace("/opt/framepipe", str(bundle))

        def sub(m: re.Match) -> str:
            p = int(m.group(2))
            ports.setdefault(p, free_port())
            return f"127.0.0.1:{ports[p]}"

        out.append(re.sub(r"(0\.0\.0\.0|127\.0\.0\.1):(\d+)", sub, a))
    return out


def metric_names(metrics_port: int) -> set:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        body = r.read().decode()
    names = set()
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, 1)[0])
    return names


def run_stream(binary: str, port: int, frames: int = 20) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "stream", "--target", f"127.0.0.1:{port}", "--frames",
                           str(frames), "--size", "320x240", "--no-progress"],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def binary() -> str:
    b = os.environ.get("FRAMEPIPE_BINARY", str(REPO / "build/default/bin/framepipe"))
    assert os.access(b, os.X_OK), b
    return b


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    build = os.environ.get("FRAMEPIPE_BUILD_DIR", str(REPO / "build/default"))
    out = tmp_path_factory.mktemp("image") / "opt-framepipe"
    subprocess.run([str(REPO / "scripts/bundle-runtime.sh"), build, str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def serve_help(binary) -> str:
    return subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout


def flags_exist(args: List[str], help_text: str) -> None:
    for a in args:
        if a.startswith("--"):
            flag = a.split("=", 1)[0]
            assert re.search(rf"(^|\s|,){re.escape(flag)}\b", help_text), \
                f"{flag} is not a `framepipe serve` flag"


# ---------------------------------------------------------------- the bundle
def test_bundle_is_self_contained(bundle: Path) -> None:
    exe = bundle / "bin/framepipe"
    env = dict(os.environ, LD_LIBRARY_PATH=str(bundle / "lib"))
    ldd = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, env=env).stdout
    assert "not found" not in ldd, ldd
    system = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "ld-linux",
              "libresolv.so", "linux-vdso")
    for line in ldd.splitlines():
        name = line.split()[0]
        if name.startswith(system) or "=>" not in line:
            continue
        assert str(bundle / "lib") in line, f"not from the bundle: {line.strip()}"
    assert os.access(bundle / "framepipe", os.X_OK)


# ---------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_parses_and_copies_what_exists(name: str) -> None:
    ins = parse_dockerfile(DOCKER / name)
    for i, _ in ins:
        assert i in KNOWN, f"{name}: unknown instruction {i}"
    st = stages(ins)
    assert len(st) == 2 and st[0]["name"] == "build", "a build stage and a runtime stage"
    patterns = dockerignore()
    copied: List[str] = []
    for ins_name, args in st[0]["ins"]:
        if ins_name == "COPY":
            flags, srcs, _ = split_copy(args)
            assert "from" not in flags
            for s in srcs:
                assert (REPO / s).exists(), f"{name}: COPY {s}: no such file in the repository"
                assert not ignored(s, patterns), f"{name}: COPY {s} is excluded by .dockerignore"
                copied.append(s)
        if ins_name == "RUN":
            for script in re.findall(r"scripts/[\w.-]+\.sh", args):
                assert (REPO / script).is_file(), script
                assert any(script == c or script.startswith(c.rstrip("/") + "/")
                           for c in copied), f"{name}: RUN uses {script} before COPYing it"
    # Everything CMake needs is in the context copies.
    for needed in ["CMakeLists.txt", "proto", "src", "kernels", "bench", "tests/support",
                   "scripts"]:
        assert needed in copied, f"{name}: the build stage does not COPY {needed}"
    build_run = " ".join(a for i, a in st[0]["ins"] if i == "RUN")
    m = re.search(r"scripts/bundle-runtime\.sh\s+(\S+)\s+(\S+)", build_run)
    assert m, f"{name}: the build stage must bundle the runtime"
    bundle_dir = m.group(2)
    runtime = st[1]["ins"]
    from_build = [split_copy(a) for i, a in runtime if i == "COPY" and "--from=build" in a]
    assert from_build, f"{name}: the runtime stage copies nothing from the build"
    for flags, srcs, dest in from_build:
        assert srcs == [bundle_dir], f"{name}: COPY --from=build {srcs}: the build makes {bundle_dir}"
    user = [a for i, a in runtime if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), f"{name}: runs as root"
    assert any(i == "HEALTHCHECK" for i, _ in runtime)


def test_build_stage_packages_exist_in_debian() -> None:
    pkgs = subprocess.run([str(REPO / "scripts/setup.sh"), "--list-build"], capture_output=True,
                          text=True, check=True).stdout.split()
    assert "libgrpc++-dev" in pkgs and "cmake" in pkgs
    out = subprocess.run(["apt-cache", "policy", *pkgs], capture_output=True, text=True).stdout
    for p in pkgs:
        block = re.search(rf"^{re.escape(p)}:\n(.*?)(?=^\S|\Z)", out, re.S | re.M)
        assert block and "Candidate: (none)" not in block.group(1), f"{p}: not a Debian package"


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_entrypoint_and_healthcheck_run_from_the_bundle(name, bundle, binary) -> None:
    runtime = stages(parse_dockerfile(DOCKER / name))[1]["ins"]
    entry = exec_form(next(a for i, a in runtime if i == "ENTRYPOINT"))
    cmd = exec_form(next(a for i, a in runtime if i == "CMD"))
    hc = next(a for i, a in runtime if i == "HEALTHCHECK")
    hc_cmd = exec_form(hc[hc.index("CMD") + 3:].strip())
    exposed = {int(p) for i, a in runtime if i == "EXPOSE" for p in a.split()}
    bound = {int(p) for p in re.findall(r"0\.0\.0\.0:(\d+)", " ".join(cmd))}
    assert bound == exposed, f"{name}: EXPOSE {exposed} but CMD binds {bound}"
    if "--backend" in cmd and cmd[cmd.index("--backend") + 1] == "cuda":
        pytest.fail("the GPU image must start (and fall back) without a device: use auto")
    ports: Dict[int, int] = {}
    argv = rewrite(entry + cmd, bundle, ports)
    hc_argv = rewrite(hc_cmd, bundle, ports)
    server = Running(argv)
    try:
        server.wait_started()
        # The server runs from the bundle's libraries, not the build machine's.
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert str(bundle / "lib" / "libgrpc++") in maps
        hc_run = subprocess.run(hc_argv, capture_output=True, text=True, timeout=30)
        assert hc_run.returncode == 0, hc_run.stdout + hc_run.stderr
        s = run_stream(binary, ports[50051])
        assert s.returncode == 0, s.stdout + s.stderr
        assert "every stream complete and in order" in s.stdout
        names = metric_names(ports[9464])
        assert "framepipe_frames_total" in names
    finally:
        rc = server.stop()
    assert rc == 0, "SIGTERM drains and exits 0"
    down = subprocess.run(hc_argv, capture_output=True, text=True, timeout=30)
    assert down.returncode != 0, "the health check fails when the server is gone"


# ---------------------------------------------------------------- compose, Prometheus, Grafana
@pytest.fixture(scope="module")
def live_metrics(binary) -> set:
    """Metric names a server exports once frames went through it."""
    port, mport = free_port(), free_port()
    server = Running([binary, "serve", "--listen", f"127.0.0.1:{port}", "--metrics",
                      f"127.0.0.1:{mport}", "--backend", "cpu", "--workers", "2"])
    try:
        server.wait_started()
        assert run_stream(binary, port).returncode == 0
        return metric_names(mport)
    finally:
        server.stop()


def dockerfile_cmd(name: str) -> Tuple[List[str], List[str]]:
    runtime = stages(parse_dockerfile(DOCKER / name))[1]["ins"]
    cmd = exec_form(next(a for i, a in runtime if i == "CMD"))
    hc = next(a for i, a in runtime if i == "HEALTHCHECK")
    return cmd, exec_form(hc[hc.index("CMD") + 3:].strip())


def test_compose_agrees_with_the_images(serve_help) -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert "name" not in compose, "Debian's docker-compose 1.29 rejects a top-level name:"
    svcs = compose["services"]
    assert {"framepipe-cpu", "framepipe-gpu", "prometheus", "grafana"} <= set(svcs)
    for svc, dockerfile in [("framepipe-cpu", "Dockerfile.cpu"), ("framepipe-gpu", "Dockerfile")]:
        s = svcs[svc]
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve() == \
            (DOCKER / dockerfile).resolve()
        cmd, hc = dockerfile_cmd(dockerfile)
        flags_exist(s["command"], serve_help)
        assert s["healthcheck"]["test"] == ["CMD", *hc]
        assert "framepipe" in s["networks"]["default"]["aliases"]
        published = {int(p.rsplit(":", 1)[1]) for p in s["ports"]}
        assert published <= {int(p) for p in re.findall(r"0\.0\.0\.0:(\d+)", " ".join(cmd))}
        grace = int(str(s["stop_grace_period"]).rstrip("s"))
        drain = int(s["command"][s["command"].index("--drain-timeout") + 1].rstrip("s"))
        assert grace > drain
    assert svcs["framepipe-cpu"]["command"] == dockerfile_cmd("Dockerfile.cpu")[0]
    gpu = svcs["framepipe-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert svcs["framepipe-gpu"]["profiles"] == ["gpu"]
    for svc in ("prometheus", "grafana"):
        for vol in svcs[svc]["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{svc}: volume {src} does not exist"
    # Prometheus scrapes the alias on the metrics port the command binds.
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    metrics_flag = svcs["framepipe-cpu"]["command"][
        svcs["framepipe-cpu"]["command"].index("--metrics") + 1]
    assert targets == [f"framepipe:{metrics_flag.rsplit(':', 1)[1]}"]
    # Grafana: the datasource is the prometheus service; the provider reads the mounted folder.
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/framepipe.yml").read_text())
    path = prov["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svcs["grafana"]["volumes"]}
    assert path in mounts and (DOCKER / mounts[path] / "framepipe.json").is_file()


def test_dashboard_queries_only_exported_metrics(live_metrics) -> None:
    dash = json.loads((DOCKER / "grafana/dashboards/framepipe.json").read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    assert exprs, "the dashboard has no queries"
    for e in exprs:
        for name in re.findall(r"\bframepipe_[a-z_]+", e):
            assert name in live_metrics, f"dashboard queries {name}, which the server does not export"


# ---------------------------------------------------------------- Kubernetes
def k8s_docs() -> Dict[str, List[dict]]:
    docs: Dict[str, List[dict]] = {}
    for f in sorted(K8S.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                docs.setdefault(d["kind"], []).append(d)
    return docs


def selects(selector: Dict[str, str], labels: Dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_k8s_manifests_are_consistent(serve_help) -> None:
    docs = k8s_docs()
    dep = docs["Deployment"][0]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert selects(dep["spec"]["selector"]["matchLabels"], labels)
    c = pod["spec"]["containers"][0]
    flags_exist(c["args"], serve_help)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = " ".join(c["args"])
    for flag, name in [("--listen", "grpc"), ("--metrics", "metrics"), ("--health-listen", "health")]:
        m = re.search(rf"{flag}=0\.0\.0\.0:(\d+)", args)
        assert m and int(m.group(1)) == ports[name], f"{flag} vs containerPort {name}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == ports["health"], probe
    drain = int(re.search(r"--drain-timeout=(\d+)s", args).group(1))
    pre = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= int(pre[1]) + drain + 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    ann = pod["metadata"]["annotations"]
    assert int(ann["prometheus.io/port"]) == ports["metrics"]
    # Services select the pods and name ports the container has.
    svcs = {s["metadata"]["name"]: s for s in docs["Service"]}
    grpc_svc = svcs["framepipe"]
    assert grpc_svc["spec"]["clusterIP"] == "None", "headless: clients balance streams"
    for s in svcs.values():
        assert selects(s["spec"]["selector"], labels)
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in ports
    msvc = svcs["framepipe-metrics"]
    assert int(msvc["metadata"]["annotations"]["prometheus.io/port"]) == ports["metrics"]
    sm = docs["ServiceMonitor"][0]
    assert selects(sm["spec"]["selector"]["matchLabels"], msvc["metadata"]["labels"])
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in msvc["spec"]["ports"]}
    pdb = docs["PodDisruptionBudget"][0]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = docs["HorizontalPodAutoscaler"][0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for r in kust["resources"]:
        assert (K8S / r).is_file(), r


def test_k8s_args_and_probes_work_on_the_binary(binary) -> None:
    c = k8s_docs()["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("--backend=cuda", "--backend=cpu") for a in c["args"]]  # no GPU here
    ports: Dict[int, int] = {}
    server = Running(rewrite([binary, *args], Path("/opt/framepipe"), ports))
    try:
        server.wait_started()
        health = ports[c["readinessProbe"]["grpc"]["port"]]
        # What the kubelet's gRPC probe asks: grpc.health.v1.Health/Check, service "".
        probe = subprocess.run([binary, "health", "--target", f"127.0.0.1:{health}"],
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert run_stream(binary, ports[named["grpc"]]).returncode == 0
        assert "framepipe_in_flight" in metric_names(ports[named["metrics"]])
    finally:
        assert server.stop() == 0


def test_hpa_metrics_come_from_exported_series(live_metrics) -> None:
    docs = k8s_docs()
    hpa = docs["HorizontalPodAutoscaler"][0]
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    cm = next(d for d in docs["ConfigMap"] if d["metadata"]["name"] == "framepipe-adapter-rules")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    provided = {r["name"]["as"]: r for r in rules}
    assert wanted <= set(provided), f"HPA metrics {wanted - set(provided)} have no adapter rule"
    for name in wanted:
        series = re.match(r"'?([a-z_]+)", provided[name]["seriesQuery"]).group(1)
        assert series in live_metrics, f"{name}: the server exports no {series}"
