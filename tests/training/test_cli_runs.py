"""`lam train` / `lam dpo` as a user runs them (README commands, small inputs, temp dirs): an OUT that
already holds a run, DeepSpeed's one-time op build, TensorBoard event files, LoRA on a model brought
as a Hugging Face dir."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["vocab_size=300", "tokens_per_batch=2048", "warmup_steps=2", "eval_fraction=0.1", "threads=2"]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
OP_NOTE = "building DeepSpeed's CPU op once"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT), **extra)
    return env


def _lam(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "cluster.cli", *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _lam_here(capfd, *args):
    """The same CLI in this process: a training run without the ~10 s of imports a fresh interpreter pays."""
    from cluster.cli import main

    capfd.readouterr()
    rc = main(list(args))
    out, err = capfd.readouterr()
    return rc, out, err


def _rows(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def _snapshot(out: Path) -> dict:
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_run(small_dataset, tmp_path_factory):
    """One finished `lam train` with checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("cli") / "train"
    r = _lam("train", "--data", str(small_dataset), "--out", str(out), "epochs=1.0", "checkpoint_every=2", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


# issue 21 item 9
def test_train_into_existing_out_refuses_then_overwrite_starts_clean(first_run, small_dataset, capfd):
    out, _ = first_run
    before = _snapshot(out)
    steps_before = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(steps_before) >= 3, steps_before  # latest + several stepN

    r = _lam("train", "--data", str(small_dataset), "--out", str(out), "epochs=0.5", "checkpoint_every=0", *SMALL)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "--overwrite" in lines[0] and str(out) in lines[0], r.stderr
    assert _snapshot(out) == before, "a refused run wrote into OUT"

    r = _lam("train", "--data", str(small_dataset), "--out", str(out), "--resume", "--overwrite", *SMALL)
    assert r.returncode != 0 and "--resume" in r.stderr and _snapshot(out) == before

    (out / "notes.txt").write_text("mine")  # a file the trainer does not own survives --overwrite
    rc, stdout, stderr = _lam_here(capfd, "train", "--data", str(small_dataset), "--out", str(out), "--overwrite",
                                   "epochs=0.5", "checkpoint_every=0", *SMALL)
    assert rc == 0, stderr[-3000:]
    summary = json.loads(stdout[stdout.index("{"):])
    # only the new run's checkpoint, and `latest` names it
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", f"step{summary['steps']}"]
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step{summary['steps']}"
    steps = [row["step"] for row in _rows(out) if "loss" in row]
    assert steps == sorted(set(steps)) and steps[-1] == summary["steps"], steps  # no rows of the old run
    assert len(list((out / "tb").glob("events.*"))) == 1
    assert (out / "notes.txt").read_text() == "mine"
    # issue 21 item 14: the op was built by the first run; a later run says nothing about it
    assert OP_NOTE not in stderr

    # --resume of the finished run: the same result, and no metric row logged twice
    rows = _rows(out)
    rc, stdout, stderr = _lam_here(capfd, "train", "--data", str(small_dataset), "--out", str(out), "--resume",
                                   "epochs=0.5", "checkpoint_every=0", *SMALL)
    assert rc == 0, stderr[-3000:]
    again = json.loads(stdout[stdout.index("{"):])
    assert (again["steps"], again["final_loss"], again["eval_loss"]) == (summary["steps"], summary["final_loss"],
                                                                        summary["eval_loss"])
    assert _rows(out) == rows


# issue 21 item 14
@pytest.mark.skipif(torch.cuda.is_available(), reason="DeepSpeed builds this op only for its CPU accelerator")
def test_first_train_says_deepspeed_builds_its_cpu_op(small_dataset, tmp_path):
    """With no built op in TORCH_EXTENSIONS_DIR, one line on stderr comes before the (silent) build."""
    p = subprocess.Popen([sys.executable, "-m", "cluster.cli", "train", "--data", str(small_dataset), "--out",
                          str(tmp_path / "out"), *SMALL], cwd=ROOT, env=_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "ext")),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.time() + 120, []
        while time.time() < deadline:
            line = p.stderr.readline()
            if not line:
                break
            seen.append(line)
            if OP_NOTE in line:
                break
        assert any(OP_NOTE in l and "~60 s" in l for l in seen), seen
        assert not (tmp_path / "ext" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").exists()
    finally:
        p.kill()
        p.wait()


# issue 21 item 15 (TensorBoard)
def test_training_writes_tensorboard_events(first_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = first_run
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("loss")]
    jsonl = [row["loss"] for row in _rows(out) if "loss" in row]
    assert len(losses) == len(jsonl) >= 2 and losses == pytest.approx(jsonl, rel=1e-5)
    assert "eval_loss" in acc.Tags()["scalars"]


# issue 21 item 15 (LoRA)
def test_lora_trains_only_adapters_and_exports_a_merged_model(small_dataset, tiny_hf_model, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from training.train import TrainConfig, train

    cfg = TrainConfig(model=str(tiny_hf_model), lora={"r": 4, "alpha": 8, "dropout": 0.0}, tokens_per_batch=2048,
                      epochs=1.0, warmup_steps=2, lr=1e-2, checkpoint_every=0, eval_fraction=0.1, threads=2)
    summary = train(str(small_dataset), str(tmp_path / "lora"), cfg, progress=False)
    hidden, layers = 256, 4  # the tiny preset: q/k/v/o are all hidden x hidden
    assert summary["trainable_params"] == layers * 4 * 4 * (hidden + hidden)  # r·(in+out) per adapted module
    assert summary["params"] > 50 * summary["trainable_params"]

    base = load_file(tiny_hf_model / "model.safetensors")
    export = tmp_path / "lora" / "export"
    merged = load_file(export / "model.safetensors")
    assert set(merged) == set(base)  # a plain model: no lora_A/lora_B keys left
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    assert changed and all(any(t in k for t in targets) for k in changed), changed  # everything else untouched
    assert len(changed) == layers * 4
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()

    lm = AutoModelForCausalLM.from_pretrained(export)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(tiny_hf_model)(ids).logits
        assert not torch.allclose(lm(ids).logits, ref)


# issue 21 item 15 (LoRA config errors are one line)
def test_lora_bad_target_module_is_one_line(small_dataset, tiny_hf_model, tmp_path):
    r = _lam("train", "--data", str(small_dataset), "--out", str(tmp_path / "o"), f"model={tiny_hf_model}",
             "lora.target_modules=[attn]", *SMALL)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "lam train: error: lora.target_modules ['attn']" in r.stderr and "q_proj" in r.stderr


# issue 21 item 15 (DPO as a command)
def test_lam_dpo_command_trains_refuses_and_resumes(pairs_dataset, tiny_hf_model, tmp_path, capfd):
    out = tmp_path / "dpo"
    args = ["dpo", "--data", str(pairs_dataset), "--model", str(tiny_hf_model), "--out", str(out),
            "lr=0.0005", "epochs=2.0", "pairs_per_step=2", "max_pairs=6", "checkpoint_every=2", "threads=2"]
    r = _lam(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["steps"] >= 4 and summary["pairs"] >= 4
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "export") is not None
    assert list((out / "tb").glob("events.*"))

    before = _snapshot(out)
    r = _lam(*args)
    assert r.returncode != 0 and "--resume" in r.stderr and "--overwrite" in r.stderr, r.stderr[-2000:]
    assert _snapshot(out) == before

    # resume from an earlier checkpoint: the same steps and loss as the uninterrupted run
    (out / "checkpoints" / "latest").write_text("step2")
    rc, stdout, stderr = _lam_here(capfd, *args, "--resume")
    assert rc == 0, stderr[-3000:]
    resumed = json.loads(stdout[stdout.index("{"):])
    assert resumed["steps"] == summary["steps"]
    assert resumed["final_loss"] == pytest.approx(summary["final_loss"], rel=1e-4)
    steps = [row["step"] for row in _rows(out)]
    assert steps == list(range(1, summary["steps"] + 1)), steps  # rows after step 2 replaced, not duplicated

    r = _lam("dpo", "--data", str(pairs_dataset), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "config.json" in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr[-2000:]


# issue 21 items 14-15: the README's training commands parse as written
def test_readme_training_commands_parse():
    import shlex

    from cluster.cli import build_parser

    lines = [l.split("  #")[0].strip() for l in (ROOT / "README.md").read_text().splitlines()]
    cmds = [l for l in lines if l.split()[:2] in (["lam", "train"], ["lam", "dpo"]) and l.split()[2] != "..."]
    assert any(c.startswith("lam dpo ") for c in cmds) and any("--overwrite" in c for c in cmds), cmds
    for cmd in cmds:  # optional parts in [...] taken as given; `a | b` alternatives both parse
        words = shlex.split(cmd.replace("[", " ").replace("]", " ").replace(" | ", " "))[1:]
        build_parser().parse_args([w for w in words if w != "..."])


# issue 21 item 9: the library defaults the pipeline relies on (it calls train/train_dpo without the CLI's flags)
def test_library_defaults_resume_or_clear_and_never_touch_other_files(tmp_path):
    import inspect

    from training.dpo import train_dpo
    from training.run_dir import RunExistsError, prepare_out_dir
    from training.train import train

    assert inspect.signature(train).parameters["overwrite"].default is True
    assert inspect.signature(train_dpo).parameters["overwrite"].default is True
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step9")
    (tmp_path / "metrics.jsonl").write_text('{"step": 9}\n')
    (tmp_path / "data.parquet").write_text("user data")
    prepare_out_dir(tmp_path, resume=True, overwrite=True)  # the pipeline's self-boost phase: resume wins
    assert (tmp_path / "checkpoints" / "latest").exists()
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        prepare_out_dir(tmp_path, resume=False, overwrite=False)
    prepare_out_dir(tmp_path, resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.parquet"]
