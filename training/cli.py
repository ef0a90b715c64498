"""`lam train`, `lam dpo` and `lam rl`: this stage's command line (cluster/cli.py only dispatches here).

    lam train --data runs/data --config configs/train/tiny.yaml --out runs/train [--resume | --overwrite] [key=value ...]
    lam dpo --data runs/data --model runs/train/export --out runs/dpo [--resume | --overwrite] [key=value ...]
    lam rl --model runs/train/export --out runs/rl [--resume | --overwrite] [--model-url URL] [key=value ...]

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


def add_rl_args(s: argparse.ArgumentParser) -> None:
    s.description = ("Online RL (training/rl.py): GRPO-style policy gradient on the model's own rollouts, the "
                     "environment's verdict as reward, new weights pushed to the running server each iteration.")
    s.add_argument("--model", required=True, help="Hugging Face model dir to start from (also the KL reference)")
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None, help="YAML with an rl: section (configs/recipe.yaml) or RL keys")
    s.add_argument("--resume", action="store_true", help="continue the run in OUT from its last finished iteration")
    s.add_argument("--overwrite", action="store_true", help="delete the previous run's files in OUT and start over")
    s.add_argument("--model-url", default=None,
                   help="roll out against this running server (e.g. http://127.0.0.1:8000/v1; its weights are "
                        "replaced) instead of starting the embedded one on --model")
    s.add_argument("--serve-threads", type=int, default=2, help="the embedded server's torch threads")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="RLConfig keys: iterations=10 tasks_per_iter=16 group_size=4 lr=5e-5 kl_coef=0.05 ...")


def rl_main(a) -> None:
    from training.rl import RLConfig, train_rl
    from training.run_dir import check_flags
    from training.train import read_config

    check_flags(a.resume, a.overwrite)
    cfg = RLConfig(**read_config(a.config, a.overrides, section="rl"))
    print(json.dumps(train_rl(a.model, a.out, cfg, model_url=a.model_url, resume=a.resume, overwrite=a.overwrite,
                              server={"threads": a.serve_threads}), indent=1))
