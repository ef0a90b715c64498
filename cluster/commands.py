"""`lam pipeline` and `lam cluster`: the cluster layer's own commands (cluster/cli.py dispatches here).

    lam pipeline --config configs/quickstart.yaml [--run-dir DIR] [--set section.key=value ...] [--rerun-changed]
    lam cluster up|down --config configs/cluster/ray-up.yaml
    lam cluster submit --address http://127.0.0.1:8265 --config configs/quickstart.yaml [--working-dir .]
    lam cluster status --address http://127.0.0.1:8265
"""
from __future__ import annotations

import argparse
import json
import sys


def add_pipeline_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--config", required=True, help="pipeline YAML, e.g. configs/quickstart.yaml")
    s.add_argument("--run-dir", default=None, help="override run_dir from the config")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    s.add_argument("--rerun-changed", action="store_true",
                   help="a finished stage whose config changed is deleted and run again (with every stage that reads "
                        "it); without this flag such a re-run is refused")


def pipeline_main(a) -> int:
    from cluster.config import load_pipeline_config
    from cluster.pipeline import run_pipeline

    cfg = load_pipeline_config(a.config, a.set)
    if a.run_dir:
        cfg.run_dir = a.run_dir
    report = run_pipeline(cfg, rerun_changed=a.rerun_changed)
    # a policy whose every evaluation episode was an infrastructure error has no result: say so, exit 1
    empty = [name for name, r in report["policies"].items() if not r["overall"]["episodes"]]
    if empty:
        print(f"lam pipeline: error: no evaluation episodes for {', '.join(empty)} (all infrastructure errors); "
              f"see {cfg.run_dir}/eval", file=sys.stderr)
        return 1
    return 0


def add_cluster_args(s: argparse.ArgumentParser) -> None:
    csub = s.add_subparsers(dest="action", required=True)
    for name, what in (("up", "ray up: create or update the cluster"), ("down", "ray down: tear the cluster down")):
        c = csub.add_parser(name, help=what)
        c.add_argument("--config", required=True, help="ray up cluster YAML, e.g. configs/cluster/ray-up.yaml")
        c.add_argument("--dry-run", action="store_true", help="print the ray command without running it")
    c = csub.add_parser("submit", help="run `lam pipeline` on a running cluster as a Ray Job; follows its logs")
    c.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard (Jobs API) address")
    c.add_argument("--config", required=True, help="pipeline YAML inside --working-dir")
    c.add_argument("--working-dir", default=".", help="directory uploaded to the cluster (respects .gitignore)")
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. run_dir=/mnt/shared/runs/qs")
    c.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the job")
    c.add_argument("--entrypoint-num-cpus", type=float, default=None)
    c.add_argument("--entrypoint-num-gpus", type=float, default=None,
                   help="GPUs reserved for the driver (training runs in it): 1 places it on a GPU node")
    c.add_argument("--entrypoint-resources", default=None, metavar="JSON", help='e.g. \'{"gpu_node": 1}\'')
    c.add_argument("--submission-id", default=None)
    c.add_argument("--no-wait", action="store_true", help="submit and return without following the job")
    c = csub.add_parser("status", help="nodes and jobs of a cluster (dashboard address) or `ray status` on a ray-up head")
    c.add_argument("--address", default="http://127.0.0.1:8265", help="Ray dashboard address")
    c.add_argument("--config", default=None, help="ray up YAML: run `ray status` on its head instead")
    c.add_argument("--dry-run", action="store_true")


def cluster_main(a) -> int:
    from cluster import launch

    if a.action in ("up", "down"):
        make = launch.up_command if a.action == "up" else launch.down_command
        return launch.run(make(a.config), dry_run=a.dry_run)
    if a.action == "submit":
        from cluster.jobs import JobRequest, submit

        from data_collection.overrides import split_pair

        env = dict(split_pair(kv, what="--env", form="KEY=VALUE") for kv in a.env)
        req = JobRequest(address=a.address, config=a.config, working_dir=a.working_dir, overrides=a.set, env=env,
                         entrypoint_num_cpus=a.entrypoint_num_cpus, entrypoint_num_gpus=a.entrypoint_num_gpus,
                         entrypoint_resources=json.loads(a.entrypoint_resources) if a.entrypoint_resources else None,
                         submission_id=a.submission_id)
        _, status = submit(req, follow=not a.no_wait)
        return 0 if status in ("SUCCEEDED", "PENDING") else 1
    # status
    if a.config:
        return launch.run(launch.status_command(config=a.config), dry_run=a.dry_run)
    from cluster.jobs import job_table

    nodes = launch.node_table(a.address)
    print(f"{len(nodes)} alive node(s) at {a.address}: {sum(n['CPU'] for n in nodes):g} CPU, {sum(n['GPU'] for n in nodes):g} GPU")
    for n in nodes:
        print(f"  {'head  ' if n['head'] else 'worker'} {n['ip']:<15} {n['node_id'][:12]}  CPU {n['CPU']:g}  GPU {n['GPU']:g}")
    jobs = job_table(a.address)
    print(f"{len(jobs)} job(s)")
    for j in jobs:
        print(f"  {j['id']:<28} {j['status']:<10} {j['entrypoint']}")
    return 0
