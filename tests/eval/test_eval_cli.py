"""`lam eval` as a user runs it: a dead or wrong model endpoint, runs that measured nothing, the default
temperature, the default output directory, and what goes to stdout (results) vs stderr (progress).

    .venv/bin/python -m pytest tests/eval/test_eval_cli.py -q
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.cli import build_parser, main
from tests.serving.conftest import ThreadedServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rejecting_server():
    """Lists its model (so the up-front check passes) but rejects every chat request: every episode
    is an infrastructure error."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "test"}]}

    @app.post("/v1/chat/completions")
    def chat():
        return JSONResponse({"error": {"message": "backend is broken", "type": "test"}}, status_code=400)

    with ThreadedServer(app) as srv:
        yield srv


# issue 21 item 1
def test_eval_refuses_a_dead_url_or_an_unknown_model_before_any_work(stub_server, tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    t0 = time.monotonic()
    assert main(["eval", "--model-url", dead, "--episodes", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and dead in err and "unreachable" in err and "--model-url" in err
    assert main(["eval", "--suite", "success", "--model-url", stub_server.base_url, "--model", "nope",
                 "--episodes", "2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope' is not served" in err and "stub" in err
    assert time.monotonic() - t0 < 15  # no Ray start, no episodes
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# issue 21 item 1
def test_a_run_whose_episodes_are_all_infrastructure_errors_fails_with_the_reason(rejecting_server, tmp_path,
                                                                                   capsys, ray_local):
    out = tmp_path / "ev"
    rc = main(["eval", "--model-url", rejecting_server.base_url, "--model", "stub", "--episodes", "2",
               "--workers", "2", "--max-steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "all 2 episodes were infrastructure errors" in err and "backend is broken" in err
    report = json.loads((out / "report.json").read_text())  # the report is still written
    assert report["failures"] and report["policies"]["model"]["overall"]["infra_errors"] == 2
    md = (out / "report.md").read_text()
    assert "no episodes (2 infrastructure errors)" in md and "0.0% [0.0%" not in md and "0.0%–0.0%" not in md


# issue 21 item 7
def test_one_default_temperature_for_lam_eval_and_the_pipeline_stated_in_every_report(stub_server, tmp_path,
                                                                                       ray_local):
    import yaml

    from cluster.config import EvalSection

    parsed = build_parser().parse_args(["eval"])
    assert parsed.temperature == EvalSection().temperature == 0.7
    # every BabyAI config (what a default `lam eval` runs on) agrees; another world may choose its own,
    # explicitly, and its report states it (configs/tools.yaml: greedy tool calls)
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if (raw.get("collect") or {}).get("env", "babyai") == "babyai":
            assert (raw.get("eval") or {}).get("temperature", 0.7) == 0.7, path
    out = tmp_path / "suite"
    assert main(["eval", "--suite", "success", "--model-url", stub_server.base_url, "--model", "stub",
                 "--episodes", "2", "--max-steps", "2", "--workers", "2", "--seed", "5", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["sampling"]["temperature"] == 0.7 and report["sampling"]["seed"] == 5
    assert report["config"]["policy"]["temperature"] == 0.7
    line = "sampling: temperature 0.7, policy seed 5"
    html = (out / "report.html").read_text()
    assert line in (out / "report.md").read_text() and line in html
    assert "pass^k plot skipped: one trial per task" in html  # issue 21 item 12: one trial, no pass^k curve


# issue 21 item 13
def test_plain_eval_writes_reports_to_a_default_out_and_keeps_stdout_for_results(tmp_path, ray_local):
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS=ray_local.get_runtime_context().gcs_address,
               COLUMNS="80")
    args = [sys.executable, "-m", "cluster.cli", "eval", "--policy", "random", "--levels",
            "BabyAI-GoToLocal-v0,BabyAI-PickupLoc-v0", "--episodes", "3", "--max-steps", "4", "--workers", "2"]
    p = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    outs = list((tmp_path / "runs").glob("eval-*"))
    assert len(outs) == 1 and (outs[0] / "report.json").exists() and (outs[0] / "report.md").exists()
    assert f"reports in runs/{outs[0].name}/report.json" in p.stderr  # it says where
    # stdout is not a terminal: the table's cells are whole, not cut at 80 columns, and no progress bar
    assert "BabyAI-PickupLoc-v0" in p.stdout and "…" not in p.stdout and "eval random" not in p.stdout
    report = json.loads((outs[0] / "report.json").read_text())
    lo, hi = report["policies"]["random"]["overall"]["success_ci95"]
    assert f"{100 * lo:.1f}%–{100 * hi:.1f}%" in p.stdout
    # --json: stdout is exactly the report, parseable
    p = subprocess.run(args + ["--json", "--out", "j"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 0 and json.loads(p.stdout)["sampling"]["policy"] == "random"


def test_compare_of_plain_evaluations_gives_each_level_and_the_change_with_its_interval(tmp_path, ray_local, capsys,
                                                                                        monkeypatch):
    """`lam eval compare` on two plain runs (the expert and random on the same tasks) tabulates success per
    level and the change against the first run; a plain run next to a suite run is refused in one line."""
    monkeypatch.setenv("RAY_ADDRESS", ray_local.get_runtime_context().gcs_address)
    common = ["--levels", "BabyAI-GoToLocal-v0,BabyAI-PickupLoc-v0", "--episodes", "6", "--max-steps", "12",
              "--workers", "2", "--no-html"]
    for policy in ("expert", "random"):
        assert main(["eval", "--policy", policy, *common, "--out", str(tmp_path / policy)]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", str(tmp_path / "expert"), str(tmp_path / "random"), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["same_tasks"] and "Same held-out tasks" in out
    rows = {r["level"]: r for r in report["table"]}
    assert set(rows) == {"BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "all levels"}
    for lvl, r in rows.items():
        expert, rand = r["success"]
        n = 12 if lvl == "all levels" else 6
        assert expert == {"successes": n, "episodes": n} and rand["episodes"] == n
        change = r["change_vs_first"][0]
        assert change["delta"] == pytest.approx(rand["successes"] / n - 1.0)
        assert change["ci95"][0] <= change["delta"] <= change["ci95"][1]
    assert "| all levels | 100.0%" in out
    # a suite run is another kind of report
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "report.json").write_text(json.dumps({"suite": "robustness", "variants": {}}))
    assert main(["eval", "compare", str(tmp_path / "expert"), str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot compare plain evaluations" in err and "\n" not in err
