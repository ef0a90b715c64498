"""The pipeline report's training-phase table: success after each phase and the change each made.

    .venv/bin/python -m pytest tests/eval/test_pipeline_report.py -q
"""
from eval.metrics import effect, newcombe_diff
from eval.report import write_report


def _policy(level: str, k: int, n: int) -> dict:
    m = {"episodes": n, "successes": k, "success_rate": k / n, "success_ci95": [0.0, 1.0], "mean_steps": 10.0,
         "invalid_action_rate": 0.0, "false_success": 0}
    return {"overall": m, "levels": {level: m}}


def test_phase_table_states_each_change_with_its_interval(tmp_path):
    counts = {"imitation": (120, 300), "self_boost": (150, 300), "dpo": (141, 300)}
    phases, prev = {}, None
    for name, (k, n) in counts.items():
        ph = {"success_rate": k / n, "success_ci95": [0.1, 0.9], "successes": k, "episodes": n, "export": name}
        if prev:
            e = effect(phases[prev], ph)
            ph["change_vs_previous"] = {"previous": prev, "delta": e["delta"], "ci95": e["ci95"]}
        phases[name], prev = ph, name
    results = {f"model-{p}": _policy("L", *counts[p]) for p in counts}
    write_report(tmp_path, results, {"train": 1.0}, {"phases": phases})
    md = (tmp_path / "report.md").read_text()
    assert "| imitation | 300 | 40.0% | 10.0%–90.0% | — | — |" in md
    d, (lo, hi) = newcombe_diff(150, 300, 120, 300)  # computed here independently of the pipeline's code
    assert abs(d - 0.10) < 1e-12 and lo < 0.10 < hi
    assert f"| self_boost | 300 | 50.0% | 10.0%–90.0% | +10.0 pp (vs imitation) | {100 * lo:+.1f} to {100 * hi:+.1f} pp |" in md
    d, (lo, hi) = newcombe_diff(141, 300, 150, 300)
    assert f"| dpo | 300 | 47.0% | 10.0%–90.0% | -3.0 pp (vs self_boost) | {100 * lo:+.1f} to {100 * hi:+.1f} pp |" in md


def test_skipped_phase_is_reported_with_its_reason(tmp_path):
    phases = {"imitation": {"success_rate": 0.5, "success_ci95": [0.4, 0.6], "successes": 5, "episodes": 10},
              "dpo": {"skipped": "no success/failure pairs on the same task in ['b']: sample more trials per task"}}
    write_report(tmp_path, {"model-imitation": _policy("L", 5, 10)}, {}, {"phases": phases})
    md = (tmp_path / "report.md").read_text()
    assert "| dpo | — | skipped: no success/failure pairs on the same task" in md
    assert "| imitation | 10 | 50.0% | 40.0%–60.0% | — | — |" in md


# issue 21 item 7
def test_pipeline_report_states_the_evaluation_temperature_and_seed(tmp_path):
    write_report(tmp_path, {"model": _policy("L", 5, 10)}, {}, {"eval_temperature": 0.7, "eval_seed": 3})
    assert "model sampling at evaluation: temperature 0.7, seed 3" in (tmp_path / "report.md").read_text()
