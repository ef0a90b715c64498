"""configs/tools.yaml, small (its smoke overrides): the tool-world pipeline end to end — expert
collection, training from scratch, a served model, held-out evaluation per level with baselines,
the same model on BFCL multi-turn base (eval.also), and every saved episode replayable.

    .venv/bin/python -m pytest -q tests/cluster/test_pipeline_tools.py
"""
import json
from pathlib import Path

from cluster.cli import main as lam
from cluster.config import load_pipeline_config
from cluster.pipeline import run_pipeline

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tools.yaml"
# the smoke variant of configs/tools.yaml: same config, tiny sizes (see the file's header)
SMOKE = ["collect.episodes=20", "collect.shard_episodes=10", "train.vocab_size=600", "train.epochs=1",
         "train.warmup_steps=2", "train.checkpoint_every=0", "train.time_budget_s=60", "train.threads=2",
         "serve.threads=1", "serve.max_batch_size=8", "eval.levels=[L1, L5]", "eval.episodes=2",
         "eval.max_steps=6", "eval.workers=2",
         "eval.also=[{env: bfcl, levels: [multi_turn_base], episodes: 2, max_steps: 2}]"]


# issue 16 item 4
def test_tools_pipeline_end_to_end(tmp_path, ray_local, capsys):
    cfg = load_pipeline_config(CONFIG, SMOKE + [f"run_dir={tmp_path / 'run'}"])
    run_pipeline(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "report.json").read_text())
    assert set(saved["policies"]) == {"model", "model@bfcl", "random", "expert"}
    for name in ("model", "random", "expert"):
        assert set(saved["policies"][name]["levels"]) == {"L1", "L5"}
    assert saved["policies"]["expert"]["overall"]["success_rate"] == 1.0
    # BFCL: a measured number (no infrastructure errors: its long prompts fit the context), stated in the report
    bfcl = saved["policies"]["model@bfcl"]
    assert set(bfcl["levels"]) == {"multi_turn_base"} and bfcl["overall"]["episodes"] == 2
    assert saved["also"]["model@bfcl"]["env"] == "bfcl" and saved["also"]["model@bfcl"]["episodes"] == 2
    md = (run / "report.md").read_text()
    assert "| L1 | model | 2 |" in md and "| L5 | expert | 2 | 100.0% |" in md
    assert "| multi_turn_base | model@bfcl | 2 |" in md
    assert {"eval_imitation", "eval_also_bfcl", "eval_random", "eval_expert"} <= set(saved["stage_wall_s"])
    # every evaluation episode (tool world and BFCL) replays to its recorded verdict
    for name in ("model", "model@bfcl", "random", "expert"):
        capsys.readouterr()
        assert lam(["eval", "--replay", str(run / "eval" / name)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["checked"] >= 1 and result["mismatched"] == []


# issue 16 item 4: a mistyped extra evaluation is refused up front, naming the entry
def test_eval_also_with_an_unknown_env_or_level_is_one_line():
    import pytest

    from cluster.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval\.also\[0\]\.levels: unknown level 'multi_turn_basic' for env 'bfcl'"):
        load_pipeline_config(CONFIG, ["eval.also=[{env: bfcl, levels: [multi_turn_basic]}]"])
    with pytest.raises(ConfigError, match=r"eval\.also\.0\.env: .*unknown env 'bfc'"):
        load_pipeline_config(CONFIG, ["eval.also=[{env: bfc, levels: [multi_turn_base]}]"])
