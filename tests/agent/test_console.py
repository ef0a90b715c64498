"""The web console at / of the agent API (agent/console): the page and its files are served, BabyAI frames
are minigrid's own render of a replay, and mounting it leaves the API's JSON routes and key checks as they were.

    python -m pytest -q tests/agent/test_console.py

In-process (FastAPI's TestClient); the page itself runs in Chromium in tests/eval/test_console_browser.py.
"""
import io
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from agent.api import create_app
from agent.console.web import STATIC
from envs.babyai_frames import replay_frames

KEY = {"Authorization": "Bearer k1"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(str(tmp_path_factory.mktemp("console") / "s.db"), {"k1": 4})
    with TestClient(app) as c:
        yield c


def test_root_serves_the_console_and_its_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="new-session"' in page.text and 'id="sessions"' in page.text
    # the files the page names exist and are served with their types; nothing outside static/ is
    for src in re.findall(r'(?:src|href)="(/console/static/[^"]+)"', page.text):
        r = client.get(src)
        assert r.status_code == 200 and r.content == (STATIC / src.rsplit("/", 1)[1]).read_bytes()
    assert client.get("/console/static/console.js").headers["content-type"].startswith("text/javascript")
    for bad in ("nope.js", "..%2Fweb.py", "__init__.py", ".hidden.css"):
        assert client.get(f"/console/static/{bad}").status_code == 404


def test_the_page_uses_only_the_public_api():
    js = (STATIC / "console.js").read_text()
    paths = set(re.findall(r'[`"](/[a-z0-9/._-]*)', js)) - {"/step", "/run"}  # suffixes of /v1/sessions/{id}
    assert paths and all(p.startswith(("/v1/sessions", "/console/")) for p in paths), paths
    assert "Authorization" in js and "Bearer" in js  # the user's key, as the API expects it


def test_api_routes_and_auth_are_unchanged(client):
    assert client.get("/health").json()["status"] == "ok"
    r = client.get("/v1/sessions")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = client.post("/v1/sessions", json={"env": "babyai", "seed": 3, "run": False}, headers=KEY)
    assert r.status_code == 201 and r.headers["content-type"] == "application/json"
    sid = r.json()["id"]
    assert client.post(f"/v1/sessions/{sid}/step", headers=KEY).json()["steps"] == 1
    assert [s["id"] for s in client.get("/v1/sessions", headers=KEY).json()["sessions"]] == [sid]
    assert client.get(f"/v1/sessions/{sid}", headers={"Authorization": "Bearer other"}).status_code == 401
    assert client.delete(f"/v1/sessions/{sid}", headers=KEY).json()["status"] == "cancelled"
    assert client.post("/v1/sessions", data="env=babyai", headers={**KEY, "content-type": "text/plain"}).status_code == 415


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_frames_are_the_replayed_world_and_need_the_key(client):
    q = {"level": "BabyAI-GoToLocal-v0", "seed": 3}
    assert client.get("/console/frame.png", params=q).status_code == 401
    start = client.get("/console/frame.png", params=q, headers=KEY)
    assert start.status_code == 200 and start.headers["content-type"] == "image/png"
    moved = client.get("/console/frame.png", params={**q, "a": ["turn right", "go forward"]}, headers=KEY)
    frames, _ = replay_frames("BabyAI-GoToLocal-v0", 3, ["turn right", "go forward"])
    img = Image.fromarray(frames[-1])
    img.thumbnail((256, 256))
    assert np.array_equal(_png(moved.content), np.asarray(img)) and not np.array_equal(_png(start.content), _png(moved.content))
    for params, what in (({**q, "level": "BabyAI-Nope-v0"}, "unknown BabyAI level"),
                         ({**q, "a": ["fly"]}, "unknown BabyAI action 'fly'")):
        r = client.get("/console/frame.png", params=params, headers=KEY)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_frame" and what in r.json()["error"]["message"]
    assert client.get("/console/frame.png", params={**q, "seed": -1}, headers=KEY).status_code == 422


def test_a_non_editable_install_ships_every_console_file():
    globs = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["agent.console"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir()]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), (files, globs)
