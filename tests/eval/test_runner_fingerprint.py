"""`lam eval` builds the runner's settings typed (agent/runner_config.py); what reaches the resume
fingerprint and report.json must stay byte-identical, or existing eval runs stop resuming. Pinned here."""
import argparse
import json

import pytest

import eval.evaluator as evaluator
import eval.report as report
import eval.suites as suites
from eval import cli
from eval.evaluator import _fingerprint


class _Stop(Exception):
    pass


def _capture(monkeypatch, argv: list[str]) -> dict:
    seen = {}

    def fake_evaluate(name, env, tasks, policy, runner, workers, out, trials=1, **kw):
        units = [(t, k) for t in tasks for k in range(trials)]
        seen["fingerprint"] = _fingerprint(env, units, policy, runner, None, 8)
        return {}

    def fake_report(out, name, result, config):
        seen["config"] = config
        raise _Stop

    def fake_suite(cfg, resume=False, html=True):
        seen["suite_runner"] = cfg.runner
        raise _Stop

    monkeypatch.setattr(evaluator, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluator, "check_model_endpoint", lambda policy: None)
    monkeypatch.setattr(report, "write_eval_report", fake_report)
    monkeypatch.setattr(suites, "run_suite", fake_suite)
    p = argparse.ArgumentParser()
    cli.add_args(p)
    with pytest.raises(_Stop):
        cli.main(p.parse_args(argv))
    return seen


def test_default_eval_fingerprint_and_report_config_unchanged(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, ["--model-url", "http://127.0.0.1:9/v1", "--episodes", "3", "--out", str(tmp_path)])
    assert json.dumps(seen["fingerprint"], sort_keys=True) == (
        '{"chunk": 8, "env": "babyai", "first": ["BabyAI-GoToLocal-v0/1000000000#0"], '
        '"last": ["BabyAI-GoToLocal-v0/1000000002#0"], "perturbation": {"kind": "none"}, '
        '"policy": {"kind": "model", "model": "lam-action-model", "seed": 0, "temperature": 0.7}, '
        '"runner": {"history_window": 8, "max_steps": 64}, "units": 3}')
    assert json.dumps(seen["config"]["runner"]) == '{"max_steps": 64, "history_window": 8}'


def test_time_limit_and_suite_runner_unchanged(monkeypatch, tmp_path):
    seen = _capture(monkeypatch, ["--policy", "expert", "--episodes", "2", "--time-limit-s", "30",
                                  "--max-steps", "40", "--out", str(tmp_path)])
    assert json.dumps(seen["fingerprint"]["runner"]) == '{"max_steps": 40, "history_window": 8, "time_limit_s": 30.0}'
    assert json.dumps(seen["config"]["runner"]) == '{"max_steps": 40, "history_window": 8, "time_limit_s": 30.0}'
    seen = _capture(monkeypatch, ["--suite", "robustness", "--policy", "expert", "--out", str(tmp_path)])
    assert json.dumps(seen["suite_runner"]) == '{"max_steps": 64, "history_window": 8, "time_limit_s": 60.0}'
