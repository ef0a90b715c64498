"""Imitation training of an action model through a real DeepSpeed engine (ZeRO 0-3; gloo on CPU).

    lam train --data runs/qs/data --config configs/train/tiny.yaml --out runs/qs/train [--resume | --overwrite]
    deepspeed --num_gpus 2 -m training.train --data DIR --config CFG --out DIR      # several ranks
    torchrun --nproc_per_node 2 -m training.train --data DIR --config CFG --out DIR

Reads trajectory shards, trains a tokenizer on them, renders samples with the agent's prompt
renderer, trains with loss on action tokens only, checkpoints, and exports a Hugging Face model
directory (config, safetensors, tokenizer with chat template) that serving and vLLM load.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_collection.overrides import apply_overrides, read_yaml
from training.lora import LoraSettings


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    # Llama size preset ("tiny", "small", ...) or a local Hugging Face model directory
    model: str = "tiny"
    # BPE vocabulary size of the tokenizer trained on the collected text (ignored for a local model)
    vocab_size: int = 2048
    # how that tokenizer cuts text before BPE (training/tokenizer.py): "phrases" (long phrase tokens: text
    # worlds), "words" (values stay the same tokens wherever they appear: function calls), "auto" = words
    # when the data has tool-space episodes
    tokenizer: Literal["auto", "phrases", "words", "spaced"] = "auto"
    # the agent's history window at inference; samples follow the windows the records' conversations
    # were collected with (collection uses the runner default, 8), so keep the two equal
    history_window: int = 8
    max_seq_len: int = 1024
    # tokens (including padding) per micro-batch; batches hold samples of similar length
    tokens_per_batch: int = 4096
    epochs: float = 2.0
    # weight of the language-model loss on the conversation's other tokens (requests, results), next to
    # the action tokens' weight 1 (training/model.py ActionLoss); 0 = actions only
    context_loss_weight: float = Field(0.0, ge=0.0, le=1.0)
    # the model sees values tagged with numbered marks and writes a mark where a value goes; the server
    # expands it (serving/value_marks.py). For tool worlds whose arguments copy unseen names. A model
    # directory trained with marks (its lam_chat.json) keeps them whatever this says.
    value_marks: bool = False
    # fraction of the tool conversations trained with their values respelled at random (training/value_renaming.py):
    # what the model learns about pointing at values cannot then hang on the names the training split happens to use
    rename_values: float = Field(0.0, ge=0.0, le=1.0)
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1
    zero_stage: int = Field(0, ge=0, le=3)
    bf16: bool = False
    offload_optimizer: bool = False
    deepspeed_json: str | None = None  # raw DeepSpeed JSON that replaces the generated one
    checkpoint_every: int = 500  # optimizer steps; 0 = only at the end
    time_budget_s: float | None = None  # stop early (and still export) after this long
    eval_fraction: float = 0.02
    threads: int | None = None  # torch threads per rank (default: cores / ranks)
    seed: int = 0
    # scalars to OUT/tb as well as OUT/metrics.jsonl: tensorboard --logdir OUT/tb
    tensorboard: bool = True
    # LoRA adapters (peft) on `model` instead of training every weight; null = full fine-tuning
    lora: LoraSettings | None = None

    @field_validator("lora")
    @classmethod
    def _lora_not_zero3(cls, lora, info):
        if lora is not None and info.data.get("zero_stage") == 3:
            raise ValueError("merging the adapters for the export needs unsharded weights: use zero_stage 0, 1 or 2")
        return lora


def read_config(path: str | None, overrides: list[str], section: str = "train") -> dict:
    """YAML (its `section` if it has one, as a pipeline config does) plus key=value overrides;
    a dotted key sets a nested one: lora.r=16."""
    raw: dict = {}
    if path:
        raw = read_yaml(path)
        raw = raw.get(section, raw) or {}
    return apply_overrides(raw, overrides)


def _setup_dist() -> tuple[int, int]:
    import torch

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed builds its CPU comm op once; keep the build inside the venv.
        venv = os.environ.get("VIRTUAL_ENV") or str(Path(__import__("sys").prefix))
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(venv) / "torch_extensions"))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


SHM_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU communication op (op_builder/cpu/comm.py)


def note_op_build() -> None:
    """The first CPU run compiles DeepSpeed's communication op (~60 s, no output): say so before it starts."""
    ext = os.environ.get("TORCH_EXTENSIONS_DIR")
    if os.environ.get("DS_ACCELERATOR") == "cpu" and ext and not (Path(ext) / SHM_OP / f"{SHM_OP}.so").exists():
        print(f"building DeepSpeed's CPU op once, ~60 s (into {ext})", file=sys.stderr, flush=True)


