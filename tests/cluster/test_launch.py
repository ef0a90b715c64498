"""Launching on a cluster: the shipped cluster configs validate against the schemas their tools use,
the `lam cluster` commands say exactly what they run, and a real two-node Ray cluster on 127.0.0.1
runs `lam cluster submit` end to end with collectors on both nodes.

    .venv/bin/python -m pytest -q tests/cluster/test_launch.py
"""
from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from cluster.cli import main as lam
from cluster.config import ConfigError
from cluster.jobs import JobRequest, build_job
from cluster.launch import load_cluster_yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "configs" / "cluster"
SCHEMAS = Path(__file__).parent / "schemas"


# -- KubeRay manifests against the CRD schema ------------------------------------------------------
def _strict(node):
    """Unknown fields become errors, as with `kubectl apply --validate=strict` (the API server's
    default is to warn and prune them, which hides typos until the pod runs without its setting)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and isinstance(node.get("properties"), dict) \
                and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for v in node.values():
            _strict(v)
    elif isinstance(node, list):
        for v in node:
            _strict(v)
    return node


def _kuberay_validator(kind: str):
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    base = "https://schemas.lam-stack.invalid/"
    kuberay = _strict(json.loads((SCHEMAS / "kuberay-v1.json").read_text()))
    k8s = json.loads((SCHEMAS / "k8s-v1.30-podspec.json").read_text())
    registry = Registry().with_resources([
        (base + "kuberay-v1.json", Resource.from_contents({**kuberay, "$id": base + "kuberay-v1.json"}, DRAFT202012)),
        (base + "k8s-v1.30-podspec.json", Resource.from_contents({**k8s, "$id": base + "k8s-v1.30-podspec.json"}, DRAFT202012)),
    ])
    return jsonschema.Draft202012Validator({"$ref": f"{base}kuberay-v1.json#/{kind}"}, registry=registry)


def _manifest(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]
    assert len(docs) == 1 and docs[0]["apiVersion"] == "ray.io/v1"
    return docs[0]


@pytest.mark.parametrize("name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_manifest_validates_against_crd_schema(name, kind):
    doc = _manifest(name)
    assert doc["kind"] == kind
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _kuberay_validator(kind).iter_errors(doc)]
    assert not errors, "\n".join(errors)
    spec = doc["spec"] if kind == "RayCluster" else doc["spec"]["rayClusterSpec"]
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    if kind == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("lam pipeline --config ")


def _break(doc: dict, how: str) -> dict:
    doc = copy.deepcopy(doc)
    spec = doc["spec"]
    if how == "unknown-field":
        spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    elif how == "int-start-param":
        spec["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    elif how == "missing-group-name":
        del spec["workerGroupSpecs"][0]["groupName"]
    elif how == "bad-quantity":
        spec["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "one"
    elif how == "container-typo":
        c = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        c["imagee"] = c.pop("image")
    return doc


@pytest.mark.parametrize("how", ["unknown-field", "int-start-param", "missing-group-name", "bad-quantity", "container-typo"])
def test_kuberay_schema_rejects_broken_manifests(how):
    # the validation above means something only if it catches the mistakes people make
    assert list(_kuberay_validator("RayCluster").iter_errors(_break(_manifest("raycluster.yaml"), how)))


# -- ray up YAML against Ray's cluster config schema ----------------------------------------------
def test_ray_up_yaml_validates_against_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load_cluster_yaml(CLUSTER / "ray-up.yaml")  # ray/autoscaler/ray-schema.json
    full = prepare_config(copy.deepcopy(cfg))  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(full)
    assert cfg["provider"]["type"] == "aws" and set(cfg["available_node_types"]) == {"head", "cpu-worker", "gpu-worker"}
    assert cfg["available_node_types"]["gpu-worker"]["node_config"]["InstanceType"].startswith(("g", "p"))
    setup = cfg["setup_commands"]
    assert "torch==2.13.0" in setup[0] and 'pip install -q -e ".[gpu]"' in setup[1]


def test_ray_up_yaml_typo_is_a_one_line_error(tmp_path):
    cfg = yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())
    cfg["available_node_types"]["gpu-worker"]["min_worker"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="available_node_types/gpu-worker"):
        load_cluster_yaml(bad)


def test_every_cluster_file_opens_with_its_command():
    expect = {
        "ray-up.yaml": "# lam cluster up --config configs/cluster/ray-up.yaml",
        "smoke.yaml": "# lam cluster submit --address http://127.0.0.1:8265 --config configs/cluster/smoke.yaml",
        "kuberay/raycluster.yaml": "# kubectl apply -f configs/cluster/kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml": "# kubectl apply -f configs/cluster/kuberay/rayjob.yaml",
        "kuberay/Dockerfile": "# docker build -f configs/cluster/kuberay/Dockerfile",
        "slurm/lam-ray.sbatch": "# sbatch configs/cluster/slurm/lam-ray.sbatch",
    }
    for rel, head in expect.items():
        lines = [ln for ln in (CLUSTER / rel).read_text().splitlines() if not ln.startswith("#!")]
        assert lines[0].startswith(head), f"{rel} opens with {lines[0]!r}"


def test_slurm_script_is_valid_bash_and_joins_with_auto():
    script = CLUSTER / "slurm" / "lam-ray.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "ray start --head" in text and "ray start --address" in text and "ray.address=auto" in text
    assert "ray stop" not in text.replace("never `ray stop`", "")


# -- the lam cluster commands -----------------------------------------------------------------------
def test_cluster_up_and_down_print_the_exact_ray_command(capsys):
    assert lam(["cluster", "up", "--config", "configs/cluster/ray-up.yaml", "--dry-run"]) == 0
    assert lam(["cluster", "down", "--config", "configs/cluster/ray-up.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("$ ") and out[0].endswith("ray up -y configs/cluster/ray-up.yaml")
    assert out[1].endswith("ray down -y configs/cluster/ray-up.yaml")
    assert lam(["cluster", "up", "--config", "no/such.yaml", "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err


# issue 21 item 8
@pytest.mark.parametrize("action", ["status", "submit"])
def test_cluster_commands_against_a_dead_address_say_so_in_one_line(action):
    """Nothing listens at the dashboard address: one line naming it and what to do, not a traceback."""
    address = f"http://127.0.0.1:{_free_port()}"
    extra = ["--config", "configs/quickstart.yaml", "--set", "run_dir=/tmp/lam-never-written"] if action == "submit" else []
    cmd = [sys.executable, "-m", "cluster.cli", "cluster", action, "--address", address, *extra]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert len(lines) == 1, lines[:20]
    assert address in lines[0] and "connection refused" in lines[0] and "port forwarded" in lines[0]


def test_submit_builds_a_working_dir_job_for_lam_pipeline(tmp_path):
    job = build_job(JobRequest(address="http://127.0.0.1:8265", config=str(CLUSTER / "smoke.yaml"), working_dir=str(REPO),
                               overrides=["run_dir=/mnt/shared/runs/smoke"], env={"HF_HOME": "/mnt/shared/hf"},
                               entrypoint_num_gpus=1))
    assert job["entrypoint"] == "lam pipeline --config configs/cluster/smoke.yaml --set run_dir=/mnt/shared/runs/smoke"
    assert job["runtime_env"]["working_dir"] == str(REPO) and ".venv" in job["runtime_env"]["excludes"]
    assert job["runtime_env"]["env_vars"]["HF_HOME"] == "/mnt/shared/hf" and job["entrypoint_num_gpus"] == 1
    outside = tmp_path / "c.yaml"
    outside.write_text((CLUSTER / "smoke.yaml").read_text())
    with pytest.raises(ConfigError, match="outside --working-dir"):
        build_job(JobRequest(address="x", config=str(outside), working_dir=str(REPO)))
    with pytest.raises(ConfigError, match="unknown key"):  # checked here, before any upload
        build_job(JobRequest(address="x", config=str(CLUSTER / "smoke.yaml"), working_dir=str(REPO),
                             overrides=["collect.episodez=3"]))


# -- a real two-node cluster on 127.0.0.1 -----------------------------------------------------------
# `ray start --address` rewrites a loopback address to this machine's external interface before it
# joins (and refuses to join at all with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), while the head's GCS
# listens on 127.0.0.1 only. Run the same `ray start` with that one rewrite made the identity, so
# every connection stays on loopback.
_RAY_START_ON_LOOPBACK = ("import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
                         "from ray.scripts.scripts import main; main()")
_OBJECT_STORE = str(100 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_processes(temp_dir: str):
    """Every process of the test cluster: those naming its private temp dir, and their descendants
    (workers rename themselves to `ray::...`, the job driver and its model server hang below them)."""
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if temp_dir in " ".join(p.info["cmdline"] or []):
                roots.append(p)
        except psutil.Error:
            pass
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    procs.pop(os.getpid(), None)
    return list(procs.values())


def _stop_cluster(temp_dir: str) -> None:
    from tests.processes import stop_processes

    stop_processes(_cluster_processes(temp_dir))


def _alive_nodes(url: str, token: str) -> list[dict]:
    import httpx

    try:
        r = httpx.get(f"{url}/api/v0/nodes", params={"limit": 100}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        rows = r.json()["data"]["result"]["result"] if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError):
        rows = []
    return [n for n in rows if n["state"] == "ALIVE"]


def _ray_start(cmd: list[str], env: dict, url: str, token: str, nodes: int, temp_dir: str, timeout: float) -> list[dict]:
    """Run one `ray start` and wait until the cluster has `nodes` alive nodes. `ray start` gives a
    new raylet a fixed 30 s to register and then exits 1 while the raylet keeps starting; on two
    busy shared cores that happens, so the verdict is the node showing up, not the exit code."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        said = p.stdout[-2000:] + p.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
        said = f"(still running after {timeout:.0f}s) {(e.stderr or b'')[-2000:]!r}"
    while len(alive := _alive_nodes(url, token)) < nodes and time.monotonic() - t0 < timeout:
        time.sleep(2)
    if len(alive) < nodes:
        logs = Path(temp_dir) / "session_latest" / "logs"
        tails = "".join(f"\n--- {f.name} ---\n{f.read_text(errors='replace')[-1500:]}"
                        for f in sorted(logs.glob("raylet*.err")) + sorted(logs.glob("dashboard_agent*.log")))
        pytest.fail(f"{len(alive)} of {nodes} nodes alive after `{' '.join(cmd[1:4])} ...`:\n{said}{tails}")
    return alive


