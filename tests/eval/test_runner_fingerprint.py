"""`lam eval` builds the runner's settings typed (agent/runner_config.py); what reaches the resume
fingerprint and report.json must stay byte-identical, or existing eval runs stop resuming. Pinned here."""
import argparse
import json

import pytest

import eval.evaluator as evaluator
import eval.report as report
import eval.suites as suites
from eval import cli


class _Stop(Exception):
    pass


def _capture(monkeypatch, argv: list[str], out) -> dict:
    """Run `lam eval ARGV` twice: once for real up to the fleet (the fingerprint is then on disk), once with
    evaluate() faked up to report.json's config."""
    seen = {}

    def no_fleet(*a, **kw):
        raise _Stop

    def fake_report(out, name, result, config):
        seen["config"] = config
        raise _Stop

    def fake_suite(cfg, resume=False, html=True):
        seen["suite_runner"] = cfg.runner
        raise _Stop

    monkeypatch.setattr(evaluator, "eval_fleet", no_fleet)
    monkeypatch.setattr(evaluator, "check_model_endpoint", lambda policy: None)
    monkeypatch.setattr(report, "write_eval_report", fake_report)
    monkeypatch.setattr(suites, "run_suite", fake_suite)
    p = argparse.ArgumentParser()
    cli.add_args(p)
    a = p.parse_args([*argv, "--out", str(out)])
    with pytest.raises(_Stop):
        cli.main(a)
    if a.suite:
        return seen
    seen["fingerprint"] = json.loads((out / a.policy / "manifest.json").read_text())["meta"]["fingerprint"]
    monkeypatch.setattr(evaluator, "evaluate", lambda *a, **kw: {})
    with pytest.raises(_Stop):
        cli.main(a)
    return seen


def test_default_eval_fingerprint_and_report_config_unchanged(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, ["--model-url", "http://127.0.0.1:9/v1", "--episodes", "3"], tmp_path)
    assert json.dumps(seen["fingerprint"], sort_keys=True) == (
        '{"chunk": 8, "env": "babyai", "first": ["BabyAI-GoToLocal-v0/1000000000#0"], '
        '"last": ["BabyAI-GoToLocal-v0/1000000002#0"], "perturbation": {"kind": "none"}, '
        '"policy": {"kind": "model", "model": "lam-action-model", "seed": 0, "temperature": 0.7}, '
        '"runner": {"history_window": 8, "max_steps": 64}, "units": 3}')
    assert json.dumps(seen["config"]["runner"]) == '{"max_steps": 64, "history_window": 8}'


def test_time_limit_and_suite_runner_unchanged(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, ["--policy", "expert", "--episodes", "2", "--time-limit-s", "30",
                                  "--max-steps", "40"], tmp_path / "a")
    assert json.dumps(seen["fingerprint"]["runner"]) == '{"history_window": 8, "max_steps": 40, "time_limit_s": 30.0}'  # sorted on disk
    assert json.dumps(seen["config"]["runner"]) == '{"max_steps": 40, "history_window": 8, "time_limit_s": 30.0}'
    seen = _capture(monkeypatch, ["--suite", "robustness", "--policy", "expert"], tmp_path / "b")
    assert json.dumps(seen["suite_runner"]) == '{"max_steps": 64, "history_window": 8, "time_limit_s": 60.0}'
