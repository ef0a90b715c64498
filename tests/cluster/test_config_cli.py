import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ConfigError, ensure_writable, load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_config_loads_and_mirrors_the_dataclasses():
    cfg = load_pipeline_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.collect.levels == ["BabyAI-GoToLocal-v0"] and cfg.eval.episodes >= 200
    assert cfg.train.history_window == 8
    assert cfg.serve.prefill_thread == "auto"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("collect:\n  episodez: 3\n", "unknown key 'collect.episodez'"),
        ("colect: {}\n", "unknown key 'colect'"),
        ("collect:\n  levels: [BabyAI-Nope-v0]\n", "unknown level 'BabyAI-Nope-v0'"),
        ("eval:\n  levels: [BabyAI-Nope-v1]\n", "eval.levels: unknown level"),
        ("train:\n  zero_stage: 7\n", "train.zero_stage"),
        ("serve:\n  prefill_thread: sometimes\n", "serve.prefill_thread"),
        ("collect: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_configs_fail_with_one_line_naming_the_problem(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_pipeline_config(p)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        ensure_writable(blocker / "run")


def test_cli_prints_one_line_error_and_exit_code_2(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("collect:\n  bogus: 1\n")
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "pipeline", "--config", str(p)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"lam pipeline: error: {p}: unknown key 'collect.bogus'"
    r = subprocess.run([sys.executable, "-m", "cluster.cli", "pipeline", "--config", str(p),
                        "--run-dir", "/proc/nope"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr


# issue 21 item 1: a pipeline whose model evaluation ran no episode (all infrastructure errors) fails
def test_pipeline_exits_nonzero_when_a_policy_has_no_evaluation_episodes(tmp_path, monkeypatch, capsys):
    import cluster.pipeline
    from cluster import cli

    def fake_run(cfg, rerun_changed=False):  # the stages themselves are tested elsewhere; this is the verdict
        ok = {"overall": {"episodes": 12}}
        dead = {"overall": {"episodes": 0}}
        return {"policies": {"model": dead if cfg.seed == 1 else ok, "expert": ok}}

    monkeypatch.setattr(cluster.pipeline, "run_pipeline", fake_run)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nseed: 1\n")
    assert cli.main(["pipeline", "--config", str(cfg)]) == 1
    assert "no evaluation episodes for model" in capsys.readouterr().err
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nseed: 2\n")
    assert cli.main(["pipeline", "--config", str(cfg)]) == 0


# issue 21 items 9-10: a refused command changes nothing, not even an empty OUT
def test_train_on_a_missing_dataset_is_one_line_and_creates_no_out(tmp_path, capsys):
    from cluster import cli

    out = tmp_path / "train"
    assert cli.main(["train", "--data", str(tmp_path / "nope"), "--config", str(ROOT / "configs/train/tiny.yaml"),
                     "--out", str(out)]) == 2
    assert "is this a lam dataset directory" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["data", "show", str(tmp_path / "nope"), "--episode", "x"]) == 2
    assert "no manifest.json in" in capsys.readouterr().err