def train(data_dir: str | list[str], out_dir: str, cfg: TrainConfig, resume: bool = False, progress: bool = True,
          overwrite: bool = True) -> dict:
    """Train into OUT. resume: continue from OUT/checkpoints/latest. Without it, a previous run's files in OUT
    are deleted first (overwrite=True: the pipeline, which resumes whenever OUT has checkpoints) or refused
    with RunExistsError (overwrite=False: `lam train` without --overwrite)."""
    rank, world = _setup_dist()
    out = Path(out_dir)
    if rank == 0:  # before anything of this run is written; the other ranks write nothing before a barrier
        from training.metrics import check_tensorboard
        from training.run_dir import prepare_out_dir

        prepare_out_dir(out, resume, overwrite)
        check_tensorboard(cfg.tensorboard)
        note_op_build()
    import deepspeed
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from data_collection.schema import group_steps
    from data_collection.store import TrajectoryStore
    from training import lora
    from training.export import export_hf
    from training.metrics import MultiLogger
    from training.model import ActionLoss, build_model
    from training.samples import collate, episode_conversations, make_batches, tokenizer_texts
    from serving.value_marks import read_settings
    from training.tokenizer import ChatEncoder, SampleError, load_tokenizer, train_tokenizer
    from training.value_renaming import renamed
    from training.zero_config import deepspeed_config

    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()

    # several data dirs (expert demos + self-boosted successes) train together
    dirs = data_dir if isinstance(data_dir, (list, tuple)) else str(data_dir).split(",")
    episodes = group_steps(r for d in dirs for r in TrajectoryStore(Path(d)).read_rows("train"))
    # samples come from the conversation each step stored (any mix of environments and action spaces)
    convs = episode_conversations(episodes)
    if not convs:
        raise SampleError(f"no step in {', '.join(dirs)} has a valid action with a stored conversation to learn")
    sample_report: dict = {}
    shown = renamed(convs, cfg.rename_values, cfg.seed)  # what samples are built from; the tokenizer learns `convs`
    own_tokenizer = Path(cfg.model).is_dir()
    marks = cfg.value_marks
    if own_tokenizer:  # the model's own tokenizer and chat template; checked before OUT is made
        tokenizer = load_tokenizer(cfg.model)
        marks = cfg.value_marks or read_settings(cfg.model).get("value_marks", False)
        samples = _samples(shown, ChatEncoder(tokenizer, name=f"the tokenizer of {cfg.model}", value_marks=marks),
                           cfg, sample_report)
    out.mkdir(parents=True, exist_ok=True)  # only once the data is known good: a refused run leaves no OUT

    tok_dir = out / "tokenizer"
    if not own_tokenizer:
        if not ((tok_dir / "tokenizer.json").exists() and resume):
            if rank == 0:
                style = cfg.tokenizer if cfg.tokenizer != "auto" else ("words" if any(c.tools for c in convs) else "phrases")
                train_tokenizer(tokenizer_texts(convs[:20000]), vocab_size=cfg.vocab_size, style=style).save_pretrained(tok_dir)
            if world > 1:
                deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
                torch.distributed.barrier()
        tokenizer = load_tokenizer(tok_dir)
        samples = _samples(shown, ChatEncoder(tokenizer, name="the project tokenizer", value_marks=marks), cfg,
                           sample_report)
    if sample_report["actions_dropped_too_long"] and rank == 0:
        print(f"lam train: {sample_report['actions_dropped_too_long']} actions past max_seq_len={cfg.max_seq_len} "
              "are not trained on (their samples end before them; counted in summary.json)", flush=True)
    split = max(1, int(len(samples) * cfg.eval_fraction))
    eval_samples, train_samples = samples[:split], samples[split:]
    lm = build_model(cfg.model, vocab_size=len(tokenizer), max_positions=cfg.max_seq_len, seed=cfg.seed)
    peft_model = lora.wrap(lm, cfg.lora) if cfg.lora else None  # adapters go into `lm`, base weights freeze
    model = ActionLoss(lm, context_weight=cfg.context_loss_weight)

    batches_per_epoch = len(make_batches(train_samples, cfg.tokens_per_batch, cfg.seed, 0)) // world
    total_steps = max(1, int(batches_per_epoch * cfg.epochs) // cfg.grad_accum)

    def lr_lambda(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],  # LoRA has no 1-d params; DeepSpeed drops an empty group
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    ds_config = deepspeed_config(
        cfg.zero_stage, max(1, cfg.tokens_per_batch // 256), cfg.grad_accum, cfg.grad_clip, cfg.bf16,
        offload_optimizer=cfg.offload_optimizer, raw_json=cfg.deepspeed_json,
    )
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    device = engine.device

    ckpt_dir = out / "checkpoints"
    step, epoch, batch_pos, last_loss = 0, 0, 0, float("nan")
    if resume and (ckpt_dir / "latest").exists():
        _, client = engine.load_checkpoint(str(ckpt_dir))
        step, epoch, batch_pos = client["step"], client["epoch"], client["batch_pos"]
        last_loss = client.get("loss", last_loss)  # a finished run resumed still reports its final loss
    elif resume and rank == 0:
        print(f"no checkpoint in {ckpt_dir} to resume from; training from step 0 (model: {cfg.model})",
              file=sys.stderr)

    if rank == 0:
        (out / "train_config.json").write_text(cfg.model_dump_json(indent=1))
        (out / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=1))
    logger = MultiLogger(out, cfg.tensorboard, resume_step=step if resume else None) if rank == 0 else None
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in lm.parameters())  # ZeRO-3 partitions params
    n_trainable = sum(getattr(p, "ds_numel", p.numel()) for p in lm.parameters() if p.requires_grad)
    tokens_seen, t_window, tok_window = 0, time.perf_counter(), 0
    stopped_early = False

    def save(tag_step: int) -> None:
        state = {"step": tag_step, "epoch": epoch, "batch_pos": batch_pos, "loss": last_loss}
        engine.save_checkpoint(str(ckpt_dir), tag=f"step{tag_step}", client_state=state)

    columns = [TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps {task.fields[info]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress or rank != 0) as bar:
        job = bar.add_task("train", total=total_steps, completed=step, info="")
        while step < total_steps and not stopped_early:
            batches = make_batches(train_samples, cfg.tokens_per_batch, cfg.seed, epoch)
            mine = batches[rank::world][:batches_per_epoch]
            while batch_pos < len(mine) and step < total_steps:
                batch = {k: v.to(device) for k, v in collate(train_samples, mine[batch_pos], tokenizer.pad_token_id).items()}
                loss, _ = engine(**batch)
                engine.backward(loss)
                engine.step()
                batch_pos += 1
                tok_window += int(batch["attention_mask"].sum())
                if batch_pos % cfg.grad_accum:
                    continue
                step += 1
                last_loss = float(loss.detach())
                if rank == 0 and (step == 1 or step % 10 == 0 or step == total_steps):
                    now = time.perf_counter()
                    tps = tok_window * world / max(now - t_window, 1e-9)
                    tokens_seen += tok_window * world
                    t_window, tok_window = now, 0
                    metrics = {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "tokens_per_s": tps, "epoch": epoch + batch_pos / max(1, len(mine))}
                    if torch.cuda.is_available():
                        peak = _peak_flops()
                        metrics["mfu"] = 6 * n_params * tps / world / peak if peak else 0.0
                    logger.log(step, metrics)
                    bar.update(job, completed=step, info=f"loss {last_loss:.3f} {tps:,.0f} tok/s")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save(step)
                if cfg.time_budget_s and time.perf_counter() - t_start > cfg.time_budget_s:
                    stopped_early = True
                    break
            if batch_pos >= len(mine):
                epoch, batch_pos = epoch + 1, 0
    save(step)
    eval_loss = evaluate_loss(engine.module, eval_samples, tokenizer.pad_token_id, cfg.tokens_per_batch, device)
    export_dir = out / "export"
    if peft_model is not None:  # serve a plain model: the adapters folded into the base weights
        lm = lora.merged(peft_model, out / "adapter" if rank == 0 else None)
    export_hf(engine, lm, tokenizer, export_dir, zero_stage=cfg.zero_stage, rank=rank, value_marks=marks)
    summary = {
        "steps": step,
        "total_steps": total_steps,
        "stopped_early": stopped_early,
        "final_loss": last_loss,
        "eval_loss": eval_loss,
        "params": n_params,
        "trainable_params": n_trainable,
        "train_samples": len(train_samples),
        **sample_report,
        "episodes": len(episodes),
        "wall_s": time.perf_counter() - t_start,
        "export": str(export_dir),
    }
    if rank == 0:
        logger.log(step, {"eval_loss": eval_loss})
        logger.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _samples(convs, encoder, cfg: TrainConfig, report: dict) -> list:
    from training.samples import build_samples
    from training.tokenizer import SampleError

    samples = build_samples(convs, encoder, cfg.max_seq_len, report, workers=cfg.threads or os.cpu_count() or 1)
    if not samples:
        raise SampleError(f"every sample is longer than max_seq_len={cfg.max_seq_len} before its first action ends "
                          f"({report['samples_dropped_too_long']} dropped); raise max_seq_len")
    return samples


def evaluate_loss(model, samples, pad_id: int, tokens_per_batch: int, device) -> float:
    """Mean action-token loss; the same numbers for the engine and for a reloaded export."""
    import torch

    from training.samples import collate, make_batches

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in make_batches(samples, tokens_per_batch, seed=0, epoch=0):
            batch = {k: v.to(device) for k, v in collate(samples, idx, pad_id).items()}
            loss, n = model(**batch)
            total += float(loss) * n
            count += n
    model.train(was_training)
    return total / max(count, 1)


def _peak_flops() -> float:
    import torch

    name = torch.cuda.get_device_name()
    for key, flops in {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40": 181e12}.items():
        if key in name:
            return flops
    return 0.0


def launch_multiprocess(nproc: int, data: str, out: str, config: str | None, overrides: list[str], resume: bool) -> int:
    """Run this module under torchrun with `nproc` ranks on this node (gloo on CPU, NCCL on GPUs).

    Equivalent to: torchrun --nproc_per_node N -m training.train --data D --out O [--config C] [k=v ...]"""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "training.train", "--data", data, "--out", out]
    cmd += (["--config", config] if config else []) + (["--resume"] if resume else []) + list(overrides)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    print("running:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, env=env).returncode


def main() -> None:
    import argparse
    import warnings

    # torch.distributed deprecation notices from inside DeepSpeed, once per collective call
    warnings.filterwarnings("ignore", category=FutureWarning)

    p = argparse.ArgumentParser(description="Train an action model (DeepSpeed).")
    p.add_argument("--data", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run's files in OUT and start over")
    p.add_argument("--local_rank", type=int, default=None)  # passed by the deepspeed launcher
    p.add_argument("overrides", nargs="*", help="key=value overrides of the training config")
    a = p.parse_args()
    from training.run_dir import check_flags

    check_flags(a.resume, a.overwrite)
    cfg = TrainConfig(**read_config(a.config, a.overrides))
    summary = train(a.data, a.out, cfg, resume=a.resume, progress=int(os.environ.get("RANK", "0")) == 0,
                    overwrite=a.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
