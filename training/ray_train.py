"""Multi-node training: Ray Train's TorchTrainer drives the same DeepSpeed loop on every worker.

    python -m training.ray_train --data /shared/data --out /shared/train --workers 8 --gpus [--config CFG] [--resume | --overwrite] [k=v ...]

Run on a Ray cluster (RAY_ADDRESS=auto or `lam cluster submit`); `--data` and `--out` must be on
storage every node sees. Ray Train creates the process group (NCCL on GPUs, gloo on CPU); each
worker then runs `training.train.train` exactly as a torchrun rank would.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def _worker_loop(config: dict) -> None:
    import ray.train

    from training.train import TrainConfig, train

    ctx = ray.train.get_context()
    # training.train reads the usual launcher variables; the process group already exists.
    os.environ.update(RANK=str(ctx.get_world_rank()), WORLD_SIZE=str(ctx.get_world_size()),
                      LOCAL_RANK=str(ctx.get_local_rank()))
    summary = train(config["data"], config["out"], TrainConfig(**config["train"]), resume=config["resume"],
                    progress=ctx.get_world_rank() == 0)
    ray.train.report({"final_loss": summary["final_loss"], "eval_loss": summary["eval_loss"]})


def train_on_ray(data: str, out: str, train_cfg: dict, workers: int, use_gpu: bool, resume: bool = False,
                 overwrite: bool = True) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from data_collection.ray_local import init_ray
    from training.run_dir import prepare_out_dir

    prepare_out_dir(out, resume, overwrite)  # once, here: the workers then find OUT clean or resumable
    started = init_ray()
    try:
        cpus = 1 if use_gpu else max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"data": data, "out": str(Path(out).resolve()), "train": train_cfg, "resume": resume},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name="lam-train", storage_path=str(Path(out).resolve() / "ray_results")),
        )
        result = trainer.fit()
        return dict(result.metrics or {})
    finally:
        if started:
            ray.shutdown()


def main() -> None:
    import argparse

    from training.run_dir import check_flags
    from training.train import read_config

    p = argparse.ArgumentParser(description="Train on a Ray cluster with Ray Train + DeepSpeed")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpus", action="store_true", help="one GPU per worker, NCCL")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run's files in OUT and start over")
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    check_flags(a.resume, a.overwrite)
    raw = read_config(a.config, a.overrides)
    raw.setdefault("threads", 1)
    print(json.dumps(train_on_ray(a.data, a.out, raw, a.workers, a.gpus, a.resume, a.overwrite), indent=1))


if __name__ == "__main__":
    main()
