"""A training run's output directory: the files the trainers own there, and what to do when OUT already
holds a run (`lam train` / `lam dpo` without --resume: refuse, or with --overwrite: clear those files).

Only the names below are ever deleted, so an OUT that also holds a user's own files keeps them."""
from __future__ import annotations

import shutil
from pathlib import Path

# everything training/train.py, dpo.py and rl.py write under OUT (tensorboard/: the pre-`tb` name)
TRAINER_FILES = ("checkpoints", "tokenizer", "export", "adapter", "tb", "tensorboard", "metrics.jsonl",
                 "summary.json", "train_config.json", "deepspeed_config.json", "dpo_config.json",
                 "rl_config.json", "rollouts", "weights")


class RunExistsError(FileExistsError):
    """OUT holds a previous run and the caller asked neither to resume nor to overwrite it."""


def previous_run(out: Path) -> list[str]:
    return [name for name in TRAINER_FILES if (Path(out) / name).exists()]


def check_flags(resume: bool, overwrite: bool) -> None:
    """The command line's two ways into an existing OUT exclude each other."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in OUT and --overwrite deletes it: pass one of them")


def prepare_out_dir(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse or clear a previous run in OUT, before anything of the new run is written; with resume,
    OUT is left as it is (overwrite then does not apply: the pipeline passes resume=True with the default)."""
    found = previous_run(Path(out))
    if resume or not found:
        return
    if not overwrite:
        raise RunExistsError(f"{out} already holds a training run ({', '.join(found[:4])}); pass --resume to "
                             f"continue it, or --overwrite to delete it and start over")
    for name in found:
        path = Path(out) / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
