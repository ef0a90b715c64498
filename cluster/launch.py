"""Start, inspect and stop a Ray cluster for lam with Ray's own launcher (`ray up` / `ray down`).

    lam cluster up --config configs/cluster/ray-up.yaml        # = ray up -y configs/cluster/ray-up.yaml
    lam cluster status --config configs/cluster/ray-up.yaml    # = ray exec CONFIG 'ray status'
    lam cluster down --config configs/cluster/ray-up.yaml      # = ray down -y configs/cluster/ray-up.yaml

Each command prints the exact `ray ...` line it runs, so anything here can be done by hand too.
The YAML is checked against Ray's cluster config schema (ray/autoscaler/ray-schema.json) first,
so a typo stops here instead of after instances were requested.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cluster.config import ConfigError


def ray_executable() -> str:
    """The `ray` CLI of this interpreter's environment (a venv need not be activated), else PATH's."""
    here = Path(sys.executable).with_name("ray")
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


def load_cluster_yaml(path: str | Path) -> dict:
    """Read a `ray up` cluster YAML and check it against Ray's cluster config schema."""
    import jsonschema

    import ray.autoscaler

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"cluster config {path} does not exist")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a cluster config is a mapping (cluster_name, provider, ...)")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(cfg, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "top level"
        raise ConfigError(f"{path}: {where}: {e.message} (Ray cluster config schema)") from None
    # the cross-field checks of ray.autoscaler._private.util.validate_config
    types = cfg.get("available_node_types", {})
    if types:
        if cfg.get("head_node_type") not in types:
            raise ConfigError(f"{path}: head_node_type must name one of available_node_types ({', '.join(types)})")
        if sum(t.get("min_workers", 0) for t in types.values()) > cfg.get("max_workers", 2):
            raise ConfigError(f"{path}: max_workers is below the sum of the node types' min_workers")
    return cfg


def up_command(config: str, yes: bool = True, extra: list[str] | None = None) -> list[str]:
    load_cluster_yaml(config)
    return [ray_executable(), "up", *(["-y"] if yes else []), *(extra or []), config]


def down_command(config: str, yes: bool = True) -> list[str]:
    load_cluster_yaml(config)
    return [ray_executable(), "down", *(["-y"] if yes else []), config]


def status_command(config: str | None = None, gcs_address: str | None = None) -> list[str]:
    """`ray status` on the head of a `ray up` cluster, or against a GCS address (host:6379)."""
    if config:
        load_cluster_yaml(config)
        return [ray_executable(), "exec", config, "ray status"]
    return [ray_executable(), "status", *(["--address", gcs_address] if gcs_address else [])]


def run(cmd: list[str], dry_run: bool = False) -> int:
    """Print the exact command, then run it in the foreground; returns its exit code."""
    print("$ " + shlex.join(cmd), flush=True)
    if dry_run:
        return 0
    return subprocess.call(cmd)


def dashboard_unreachable(address: str, e: BaseException) -> ConnectionError:
    """One line for a dashboard address (Jobs and State API) that did not answer, and what to do."""
    chain, cur = [], e
    while cur is not None and len(chain) < 8:
        chain.append(str(cur))
        cur = cur.__cause__ or cur.__context__
    text = " ".join(chain)
    if "status=401" in text or "status=403" in text:
        why = "it refused this client: set RAY_AUTH_TOKEN to the cluster's token"
    elif "refused" in text.lower():
        why = "connection refused"
    elif "timed out" in text.lower() or "timeout" in text.lower():
        why = "timed out"
    else:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return ConnectionError(f"cannot reach the Ray dashboard at {address} ({why}): is the cluster up and its dashboard "
                           f"port forwarded (`ray dashboard CLUSTER.yaml`, `kubectl port-forward svc/HEAD-SVC 8265`)? "
                           f"`lam cluster status --config CLUSTER.yaml` asks a `ray up` head directly")


def node_table(address: str) -> list[dict]:
    """Alive nodes of the cluster behind a dashboard address, with their CPU/GPU totals."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    rows = []
    try:
        nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")])
    except (RayStateApiException, ConnectionError) as e:
        raise dashboard_unreachable(address, e) from None
    for n in nodes:
        res = n.resources_total or {}
        rows.append({"node_id": n.node_id, "ip": n.node_ip, "head": n.is_head_node,
                     "CPU": res.get("CPU", 0), "GPU": res.get("GPU", 0)})
    return sorted(rows, key=lambda r: (not r["head"], r["ip"]))
