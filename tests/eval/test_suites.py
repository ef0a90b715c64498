"""Evaluation suites end to end: real Ray actors, real BabyAI, real reports (and Chromium when installed)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy
from data_collection.store import TrajectoryStore, group_episodes
from envs.babyai import BabyAIEnv, replay
from envs.base import Task
from envs.registry import sample_tasks
from eval.evaluator import eval_fleet, load_episodes, run_units
from eval.replays import replay_dir
from eval.metrics import summarize
from eval.suites import SuiteConfig, run_suite

LEVELS = ["BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, ray_local):
    """prefix-expert (expert for a random prefix, then claims done) on 2 levels x 12 tasks x 2 trials."""
    out = tmp_path_factory.mktemp("planted") / "run"
    cfg = SuiteConfig(suite="success", levels=LEVELS, episodes=12, trials=2, policy={"kind": "prefix-expert"},
                      workers=2, out=str(out))
    return out, run_suite(cfg, progress=False)


def test_planted_false_successes_are_recovered_exactly(planted):
    out, report = planted
    eps = group_episodes(TrajectoryStore(out / "clean").read_records("episodes"))
    env, truth_false, by_replay = BabyAIEnv(), 0, 0
    for ep in eps:
        level, seed = ep[0]["level"], ep[0]["seed"]
        actions = [r["action"] for r in ep]
        claimed = actions[-1] == "done"
        prefix = actions[:-1] if claimed else actions
        # truth 1: the bot's own solution, run here in one process: a claim before its end is false
        bot = run_episode(env, ExpertPolicy(), Task("babyai", level, seed, "test"), RunnerConfig())
        full = [s.action for s in bot.steps]
        assert prefix == full[: len(prefix)]  # the policy really played the expert
        truth_false += claimed and len(prefix) < len(full)
        # truth 2: plain minigrid's verdict for the actions taken
        by_replay += claimed and not replay(level, seed, prefix)
    m = report["variants"]["clean"]["overall"]
    assert len(eps) == 48 and 0 < truth_false < 48 and by_replay == truth_false
    assert m["false_success"] == truth_false and m["false_success_rate"]["value"] == truth_false / 48
    assert m["false_success_of_failures"]["k"] == truth_false and m["success_rate"] == 1 - truth_false / 48
    assert f"({truth_false})" in (out / "report.md").read_text()
    assert replay_dir(out) == {"checked": 48, "mismatched": []}
    assert set(report["variants"]["clean"]["pass_k"]) == {"1", "2"}


def test_expert_is_perfect_and_random_status_accuracy_is_reported(tmp_path, ray_local):
    exp = run_suite(SuiteConfig(levels=LEVELS, episodes=6, policy={"kind": "expert"}, out=str(tmp_path / "e")),
                    progress=False, html=False)["variants"]["clean"]["overall"]
    assert exp["episodes"] == 12 and exp["success_rate"] == 1.0 and exp["false_success"] == 0
    assert exp["status_accuracy"] == 1.0 and exp["infra_errors"] == 0
    cfg = SuiteConfig(levels=LEVELS[:1], episodes=10, policy={"kind": "random"}, out=str(tmp_path / "r"),
                      runner={"max_steps": 20})
    rnd = run_suite(cfg, progress=False, html=False)["variants"]["clean"]["overall"]
    eps = group_episodes(TrajectoryStore(tmp_path / "r" / "clean").read_records("episodes"))
    # status is right when the claim matches the verdict, or the agent reached the goal (see eval/metrics.py)
    right = sum(ep[-1]["episode_success"] or not any(r["claimed_done"] for r in ep) for ep in eps)
    assert rnd["status_accuracy"] == right / len(eps)
    assert "status accuracy" in (tmp_path / "r" / "report.md").read_text()


def test_infrastructure_faults_are_retried_counted_and_never_dropped(tmp_path, ray_local):
    tasks = sample_tasks("babyai", LEVELS[:1], "test", 6)
    units = [(t, 0) for t in tasks]
    pool = eval_fleet("babyai", {}, {"kind": "expert"}, workers=2)  # shared by the three runs; replaces the dead
    # an environment that always crashes: every episode is an infrastructure error, none an agent failure
    run_units("crash", "babyai", units, {"kind": "expert"}, {}, 2, tmp_path / "crash",
              perturbation={"kind": "env_crash", "p": 1.0}, chunk=3, progress=False, episode_retries=1, pool=pool)
    m = summarize(load_episodes(tmp_path / "crash"))
    assert m["episodes_total"] == 6 and m["infra_errors"] == 6 and m["episodes"] == 0 and m["failures"] == 0
    # sometimes crashing: retried with fresh draws, most episodes finish, the rest are counted
    run_units("flaky", "babyai", units, {"kind": "expert"}, {}, 2, tmp_path / "flaky",
              perturbation={"kind": "env_crash", "p": 0.05}, chunk=3, progress=False, pool=pool)
    m = summarize(load_episodes(tmp_path / "flaky"))
    assert m["episodes_total"] == 6 and m["infra_retried_episodes"] > 0 and m["episodes"] > m["infra_errors"]
    assert m["success_rate"] == 1.0  # the expert's successes are unaffected by infrastructure trouble
    # actors that die mid-chunk: the chunk re-runs on a fresh actor; nothing is lost
    stats = run_units("dying", "babyai", units, {"kind": "expert"}, {}, 2, tmp_path / "dying",
                      perturbation={"kind": "actor_death", "p": 0.5}, chunk=3, progress=False, pool=pool)
    pool.close()
    m = summarize(load_episodes(tmp_path / "dying"))
    assert stats["actor_deaths"] >= 1 and m["episodes_total"] == 6
    assert m["episodes"] + m["infra_errors"] == 6 and m["success_rate"] == 1.0


def _comparable(report: dict) -> dict:
    """Everything but wall-clock measurements (latency, throughput), which differ run to run."""
    out = {}
    for name, v in report["variants"].items():
        drop = ("latency_p50_s", "latency_p95_s")
        out[name] = {"overall": {k: x for k, x in v["overall"].items() if k not in drop},
                     "levels": {lvl: {k: x for k, x in m.items() if k not in drop} for lvl, m in v["levels"].items()},
                     "pass_k": v["pass_k"]}
    return {"variants": out, "effects": report["effects"]}


def test_killed_and_resumed_evaluation_reports_the_same_metrics(tmp_path, ray_local):
    import os
    import signal
    import sys
    import time

    from cluster.cli import main

    args = ["eval", "--suite", "robustness", "--variants", "clean,action_fail", "--policy", "random",
            "--levels", ",".join(LEVELS), "--episodes", "20", "--trials", "2", "--max-steps", "10",
            "--workers", "2", "--no-html"]
    killed = tmp_path / "killed"
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    manifest = killed / "clean" / "manifest.json"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and json.loads(manifest.read_text())["shards"]:
                break
            time.sleep(0.02)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the evaluation dies mid-run, as on a lost machine
        proc.wait(30)
    shards = len(json.loads(manifest.read_text())["shards"])
    assert not (killed / "report.json").exists() and 0 < shards < 10  # 80 episodes: 10 chunks of 8
    assert main(args + ["--out", str(killed)]) == 2  # an existing run is not silently overwritten
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    assert main(args + ["--out", str(tmp_path / "whole")]) == 0
    resumed = json.loads((killed / "report.json").read_text())
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert _comparable(resumed) == _comparable(whole)
    eff = resumed["effects"]["action_fail"]  # the perturbation's effect, with its interval, in every format
    assert eff["ci95"][0] <= eff["delta"] <= eff["ci95"][1]
    assert "change vs clean [95% CI]" in (killed / "report.md").read_text()
    assert replay_dir(killed) == {"checked": 160, "mismatched": []}  # ignored actions are skipped, as they were
    assert resumed["variants"]["clean"]["overall"]["episodes"] == 80
    runs = json.loads((killed / "suite.json").read_text())["runs"]["clean"]
    assert runs[-1]["chunks_run"] == 10 - shards  # finished chunks were not run again


def test_compare_writes_side_by_side_reports(planted, tmp_path, ray_local):
    from cluster.cli import main

    out, _ = planted
    other = tmp_path / "expert"
    run_suite(SuiteConfig(levels=LEVELS, episodes=4, trials=2, policy={"kind": "expert"}, out=str(other)),
              progress=False, html=False)
    assert main(["eval", "compare", str(out), str(other), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "| metric | run (prefix-expert) | expert (expert) |" in md
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "grid-template-columns:repeat(2," in html
    assert main(["eval", "compare", str(out), str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


def chromium_flags(tmp_path: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000"]  # no network: any fetch would fail


def chromium_dom(page: Path, tmp_path: Path) -> str:
    """The DOM of a report.html after headless Chromium loaded it and ran its scripts."""
    assert re.findall(r'(?:src|href)="(?!data:)', page.read_text()) == []  # self-contained: nothing to fetch
    return subprocess.run([CHROMIUM, *chromium_flags(tmp_path), "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=120).stdout


@pytest.mark.skipif(not CHROMIUM, reason="headless check needs Debian's chromium: apt-get install -y chromium")
def test_report_html_renders_plots_and_replays_in_headless_chromium(planted, tmp_path):
    out, _ = planted
    page = out / "report.html"
    flags = chromium_flags(tmp_path)
    dom = chromium_dom(page, tmp_path)
    check = re.search(r'<div id="render-check"([^>]*)>', dom)
    assert check, "render check element missing from the DOM"
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', check.group(1)))
    assert int(attrs["plots"]) >= 4 and attrs["plots-ok"] == attrs["plots"]
    assert int(attrs["replays"]) >= 2 and attrs["replays-ok"] == attrs["replays"]
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000
