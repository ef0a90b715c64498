"""`lam train` and `lam dpo`: this stage's command line (cluster/cli.py only dispatches here).

    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train [--resume | --overwrite] [key=value ...]
    lam dpo --data runs/data --model runs/train/export --out runs/dpo [--resume | --overwrite] [key=value ...]

The ranks themselves start through training/train.py's own entry point (torchrun / deepspeed).
"""
from __future__ import annotations

import argparse
import json


def add_train_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True)
    s.add_argument("--config", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="delete the previous run's files in OUT and start over")
    s.add_argument("--nproc", type=int, default=1, help="ranks on this node (torchrun; gloo on CPU)")
    s.add_argument("--ray-workers", type=int, default=0, help="train on a Ray cluster with N Ray Train workers")
    s.add_argument("--gpus", action="store_true", help="with --ray-workers: one GPU per worker (NCCL)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def train_main(a) -> None:
    from training.run_dir import check_flags, prepare_out_dir
    from training.train import TrainConfig, launch_multiprocess, read_config, train

    raw = read_config(a.config, a.overrides)
    cfg = TrainConfig(**raw)  # a bad key fails here, before any rank or Ray worker starts
    # once, before any rank starts: a previous run in OUT is continued (--resume), deleted (--overwrite) or refused
    check_flags(a.resume, a.overwrite)
    prepare_out_dir(a.out, a.resume, a.overwrite)
    if a.ray_workers:
        from training.ray_train import train_on_ray

        print(json.dumps(train_on_ray(a.data, a.out, raw, a.ray_workers, a.gpus, a.resume), indent=1))
        return
    if a.nproc > 1:
        rc = launch_multiprocess(a.nproc, a.data, a.out, a.config, a.overrides, a.resume)
        if rc:
            raise RuntimeError(f"training ranks failed with exit code {rc}")
        return
    print(json.dumps(train(a.data, a.out, cfg, resume=a.resume, overwrite=a.overwrite), indent=1))


def add_dpo_args(s: argparse.ArgumentParser) -> None:
    s.description = ("DPO (training/dpo.py), the pipeline's dpo phase as a command: pairs one verified "
                     "success (train/) with one failure (failures/) of the same task.")
    s.add_argument("--data", required=True,
                   help="comma-separated dataset dirs with train/ and failures/ (e.g. a pipeline run's boost/data)")
    s.add_argument("--model", required=True, help="Hugging Face model dir to start from, e.g. runs/train/export")
    s.add_argument("--config", default=None, help="YAML with a dpo: section (configs/recipe.yaml) or DPO keys")
    s.add_argument("--out", required=True)
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its latest checkpoint")
    s.add_argument("--overwrite", action="store_true", help="delete the previous run's files in OUT and start over")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="DPOConfig keys: beta=0.1 lr=2e-5 ...")


def dpo_main(a) -> None:
    from training.dpo import DPOConfig, train_dpo
    from training.run_dir import check_flags
    from training.train import read_config

    check_flags(a.resume, a.overwrite)
    cfg = DPOConfig(**read_config(a.config, a.overrides, section="dpo"))
    print(json.dumps(train_dpo(a.data.split(","), a.model, a.out, cfg, resume=a.resume, overwrite=a.overwrite),
                     indent=1))
