"""Re-running `lam pipeline` on a run dir: a stage is reused only when it was made from the same config.

Real Ray collector actors and the real CLI; the run stops where training would start (the training
function is replaced by one that raises), which keeps each run to a small collect.
"""
import json

import pytest
import yaml

from cluster import cli
from cluster.config import ConfigError, load_pipeline_config
from cluster.pipeline import _Stages, check_stages, run_pipeline, stage_plan


class StopBeforeTraining(Exception):
    pass


def _no_training(*a, **k):
    raise StopBeforeTraining


def _episodes(run):
    return json.loads((run / "data" / "manifest.json").read_text())["meta"]["episodes_requested"]


def _kept(run):
    return json.loads((run / "stages.json").read_text())["collect"]["kept"]


# issue 21 item 3
def test_changed_config_is_refused_not_reused_and_config_json_stays_true(tmp_path, ray_local, monkeypatch, capsys):
    monkeypatch.setattr("training.train.train", _no_training)
    run = tmp_path / "run"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "run_dir": str(run),
        "collect": {"episodes": 12, "workers": 2, "shard_episodes": 6, "max_steps": 64},
        "eval": {"episodes": 2, "baselines": []},
    }))
    with pytest.raises(StopBeforeTraining):
        run_pipeline(load_pipeline_config(cfg_path))
    assert _kept(run) == 12 and _episodes(run) == 12
    before = {f: (run / f).read_bytes() for f in ("config.json", "stages.json", "data/manifest.json")}

    # the changed stage is named with the changed key and the flag; nothing on disk changes
    capsys.readouterr()
    rc = cli.main(["pipeline", "--config", str(cfg_path), "--set", "collect.episodes=16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "stage collect" in err and "collect.episodes 12 -> 16" in err and "--rerun-changed" in err, err
    assert {f: (run / f).read_bytes() for f in before} == before
    assert json.loads((run / "config.json").read_text())["collect"]["episodes"] == 12

    # same results-relevant config (only a speed knob differs): the finished stage is reused as before
    with pytest.raises(StopBeforeTraining):
        cli.main(["pipeline", "--config", str(cfg_path), "--set", "collect.workers=1"])
    assert (run / "data" / "manifest.json").read_bytes() == before["data/manifest.json"]
    assert json.loads((run / "stages.json").read_text())["collect"] == json.loads(before["stages.json"])["collect"]

    # --rerun-changed collects afresh to the new count; config.json then describes the data
    with pytest.raises(StopBeforeTraining):
        cli.main(["pipeline", "--config", str(cfg_path), "--set", "collect.episodes=16", "--rerun-changed"])
    assert _kept(run) == 16 and _episodes(run) == 16
    assert json.loads((run / "config.json").read_text())["collect"]["episodes"] == 16
    rec = json.loads((run / "stages.json").read_text())["_records"]["collect"]
    assert rec["state"] == "done" and rec["inputs"]["collect.episodes"] == 16


# issue 21 item 3
def test_interrupted_stage_resumes_with_same_config_and_is_refused_with_another(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = load_pipeline_config_from({"run_dir": str(run), "collect": {"episodes": 40}}, tmp_path)
    stages = _Stages(run)
    stages.start("collect", stage_plan(old)["collect"])  # interrupted: started, never finished
    (run / "data").mkdir()

    assert check_stages(_Stages(run), stage_plan(old), run, rerun_changed=False) == []  # resume as before
    new = old.model_copy(update={"collect": old.collect.model_copy(update={"episodes": 60})})
    with pytest.raises(ConfigError, match=r"stage collect .*collect\.episodes 40 -> 60.*--rerun-changed"):
        check_stages(_Stages(run), stage_plan(new), run, rerun_changed=False)
    assert (run / "data").exists()
    # a train-only change leaves collect alone and names train
    new = old.model_copy(update={"train": old.train.model_copy(update={"lr": 0.5})})
    plan = stage_plan(new)
    assert plan["collect"]["digest"] == stage_plan(old)["collect"]["digest"]
    assert plan["train"]["digest"] != stage_plan(old)["train"]["digest"]
    # a collect change changes every stage that reads the data, not the baselines
    new = old.model_copy(update={"collect": old.collect.model_copy(update={"base_seed": 7})})
    a, b = stage_plan(old), stage_plan(new)
    assert [n for n in a if a[n]["digest"] != b[n]["digest"]] == ["collect", "train", "eval_imitation"]
    assert check_stages(_Stages(run), b, run, rerun_changed=True) == ["collect"]
    assert not (run / "data").exists()


def load_pipeline_config_from(raw: dict, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return load_pipeline_config(p)


# issue 21 item 3
def test_stages_finished_by_an_older_lam_are_checked_against_its_config_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    old = load_pipeline_config_from({"run_dir": str(run), "collect": {"episodes": 40}}, tmp_path)
    (run / "stages.json").write_text(json.dumps({"collect": {"kept": 40, "wall_s": 1.0}}))  # no "_records"
    (run / "config.json").write_text(old.model_dump_json())
    new = old.model_copy(update={"collect": old.collect.model_copy(update={"episodes": 60})})
    with pytest.raises(ConfigError) as e:
        check_stages(_Stages(run), stage_plan(new), run, rerun_changed=False)
    assert "collect.episodes 40 -> 60" in str(e.value)
    stages = _Stages(run)
    assert check_stages(stages, stage_plan(old), run, rerun_changed=False) == []
    assert stages.record("collect")["digest"] == stage_plan(old)["collect"]["digest"]