@pytest.fixture
def two_node_cluster():
    """A Ray head (with dashboard and Jobs API) and a second node joining it, 1 CPU each, all on
    127.0.0.1, under a private temp dir; token authentication on both sides. Stops only its own processes."""
    temp_dir = tempfile.mkdtemp(prefix="lr", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               # the raylet waits this long for its dashboard agent to come up (default 30 s: too
               # short when other engineers' jobs share the two cores)
               RAY_agent_register_timeout_ms="300000")
    gcs, dash = _free_port(), _free_port()
    url = f"http://127.0.0.1:{dash}"
    ray = str(Path(sys.executable).with_name("ray"))
    try:
        _ray_start([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard=true",
                    "--num-cpus", "1", "--temp-dir", temp_dir, "--ray-client-server-port", str(_free_port()),
                    "--dashboard-agent-listen-port", str(_free_port()), "--object-store-memory", _OBJECT_STORE,
                    "--disable-usage-stats"],
                   {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, url, token, 1, temp_dir, timeout=300)
        # The second node gets a temp dir of its own: nodes sharing one would share runtime_resources/,
        # and one node's runtime-env cleanup would delete the job's working dir under the other's driver.
        nodes = _ray_start([sys.executable, "-c", _RAY_START_ON_LOOPBACK, "start", "--address", f"127.0.0.1:{gcs}",
                            "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--temp-dir", f"{temp_dir}/w",
                            "--dashboard-agent-listen-port", str(_free_port()), "--object-store-memory", _OBJECT_STORE,
                            "--disable-usage-stats"],
                           {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, url, token, 2, temp_dir, timeout=300)
        assert all(n["node_ip"] == "127.0.0.1" for n in nodes), nodes
        yield {"url": url, "env": env, "nodes": nodes, "temp_dir": temp_dir}
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cluster_submit_runs_the_pipeline_on_two_nodes(two_node_cluster, tmp_path):
    c = two_node_cluster
    run_dir = tmp_path / "run"  # "shared storage": both nodes are this machine
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "cluster", "submit", "--address", c["url"],
         "--config", "configs/cluster/smoke.yaml", "--working-dir", str(REPO), "--set", f"run_dir={run_dir}"],
        cwd=REPO, env=c["env"], capture_output=True, text=True, timeout=1200,
    )
    log = f"{p.stdout[-6000:]}\n--- stderr ---\n{p.stderr[-3000:]}"
    assert p.returncode == 0 and "SUCCEEDED" in p.stdout, log
    assert "collect" in p.stdout and "evaluate" in p.stdout, log  # the driver's output was streamed back
    print(f"job wall time {time.perf_counter() - t0:.0f}s")

    # collector batches (each written as one shard) came from both nodes of the cluster
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    batch_nodes = {b["node_id"] for b in manifest["batches"].values()}
    assert batch_nodes == {n["node_id"] for n in c["nodes"]}, (batch_nodes, c["nodes"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["policies"]["model"]["overall"]["episodes"] == 4

    # status lists both nodes and the finished job
    s = subprocess.run([sys.executable, "-m", "cluster.cli", "cluster", "status", "--address", c["url"]],
                       cwd=REPO, env=c["env"], capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    assert "2 alive node(s)" in s.stdout and "SUCCEEDED" in s.stdout, s.stdout
