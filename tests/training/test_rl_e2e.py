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
            "max_steps": 12, "temperature": 1.0, "lr": 1e-4, "tensorboard": False, "threads": 1,
            # the tiny model rarely solves a task in 12 steps, but its invalid outputs vary within a group:
            # the penalty makes groups informative, so the update path runs
            "invalid_penalty": 0.02}
SMALL = [f"{k}={json.dumps(v) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
         for k, v in SMALL_KW.items()]


def _records(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _summary(stdout: str) -> dict:
    """The summary `lam rl` prints last (DeepSpeed may print a line of its own to stdout before it)."""
    return json.loads(stdout[stdout.index("{\n"):])


def _lam_rl(export, out, *args, **popen):
    cmd = [sys.executable, "-m", "cluster.cli", "rl", "--model", str(export), "--out", str(out),
           "--serve-threads", "1", *args]
    env = {k: v for k, v in os.environ.items()  # this process's own torch.distributed rendezvous is not theirs
           if k not in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
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
        trained_rows = [r for r in rows if r["steps"]]
        assert trained_rows, rows  # at least one iteration had an informative group and stepped
        assert all(r["kl"] >= 0 and r["loss"] == r["loss"] for r in trained_rows)
        assert summary["iterations"] == 2
        assert (tmp_path / "rl" / "export" / "config.json").exists()
        assert (tmp_path / "rl" / "rollouts" / "iter-0002" / "manifest.json").exists()
        # a second run on the same server: it holds the first run's weights, so --model's are pushed first
        train_rl(str(export), str(tmp_path / "rl2"), cfg.model_copy(update={"iterations": 1}), model_url=server.base_url)
        assert card()["version"] == 4 and [r["weights_version"] for r in _records(tmp_path / "rl2")] == [4]
        # the server answers from the pushed weights: a chat request still works after the swaps
        r = httpx.post(server.base_url + "/chat/completions", timeout=60,
                       json={"model": "policy", "messages": [{"role": "user", "content": "go"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        server.stop()


@pytest.mark.slow
def test_resume_after_a_finished_run_and_after_sigkill(trained, tmp_path):
    """1 iteration; --resume to 3 total, SIGKILLed (with its server and Ray, one process group) in iteration 2's
    update (its rollouts' dataset card is written the moment they end, before the update; the iteration is not
    logged yet); --resume again: from iteration 1's checkpoint to exactly 3 iteration records, none twice."""
    export, out = trained[0] / "export", tmp_path / "rl"
    p = _lam_rl(export, out, *SMALL, "iterations=1")
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert _summary(stdout)["iterations"] == 1 and len(_records(out)) == 1

    p = _lam_rl(export, out, "--resume", *SMALL, "iterations=3", start_new_session=True)
    deadline = time.monotonic() + 600
    rolled_out = out / "rollouts" / "iter-0002" / "card.json"
    while not rolled_out.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, p.communicate()[1][-3000:]
    os.killpg(p.pid, signal.SIGKILL)  # the process group this test started: lam rl, its server, its Ray
    p.wait(30)
    assert len(_records(out)) == 1  # killed inside iteration 2, after its rollouts

    p = _lam_rl(export, out, "--resume", *SMALL, "iterations=3")
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    assert "resuming after iteration" in stderr
    assert _summary(stdout)["iterations"] == 3
    assert [r["step"] for r in _records(out)] == [1, 2, 3]
    assert (out / "export" / "config.json").exists()
    assert sorted(d.name for d in (out / "checkpoints").glob("iter*")) == ["iter3"]


def test_bad_input_is_one_line_and_exit_2(tiny_hf_model, tmp_path):
    from cluster.cli import main

    assert main(["rl", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # no config.json
    assert main(["rl", "--model", str(tiny_hf_model), "--out", str(tmp_path / "o"), "nonsense_key=1"]) == 2
    assert main(["rl", "--model", str(tiny_hf_model), "--out", str(tmp_path / "o"), "levels=[NoSuchLevel]"]) == 2
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_the_pipeline_runs_rl_last_on_its_own_env_levels_and_runner():
    from pydantic import ValidationError

    from cluster.config import PipelineConfig, load_pipeline_config
    from cluster.pipeline import _rl_config, stage_plan

    cfg = load_pipeline_config("configs/recipe.yaml", ["phases=[imitation,self_boost,dpo,rl]", "eval.max_steps=40"])
    plan = stage_plan(cfg)
    assert list(plan)[list(plan).index("eval_dpo") + 1 :][:2] == ["rl_train", "eval_rl"]
    assert plan["rl_train"]["after"] == ["dpo_train"]
    rl = _rl_config(cfg)
    assert rl.levels == cfg.collect.levels and rl.max_steps == 40 and rl.iterations == cfg.rl.iterations
    pinned = load_pipeline_config("configs/recipe.yaml", ["phases=[imitation,rl]", "rl.levels=[BabyAI-PickupLoc-v0]"])
    assert _rl_config(pinned).levels == ["BabyAI-PickupLoc-v0"]
    with pytest.raises(ValidationError, match="last phase"):
        PipelineConfig(phases=["imitation", "rl", "self_boost"])
