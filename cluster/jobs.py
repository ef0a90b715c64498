"""Run `lam pipeline` on a running Ray cluster as a Ray Job (the Jobs SDK, not a scheduler of our own).

    lam cluster submit --address http://127.0.0.1:8265 --config configs/quickstart.yaml [--working-dir .]
    lam cluster status --address http://127.0.0.1:8265

The working directory (default: the repository root) is uploaded as the job's `working_dir`
runtime environment, so every node imports this checkout's code; `.gitignore`d paths (.venv, runs/)
stay behind. The config is validated here before anything is uploaded, the driver's output is
streamed back, and the job's final status is returned (exit code 0 only for SUCCEEDED).

Results land in the config's `run_dir` on the node that runs the driver: give an absolute path on
shared storage (`--set run_dir=/mnt/shared/runs/NAME`); a relative one ends up inside the job's
unpacked working dir, which Ray deletes.
"""
from __future__ import annotations

import asyncio
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster.config import ConfigError, load_pipeline_config

# Kept out of the upload even when no .gitignore says so: virtualenvs, run outputs, git objects.
UPLOAD_EXCLUDES = [".git", ".venv", "runs", "**/__pycache__"]


@dataclass
class JobRequest:
    # Ray dashboard address serving the Jobs API, e.g. http://127.0.0.1:8265
    address: str
    # pipeline YAML; must lie under working_dir, since the job sees only what is uploaded
    config: str
    working_dir: str = "."
    # SECTION.KEY=VALUE overrides passed on to `lam pipeline --set`
    overrides: list[str] = field(default_factory=list)
    # extra environment variables for the driver and every actor it starts
    env: dict[str, str] = field(default_factory=dict)
    # resources the driver itself reserves; training runs inside the driver, so GPU training
    # wants entrypoint_num_gpus=1 (the driver is then placed on a GPU node)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_resources: dict[str, float] | None = None
    submission_id: str | None = None


def build_job(req: JobRequest) -> dict:
    """The keyword arguments for `JobSubmissionClient.submit_job`, after checking the config here."""
    work = Path(req.working_dir).resolve()
    if not work.is_dir():
        raise ConfigError(f"--working-dir {req.working_dir} is not a directory")
    cfg_path = Path(req.config)
    cfg_abs = (cfg_path if cfg_path.is_absolute() else Path.cwd() / cfg_path).resolve()
    try:
        rel = cfg_abs.relative_to(work)
    except ValueError:
        raise ConfigError(f"--config {req.config} is outside --working-dir {work}: the job only sees "
                          f"files under the working dir; move the config there") from None
    cfg = load_pipeline_config(cfg_abs, req.overrides)  # one-line errors before any upload
    if not Path(cfg.run_dir).is_absolute() and "://" not in cfg.run_dir:
        print(f"lam cluster submit: warning: run_dir {cfg.run_dir!r} is relative, so results land in the job's "
              f"temporary working dir on the driver's node; pass --set run_dir=/shared/path to keep them",
              file=sys.stderr)
    argv = ["lam", "pipeline", "--config", rel.as_posix()]
    for kv in req.overrides:
        argv += ["--set", kv]
    env = {
        # ray.init() in the driver adds its own worker env vars (data_collection/ray_local.py); let those
        # win over the job's instead of failing on a duplicate key.
        "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
        **req.env,
    }
    job = {
        "entrypoint": shlex.join(argv),
        "runtime_env": {"working_dir": str(work), "excludes": UPLOAD_EXCLUDES, "env_vars": env},
        "metadata": {"lam_config": rel.as_posix(), "run_dir": cfg.run_dir},
    }
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_resources", "submission_id"):
        if getattr(req, key) is not None:
            job[key] = getattr(req, key)
    return job


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    from cluster.launch import dashboard_unreachable

    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise dashboard_unreachable(address, e) from None


async def _tail(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def wait_for_job(client, job_id: str, follow: bool = True, out=sys.stdout, poll_s: float = 1.0) -> str:
    """Stream the job's logs (when `follow`) until it ends; returns the terminal status name."""
    if follow:
        try:
            asyncio.run(_tail(client, job_id, out))
        except RuntimeError as e:  # the log socket dropped; the job itself may still be running
            print(f"lam cluster submit: log stream ended early ({e}); waiting for the job", file=sys.stderr)
    while True:
        status = client.get_job_status(job_id)
        if status.is_terminal():
            return status.value
        time.sleep(poll_s)


def submit(req: JobRequest, follow: bool = True, out=sys.stdout) -> tuple[str, str]:
    """Submit the pipeline as a Ray Job; returns (submission id, final status or PENDING when not waiting)."""
    job = build_job(req)
    client = _client(req.address)
    job_id = client.submit_job(**job)
    print(f"lam cluster submit: job {job_id} on {req.address}: {job['entrypoint']}", file=out, flush=True)
    print(f"  logs:   ray job logs --address {req.address} --follow {job_id}\n"
          f"  stop:   ray job stop --address {req.address} {job_id}\n"
          f"  status: lam cluster status --address {req.address}", file=out, flush=True)
    if not follow:
        return job_id, "PENDING"
    try:
        status = wait_for_job(client, job_id, follow=True, out=out)
    except KeyboardInterrupt:
        print(f"\nlam cluster submit: stopped following; job {job_id} keeps running "
              f"(ray job stop --address {req.address} {job_id})", file=sys.stderr)
        raise
    info = client.get_job_info(job_id)
    took = f" in {(info.end_time - info.start_time) / 1000:.0f}s" if info.end_time and info.start_time else ""
    print(f"lam cluster submit: job {job_id} {status}{took}" + (f": {info.message}" if status != "SUCCEEDED" and info.message else ""),
          file=out, flush=True)
    return job_id, status


def job_table(address: str) -> list[dict]:
    """One row per job on the cluster, newest first."""
    client = _client(address)
    rows = []
    for j in client.list_jobs():
        rows.append({"id": j.submission_id or j.job_id, "status": str(j.status), "entrypoint": j.entrypoint,
                     "start_time": j.start_time or 0})
    return sorted(rows, key=lambda r: r["start_time"], reverse=True)
