"""Planted truth in every world, and the harness ablation end to end: real Ray actors, real worlds,
real reports (and Chromium when installed)."""
import json
import re

import pytest

from cluster.cli import main
from eval.replays import replay_dir
from eval.suites import SuiteConfig, run_suite
from tests.eval.test_suites import CHROMIUM, chromium_dom

WORLDS = {"babyai": ["BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0"], "toolworld": ["L1", "L3", "L5"]}


@pytest.mark.parametrize("env", list(WORLDS))
def test_planted_false_successes_are_recovered_exactly_in_every_world(env, tmp_path, ray_local):
    out = tmp_path / env
    report = run_suite(SuiteConfig(suite="planted", env=env, levels=WORLDS[env], episodes=8, p=0.5,
                                   policy={"kind": "expert"}, workers=2, out=str(out)), progress=False, html=False)
    assert report["failures"] == [] and report["variants"]["clean"]["overall"]["false_success"] == 0
    md = (out / "report.md").read_text()
    for fault in ("early_done", "skip_last"):
        v = report["variants"][fault]
        m, p = v["overall"], v["planted"]
        events = [json.loads(f.read_text()) for f in (out / fault / "events").glob("*.json")]
        flags = [e["planted"] for chunk in events for e in chunk.values()]
        assert len(flags) == m["episodes"] == 8 * len(WORLDS[env]) and 0 < sum(flags) < len(flags)
        # the planted count (the policy's own record) is what the environment-verdict metrics found
        assert p["planted"] == sum(flags) == m["false_success"] and p["recovered"] and p["rate"] == 0.5
        assert m["successes"] == len(flags) - sum(flags)  # every other episode is the expert's success
        assert f"{p['planted']} of {len(flags)}" in md and "recovered exactly" in md
    if env == "babyai":  # and plain minigrid agrees with every recorded verdict
        assert replay_dir(out)["mismatched"] == []


@pytest.fixture(scope="module")
def tool_ablation(tmp_path_factory, ray_local):
    out = tmp_path_factory.mktemp("ablate") / "tools"
    rc = main(["eval", "--ablate", "feedback,safety", "--env", "toolworld", "--policy", "faulty-expert",
               "--safety", "rm=forbidden", "--levels", "L3,L5", "--episodes", "6", "--workers", "2",
               "--out", str(out)])
    return rc, out, json.loads((out / "report.json").read_text())


def test_ablation_arms_and_table_in_every_report(tool_ablation):
    rc, out, report = tool_ablation
    assert rc == 0 and list(report["variants"]) == ["full", "no-feedback", "no-safety", "no-harness"]
    table = report["ablation"]["arms"]
    assert table["no-harness"]["off"] == ["memory", "feedback", "retry", "grounding", "safety", "focus"]
    for arm in table.values():  # every rate with its interval, every arm but full with its change
        for key in ("success", "false_success", "invalid", "unsafe"):
            assert arm[key]["ci95"][0] - 1e-9 <= arm[key]["value"] <= arm[key]["ci95"][1] + 1e-9  # Wilson at k = n
            assert ("change" in arm[key]) == (arm is not table["full"])
    full, blind, loose = table["full"], table["no-feedback"], table["no-safety"]
    assert blind["invalid"]["value"] > full["invalid"]["value"] and blind["success"]["k"] < full["success"]["k"]
    assert full["unsafe"]["k"] == 0 < loose["unsafe"]["k"] and loose["blocked_actions"] == 0 < full["blocked_actions"]
    md = (out / "report.md").read_text()
    assert "## Harness ablation" in md and "| no-feedback | feedback | 12 |" in md and "change vs full" in md


def test_unknown_harness_component_is_one_line(capsys, tmp_path):
    assert main(["eval", "--ablate", "memory,wings", "--policy", "expert", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lam eval: error: --ablate: unknown harness component(s) wings; known: memory, feedback, retry, "
                   "grounding, safety, focus (or all)"]
    assert main(["eval", "--safety", "drop=never", "--policy", "expert", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.skipif(not CHROMIUM, reason="headless check needs Debian's chromium: apt-get install -y chromium")
def test_ablation_table_renders_in_headless_chromium(tool_ablation, tmp_path):
    _, out, report = tool_ablation
    dom = chromium_dom(out / "report.html", tmp_path)
    table = re.search(r'<div id="ablation"><table>(.*?)</table></div>', dom, re.S)
    assert table, "ablation table missing from the rendered DOM"
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    assert len(rows) == 1 + len(report["variants"])  # header and one row per arm
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", rows[2], re.S)]
    assert cells[0] == "no-feedback" and re.fullmatch(r"[-+]\d+\.\d pp \[[-+]\d+\.\d, [-+]\d+\.\d\]", cells[4])
    assert 'data-plots-ok="' in dom  # the page's own scripts ran
