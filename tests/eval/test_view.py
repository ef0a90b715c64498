"""`lam view DIR` (eval/view.py): a bad DIR is one line, false successes come first and the filters are
exact, an episode's page holds its transcript, replay verdict and minigrid frames.

    python -m pytest -q tests/eval/test_view.py

The truth is computed apart from the viewer: each claim is checked by replaying the episode's actions in
plain minigrid (envs.babyai.replay). The pages in a browser: tests/eval/test_console_browser.py.
"""
import io
import json
import re
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cluster.cli import main
from data_collection.schema import group_steps
from data_collection.store import TrajectoryStore
from envs.babyai import replay
from envs.babyai_frames import replay_frames
from eval.view import RunIndex, create_view_app
from tests.eval.view_runs import bot_dataset, planted_eval_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = planted_eval_run(tmp_path_factory.mktemp("view") / "run")
    eps = group_steps(TrajectoryStore(out / "prefix-expert").read_rows("episodes"))
    truth = {}  # episode id -> outcome, from minigrid's verdict on the recorded actions
    for ep in eps:
        actions = [r.action for r in ep]
        claimed, verified = actions[-1] == "done", replay(ep[0].level, ep[0].seed, actions)
        truth[ep[0].episode_id] = "success" if verified else ("false_success" if claimed else "failure")
    assert 0 < list(truth.values()).count("false_success") < len(truth)  # the run holds planted false successes
    return out, truth


@pytest.fixture(scope="module")
def client(run):
    return TestClient(create_view_app(RunIndex(run[0])))


def _listed(html: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr data-episode="([^"]+)" data-outcome="([^"]+)"', html)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "is not a directory"),
    (lambda d: (d / "file").write_text("x") and d / "file", "is not a directory"),
    (lambda d: d, "holds no evaluation run or dataset"),
    (lambda d: (d / "manifest.json").write_text("{oops") and d, "corrupt manifest"),
])
def test_a_bad_dir_is_one_line(tmp_path, capsys, make, message):
    assert main(["view", str(make(tmp_path)), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lam view: error: ") and message in err and err.count("\n") == 1


def test_a_busy_port_is_one_line(run, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert main(["view", str(run[0]), "--port", str(s.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_false_successes_come_first_and_filters_are_exact(run, client):
    _, truth = run
    listed = _listed(client.get("/").text)
    assert sorted(listed) == sorted(truth.items())  # every episode, with the outcome minigrid gives it
    n_false = list(truth.values()).count("false_success")
    assert [o for _, o in listed[:n_false]] == ["false_success"] * n_false
    for outcome in ("false_success", "success", "failure", "infra_error"):
        page = client.get("/", params={"outcome": outcome}).text
        assert sorted(_listed(page)) == sorted((e, o) for e, o in truth.items() if o == outcome)
        assert f'data-outcome="{outcome}">' in page and f"({list(truth.values()).count(outcome)})</a>" in page
    r = client.get("/", params={"outcome": "maybe"})
    assert r.status_code == 400 and "unknown outcome &#x27;maybe&#x27;" in r.text
    assert client.get("/", params={"store": 7}).status_code == 404
    assert client.get("/", params={"store": 0}).text.count("<tr data-episode") == len(truth)


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_an_episode_page_has_its_transcript_replay_and_frames(run, client):
    out, truth = run
    eid = next(e for e, o in truth.items() if o == "false_success")
    ep = next(ep for ep in group_steps(TrajectoryStore(out / "prefix-expert").read_rows("episodes"))
              if ep[0].episode_id == eid)
    page = client.get(f"/episode/0/{eid}").text
    assert 'class="badge o-false_success"' in page and 'data-matches="true">failure, as recorded' in page
    assert re.findall(r'<li class="step[^"]*" data-step="(\d+)"', page) == [str(r.step) for r in ep]
    for r in ep:  # what the model saw and said, and what reached the world
        assert f"<pre>{r.raw_output}</pre>" in page and json.loads(r.messages)[0]["content"][:30] in page
    assert f"<pre>{ep[0].request}</pre>" in page and "claims done" in page
    frames, verdict = replay_frames(ep[0].level, ep[0].seed, [r.action for r in ep])
    assert not verdict
    for k in (0, len(ep)):  # the first state and the final one, as minigrid renders them
        img = Image.fromarray(frames[k])
        img.thumbnail((256, 256))
        assert np.array_equal(_png(client.get(f"/frame/0/{eid}/{k}.png").content), np.asarray(img))
    assert client.get(f"/frame/0/{eid}/{len(ep) + 1}.png").status_code == 404
    assert client.get("/episode/0/nope").status_code == 404
    assert client.get("/static/console.css").status_code == 200


def test_a_replay_that_differs_is_shown(run):
    index = RunIndex(run[0])
    e = index.select("false_success")[0]
    e.verified = True  # as if the run had recorded a success that its actions do not reach
    page = TestClient(create_view_app(index)).get(f"/episode/{e.store}/{e.episode_id}").text
    assert 'data-matches="false">failure: differs from the recorded verdict (success)' in page


def test_a_dataset_dir(tmp_path):
    index = RunIndex(bot_dataset(tmp_path / "ds"))
    assert [s.kind for s in index.stores] == ["dataset"] and len(index.episodes) == 3
    assert index.counts()["success"] == 3
    html = TestClient(create_view_app(index)).get("/").text
    assert len(_listed(html)) == 3 and "(dataset)" in html
