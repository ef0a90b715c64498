"""ZeRO 1/2/3 with two gloo ranks through `lam train --nproc 2`; exact resume after SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["vocab_size=400", "tokens_per_batch=2048", "warmup_steps=3", "lr=0.003", "eval_fraction=0.1"]


# In-process training in this pytest run set these; a child must pick its own rendezvous.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _clean_env(threads: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = threads
    return env


def _lam(*args, timeout=600):
    env = _clean_env("1")
    r = subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("stage", [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow), 3])
def test_zero_stage_two_ranks_trains_and_exports(stage, bot_dataset, tmp_path):
    data, _ = bot_dataset
    out = tmp_path / f"z{stage}"
    _lam("train", "--data", str(data), "--out", str(out), "--nproc", "2", f"zero_stage={stage}", "epochs=1.0",
         "checkpoint_every=0", *COMMON)
    losses = _losses(out)
    assert losses[-1] < 0.5 * losses[0], losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"] > 1_000_000
    # the consolidated export reloads with the engine's eval loss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training.model import ActionLoss
    from training.samples import build_samples, episode_conversations
    from training.tokenizer import ChatEncoder
    from training.train import evaluate_loss

    tok = AutoTokenizer.from_pretrained(out / "export")
    lm = AutoModelForCausalLM.from_pretrained(out / "export")
    eps = group_steps(TrajectoryStore(data).read_rows("train"))
    samples = build_samples(episode_conversations(eps), ChatEncoder(tok), 1024)
    split = max(1, int(len(samples) * 0.1))
    loss = evaluate_loss(ActionLoss(lm), samples[:split], tok.pad_token_id, 2048, torch.device("cpu"))
    assert loss == pytest.approx(summary["eval_loss"], rel=1e-3)


def test_killed_and_resumed_run_matches_uninterrupted(bot_dataset, tmp_path):
    data, _ = bot_dataset
    args = ["epochs=1.5", "checkpoint_every=10", "threads=2", *COMMON]
    full = tmp_path / "full"
    _lam("train", "--data", str(data), "--out", str(full), *args)
    cut = tmp_path / "cut"
    env = _clean_env("2")
    p = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", "--data", str(data), "--out", str(cut), *args],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step20").exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    _lam("train", "--data", str(data), "--out", str(cut), "--resume", *args)
    a = json.loads((full / "summary.json").read_text())
    b = json.loads((cut / "summary.json").read_text())
    assert b["steps"] == a["steps"]
    assert b["final_loss"] == pytest.approx(a["final_loss"], rel=0.01)
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=0.01)
