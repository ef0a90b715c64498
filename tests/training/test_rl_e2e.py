"""`lam rl` end to end on BabyAI: a tiny trained model, real Ray rollouts, a real embedded server on 127.0.0.1
whose weights each iteration replaces, DeepSpeed checkpoints, and resume after a finished run and after SIGKILL.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/training/test_rl_e2e.py -q -m slow
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from training.rl import RLConfig, train_rl

SMALL_KW = {"env": "babyai", "levels": ["BabyAI-GoToLocal-v0"], "tasks_per_iter": 4, "group_size": 2, "workers": 2,
            "max_steps": 12, "temperature": 1.0, "lr": 1e-4, "tensorboard": False, "threads": 1}
SMALL = [f"{k}={json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
         for k, v in SMALL_KW.items()]


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _lam_rl(export, out, *args, **popen):
    cmd = [sys.executable, "-m", "cluster.cli", "rl", "--model", str(export), "--out", str(out),
           "--serve-threads", "1", *args]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_two_iterations_push_two_weight_versions_to_a_running_server(trained, ray_local, tmp_path):
    from serving.launch import start_server_subprocess

    export = trained[0] / "export"
    server = start_server_subprocess(str(export), threads=1, model_name="policy", max_new_tokens_limit=16)
    try:
        card = lambda: httpx.get(server.base_url + "/models").json()["data"][0]["weights"]  # noqa: E731
        assert card()["version"] == 0
        cfg = RLConfig(**SMALL_KW, iterations=2)
        summary = train_rl(str(export), str(tmp_path / "rl"), cfg, model_url=server.base_url)
        assert card() == {"version": 2, "label": "rl-iter-2", "source": os.path.abspath(tmp_path / "rl" / "weights")}
        rows = _records(tmp_path / "rl")
        assert [r["step"] for r in rows] == [1, 2] and [r["weights_version"] for r in rows] == [1, 2]
        assert all(r["episodes"] == 8 and r["groups"] == 4 for r in rows)  # every episode of every group
        assert summary["iterations"] == 2
        assert (tmp_path / "rl" / "export" / "config.json").exists()
        assert (tmp_path / "rl" / "rollouts" / "iter-0002" / "manifest.json").exists()
        # the server answers from the pushed weights: a chat request still works after two swaps
        r = httpx.post(server.base_url + "/chat/completions", timeout=60,
                       json={"model": "policy", "messages": [{"role": "user", "content": "go"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        server.stop()


@pytest.mark.slow
def test_resume_after_a_finished_run_and_after_sigkill(trained, tmp_path):
    """1 iteration; --resume to 3 total, SIGKILLed (with its server and Ray, one process group) once the
    second iteration is logged; --resume again: exactly 3 iteration records, none twice."""
    export, out = trained[0] / "export", tmp_path / "rl"
    p = _lam_rl(export, out, *SMALL, "iterations=1")
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["iterations"] == 1 and len(_records(out)) == 1

    p = _lam_rl(export, out, "--resume", *SMALL, "iterations=3", start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_records(out)) < 2 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert p.poll() is None, p.communicate()[1][-3000:]
    os.killpg(p.pid, signal.SIGKILL)  # the process group this test started: lam rl, its server, its Ray
    p.wait(30)

    p = _lam_rl(export, out, "--resume", *SMALL, "iterations=3")
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert "resuming after iteration" in stderr
    assert json.loads(stdout)["iterations"] == 3
    assert [r["step"] for r in _records(out)] == [1, 2, 3]
    assert (out / "export" / "config.json").exists()
    assert sorted(d.name for d in (out / "checkpoints").glob("iter*")) == ["iter3"]


def test_bad_input_is_one_line_and_exit_2(tiny_hf_model, tmp_path):
    from cluster.cli import main

    assert main(["rl", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # no config.json
    assert main(["rl", "--model", str(tiny_hf_model), "--out", str(tmp_path / "o"), "nonsense_key=1"]) == 2
    assert main(["rl", "--model", str(tiny_hf_model), "--out", str(tmp_path / "o"), "levels=[NoSuchLevel]"]) == 2
    assert not (tmp_path / "o").exists()  # refused before anything was written
