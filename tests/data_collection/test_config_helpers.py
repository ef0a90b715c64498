"""The helpers every stage shares (issue 18): one override parser, one atomic write, one episode id,
and one collect config whose defaults each entry point states explicitly."""
import os
from pathlib import Path

import pytest
import yaml

from agent.episode import episode_id
from cluster.config import ConfigError, load_pipeline_config
from cluster.pipeline import stage_plan
from data_collection.atomic_file import write_atomic
from data_collection.cli import add_collect_args
from data_collection.collector import CollectConfig
from data_collection.overrides import apply_overrides, split_pair
from envs.base import Task

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_nested_typed_and_refused():
    raw = {"train": {"lr": 1.0}, "lora": None, "run_dir": "x"}
    apply_overrides(raw, ["train.lr=0.002", "lora.r=16", "eval.also=[]", "name=a=b"])
    assert raw == {"train": {"lr": 0.002}, "lora": {"r": 16}, "run_dir": "x", "eval": {"also": []}, "name": "a=b"}
    with pytest.raises(ValueError, match="must look like key=value"):
        apply_overrides({}, ["lr"])
    with pytest.raises(ConfigError, match="'run_dir' is a value"):
        apply_overrides(raw, ["run_dir.x=1"], error=ConfigError)
    with pytest.raises(ValueError, match="--env 'A' must look like KEY=VALUE"):
        split_pair("A", what="--env", form="KEY=VALUE")


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.json"
    write_atomic(path, "old")
    write_atomic(path, b"new", fsync=True)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["m.json"]
    with pytest.raises(TypeError):
        write_atomic(path, 3)  # fails mid-write: the old file stays, no temporary is left
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["m.json"]


def test_episode_ids_keep_the_stored_formats():
    t = Task("babyai", "BabyAI-GoToLocal-v0", 16)
    assert episode_id(t) == "BabyAI-GoToLocal-v0-16"  # datasets; `lam data show --episode`
    assert episode_id(t, "model", 2) == "model-BabyAI-GoToLocal-v0-16-t2"  # evaluation
    assert episode_id(t, "w") == "w-BabyAI-GoToLocal-v0-16"


def test_each_entry_point_keeps_its_collect_defaults(tmp_path):
    import argparse

    assert CollectConfig().shard_episodes == 250 and CollectConfig().max_steps is None  # the Python API
    p = argparse.ArgumentParser()
    add_collect_args(p)
    a = p.parse_args([])
    assert (a.shard_episodes, a.max_steps, a.time_limit_s, a.episodes) == (500, None, None, 1000)  # lam collect
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"collect": {"episodes": 7}}))
    c = load_pipeline_config(path).collect  # the pipeline: its own defaults, also for keys a section leaves out
    assert (c.episodes, c.shard_episodes, c.max_steps, c.time_limit_s) == (7, 500, 64, 10.0)


def test_pipeline_collect_digest_unchanged():
    # made by the pipeline's own section class before it composed CollectConfig (tools.yaml as of d107973): finished runs stay finished
    assert stage_plan(load_pipeline_config(ROOT / "configs/quickstart.yaml"))["collect"]["digest"] == "b75d2498fd2acf76"
    tools = load_pipeline_config(ROOT / "configs/tools.yaml")
    tools.collect.episodes = 15000  # its collect section as of d107973 (the config has grown since)
    assert stage_plan(tools)["collect"]["digest"] == "cda3277c2e97d3dd"
