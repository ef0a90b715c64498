"""The web console and `lam view` in a real browser: Playwright drives Debian's Chromium (headless) against
`lam agent serve` and `lam view` running as processes on 127.0.0.1.

    make browser && python -m pytest -q -rs tests/eval/test_console_browser.py
    LAM_TEST_ARTIFACTS=artifacts python -m pytest -q tests/eval/test_console_browser.py   # keep the screenshots

Through the page only: type the API key, start sessions, step, run and cancel them, watch the transcript
arrive over the session's server-sent events; then find the planted false success of a prefix-expert
evaluation run in `lam view`. Skipped, with the reason, only where Playwright or Chromium cannot be used.
"""
import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policies import PrefixExpertPolicy
from data_collection.schema import group_steps
from data_collection.store import TrajectoryStore
from envs.babyai import BabyAIEnv, replay
from envs.base import Task
from serving.launch import ServerProcess, find_free_port, popen_logged
from tests.eval.view_runs import planted_eval_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = "console-test-key"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]' (make install)")
    if not CHROMIUM:
        pytest.skip("Debian's chromium is not installed: make browser (apt-get install -y chromium)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        except Error as e:
            pytest.skip(f"Playwright cannot start {CHROMIUM}: {str(e).splitlines()[0]}")
        yield b
        b.close()


def _lam(args: list[str], port: int, name: str, health: str) -> ServerProcess:
    proc, log = popen_logged([sys.executable, "-m", "cluster.cli", *args, "--port", str(port)], prefix=f"lam-{name}-")
    return ServerProcess(proc, "127.0.0.1", port, log, name)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """`lam agent serve` (with an API key) and `lam view` on a prefix-expert evaluation run, started together."""
    tmp = tmp_path_factory.mktemp("console")
    run = planted_eval_run(tmp / "run")
    agent = _lam(["agent", "serve", "--db", str(tmp / "sessions.db"), "--api-key", KEY], find_free_port(), "agent", "/health")
    view = _lam(["view", str(run)], find_free_port(), "view", "/")
    try:
        yield agent.wait_healthy(120), view.wait_healthy(120, path="/"), run
    finally:
        agent.stop()
        view.stop()


def _false_success_seed() -> int:
    """A test seed on which the prefix-expert claims done before the bot's solution ends."""
    env = BabyAIEnv()
    for seed in range(100):
        ep = run_episode(env, PrefixExpertPolicy(0), Task("babyai", "BabyAI-GoToLocal-v0", seed, "test"), RunnerConfig())
        if ep.false_success:
            return seed
    raise AssertionError("no false success in 100 seeds")


def _save(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("LAM_TEST_ARTIFACTS"):
        keep = Path(os.environ["LAM_TEST_ARTIFACTS"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / name)
    print(f"screenshot: {shot}")
    return shot


def _new_session(page, policy: str, seed: int, run: bool) -> str:
    before = set(page.locator("#sessions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)"))
    page.select_option("#f-policy", policy)
    page.fill("#f-seed", str(seed))
    page.set_checked("#f-run", run)
    page.click("#create")
    page.wait_for_function("""ids => { const r = document.querySelector("#sessions tbody tr.selected");
                                       return r && !ids.includes(r.dataset.id); }""", arg=sorted(before))
    return page.locator("#sessions tbody tr.selected").get_attribute("data-id")  # the page selects what it created


def test_console_drives_sessions_and_lam_view_finds_the_false_success(browser, servers, tmp_path):
    from playwright.sync_api import expect

    agent, view, run = servers
    api = httpx.Client(base_url=agent.root_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    # generous waits: the whole test took 25 s on 2 cores at load ~25, and 6 min at load ~65 (shared machine)
    page.set_default_timeout(90_000)
    expect.set_options(timeout=90_000)
    page.goto(agent.root_url + "/")
    expect(page.locator("#error")).to_contain_text("401 unauthorized")  # no key yet: the API refuses
    page.fill("#key", KEY)
    page.click("#use-key")
    expect(page.locator("#conn")).to_have_text("key in use")

    # step, step, run: the transcript after `run` can only come over the session's event stream
    sid = _new_session(page, "expert", 5, run=False)
    steps = page.locator("#transcript li.step:not([data-step=final])")
    expect(page.locator("#d-status")).to_have_text("idle")
    page.click("#b-step")
    expect(steps).to_have_count(1)
    page.click("#b-step")
    expect(steps).to_have_count(2)
    page.click("#b-run")
    expect(page.locator("#d-status")).to_have_text("finished")
    row = api.get(f"/v1/sessions/{sid}").json()
    assert row["status"] == "finished" and row["success"] and len(row["transcript"]) > 2
    expect(steps).to_have_count(len(row["transcript"]))
    for s in row["transcript"]:
        expect(page.locator(f'#transcript li[data-step="{s["step"]}"]')).to_contain_text(s["raw_output"])
    expect(page.locator("#transcript img.frame[data-loaded]")).to_have_count(len(row["transcript"]) + 1)
    expect(page.locator(f'#sessions tr[data-id="{sid}"]')).to_have_attribute("data-status", "finished")

    # cancel an idle session
    idle = _new_session(page, "expert", 6, run=False)
    page.click("#b-cancel")
    expect(page.locator("#d-status")).to_have_text("cancelled")
    assert api.get(f"/v1/sessions/{idle}").json()["status"] == "cancelled"

    # a session that claims done too early: claimed, not verified, shown as a false success
    fs = _new_session(page, "prefix-expert", _false_success_seed(), run=True)
    expect(page.locator("#d-status")).to_have_text("finished")
    assert api.get(f"/v1/sessions/{fs}").json()["false_success"]
    fs_row = page.locator(f'#sessions tr[data-id="{fs}"]')
    expect(fs_row).to_have_attribute("data-false-success", "true")
    expect(fs_row).to_contain_text("done")
    expect(page.locator("#d-summary")).to_contain_text("false success")
    n = len(api.get(f"/v1/sessions/{fs}").json()["transcript"])
    expect(page.locator("#transcript img.frame[data-loaded]")).to_have_count(n + 1)  # frames in the screenshot
    _save(page, tmp_path, "console.png")

    # lam view: the planted false successes, first under their filter, with a replay that agrees
    eps = {ep[0].episode_id: ep for ep in group_steps(TrajectoryStore(run / "prefix-expert").read_rows("episodes"))}
    page.goto(view.root_url + "/")
    page.click('#filters a[data-outcome="false_success"]')
    first = page.locator("#episodes tbody tr").first
    expect(first).to_have_attribute("data-outcome", "false_success")
    ep = eps[first.get_attribute("data-episode")]
    assert ep[-1].action == "done" and not replay(ep[0].level, ep[0].seed, [r.action for r in ep])  # minigrid agrees
    first.locator("a").click()
    expect(page.locator("#summary .o-false_success")).to_be_visible()
    expect(page.locator("#replay")).to_have_text("failure, as recorded")
    expect(page.locator("#transcript li.step")).to_have_count(len(ep) + 1)
    frames = page.locator("#transcript img.frame")
    deadline = time.time() + 90
    while time.time() < deadline and not all(frames.evaluate_all("fs => fs.map(f => f.complete && f.naturalWidth > 0)")):
        time.sleep(0.1)
    assert frames.evaluate_all("fs => fs.map(f => f.naturalWidth)") == [256] * (len(ep) + 1)
    assert _save(page, tmp_path, "view.png").stat().st_size > 20_000
