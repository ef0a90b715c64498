"""Shared fixtures. Tests use the real environment, real Ray (local), real DeepSpeed and real HTTP."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray cluster on 127.0.0.1 for the whole session; stopped at the end."""
    import ray

    from data_collection.ray_local import init_ray

    started = init_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def bot_dataset(tmp_path_factory, ray_local):
    """A small real dataset collected by Ray actors running the BabyAI bot."""
    from data_collection.collector import CollectConfig, collect

    out = tmp_path_factory.mktemp("data") / "ds"
    stats = collect(CollectConfig(episodes=240, workers=2, out=str(out), shard_episodes=60), progress=False)
    return out, stats
