"""Experts behind one policy interface, and the fast bot path that must not change a single state."""
import json
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import gymnasium as gym
import numpy as np
import pytest
from minigrid.minigrid_env import MiniGridEnv
from minigrid.utils.baby_ai_bot import BabyAIBot

from agent.episode import RunnerConfig, run_episode
from agent.policy_factory import build_policy
from cluster.cli import main
from data_collection.collector import CollectConfig, CollectionError, collect
from data_collection.experts import load_gold
from data_collection.store import TrajectoryStore, group_episodes
from envs.babyai import ACTION_NAMES, BabyAIEnv
from envs.babyai_fast import FastBabyAIBot, fast_gen_obs
from envs.babyai_text import describe_object, render_view
from envs.base import Task

# Levels that exercise doors, keys, blockers, mazes, carrying and composed missions.
LEVELS = ["BabyAI-GoToLocal-v0", "BabyAI-BossLevel-v0", "BabyAI-KeyCorridorS3R3-v0", "BabyAI-UnblockPickup-v0",
          "BabyAI-PutNextLocal-v0", "BabyAI-UnlockPickup-v0", "BabyAI-MiniBossLevel-v0", "BabyAI-GoToObjMaze-v0"]


def test_fast_path_gives_minigrids_states_and_bot_actions_step_by_step():
    """Our env (fast obs + FastBabyAIBot) vs plain minigrid (stock gen_obs + stock BabyAIBot)."""
    env = BabyAIEnv()
    steps = 0
    for level in LEVELS:
        for seed in range(3):
            ep = run_episode(env, build_policy({"kind": "expert"}, on_crash="raise"), Task("babyai", level, seed), RunnerConfig(max_steps=500))
            g = gym.make(level)
            g.reset(seed=seed)
            u, bot, action = g.unwrapped, BabyAIBot(g), None
            for s in ep.steps:
                image = MiniGridEnv.gen_obs(u)["image"]
                assert np.array_equal(image, fast_gen_obs(u)["image"])
                carrying = describe_object(u.carrying.type, u.carrying.color, 0) if u.carrying else None
                assert render_view(image, u.agent_dir, carrying) == s.state, (level, seed, s.step)
                action = bot.replan(action)
                assert ACTION_NAMES[int(action)] == s.action, (level, seed, s.step)
                g.step(action)
                steps += 1
    assert steps > 300


def test_fast_bot_follows_random_detours_like_the_stock_bot():
    rng = np.random.default_rng(0)
    for level in ("BabyAI-GoToLocal-v0", "BabyAI-KeyCorridorS3R2-v0"):
        for seed in range(3):
            a, b = gym.make(level), gym.make(level)
            a.reset(seed=seed)
            obs, _ = b.reset(seed=seed)
            image = [obs["image"]]
            stock, fast = BabyAIBot(a), FastBabyAIBot(b, lambda: image[0])
            act_a = act_b = None
            for _ in range(60):
                act_a, act_b = stock.replan(act_a), fast.replan(act_b)
                assert act_a == act_b
                if rng.random() < 0.3:  # the agent ignores the advice
                    act_a = act_b = int(rng.integers(0, 6))
                _, _, term, trunc, _ = a.step(act_a)
                obs, *_ = b.step(act_b)
                image[0] = obs["image"]
                if term or trunc:
                    break


def test_gold_replay_reproduces_a_dataset(bot_dataset, tmp_path):
    src, _ = bot_dataset
    gold = load_gold(src)
    assert len(gold) == 240
    out = tmp_path / "replayed"
    stats = collect(CollectConfig(episodes=30, workers=0, out=str(out), shard_episodes=15,
                                  policy={"kind": "gold", "path": str(src)}), progress=False)
    assert stats["episodes"] == 30 and stats["failures"] == 0
    new = {e[0]["episode_id"]: e for e in group_episodes(TrajectoryStore(out).read_records("train"))}
    old = {e[0]["episode_id"]: e for e in group_episodes(TrajectoryStore(src).read_records("train"))}
    for eid, ep in new.items():
        assert ep[0]["policy"] == "scripted" and ep[0]["model"].startswith("gold replay of")
        assert [r["state"] for r in ep] == [r["state"] for r in old[eid]]
        assert [r["action"] for r in ep] == [r["action"] for r in old[eid]]
    jsonl = tmp_path / "gold.jsonl"
    jsonl.write_text(json.dumps({"task_id": "BabyAI-GoToLocal-v0/0", "actions": ["turn left"]}) + "\n{broken\n")
    with pytest.raises(ValueError, match=r"gold.jsonl:2"):
        load_gold(jsonl)


class _Stub(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint serving the model "stub", which always answers `turn left`
    (never solves anything)."""

    def answer(self) -> str:
        return "turn left"

    def do_GET(self):  # noqa: N802
        self._send({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": self.answer()}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _send(self, reply: dict) -> None:
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class _Walker(_Stub):
    """Random moves: in a 4x4 room (BabyAI-GoToObjS4-v0) that reaches the object about every second episode."""

    def answer(self) -> str:
        return random.choice(["turn left", "turn right", "go forward"])


def _serve(handler, port: int = 0) -> HTTPServer:
    server = HTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_model_policy_over_an_openai_endpoint_labels_its_failures(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    out = tmp_path / "model"
    try:
        with pytest.raises(CollectionError, match="only 0 of 5 unique verified episodes after 6 tasks"):
            collect(CollectConfig(episodes=5, workers=0, out=str(out), shard_episodes=3, max_steps=4, max_attempts=6,
                                  policy={"kind": "model", "base_url": url, "model": "stub", "api_key": "secret"}),
                    progress=False)
    finally:
        server.shutdown()
    store = TrajectoryStore(out)
    fails = group_episodes(store.read_records("failures"))
    assert len(fails) == 6 and all(e[0]["end_reason"] == "step_limit" for e in fails)
    assert all(r["policy"] == "model" and r["model"].startswith("stub @ http://127.0.0.1") for e in fails for r in e)
    assert all(r["raw_output"] == "turn left" for e in fails for r in e)
    assert "secret" not in (out / "manifest.json").read_text()


# issue 21 item 2
def test_a_dead_model_url_or_an_unknown_model_is_refused_up_front(tmp_path, capsys):
    dead = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    args = ["collect", "--policy", "model", "--episodes", "2", "--max-attempts", "3", "--workers", "0", "--no-progress"]
    t0 = time.perf_counter()
    assert main(args + ["--model-url", dead, "--model", "stub", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"model endpoint {dead} is unreachable" in err and "--model-url" in err
    assert time.perf_counter() - t0 < 10 and not (tmp_path / "a").exists()  # at once, nothing written
    server = _serve(_Stub)
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        assert main(args + ["--model-url", url, "--model", "nope", "--out", str(tmp_path / "b")]) == 2
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert "model 'nope' is not served" in err and "served: stub" in err and not (tmp_path / "b").exists()


# issue 21 item 2
def test_collection_stops_when_the_model_server_dies_and_resumes_when_it_is_back(tmp_path):
    server = _serve(_Walker)
    port = server.server_port
    out = tmp_path / "ds"
    cfg = CollectConfig(levels=["BabyAI-GoToObjS4-v0"], episodes=30, workers=0, out=str(out), shard_episodes=10,
                        max_steps=20, policy={"kind": "model", "base_url": f"http://127.0.0.1:{port}/v1",
                                              "model": "stub", "retries": 0})

    def kill(stats, fleet):  # the server dies after the first batch was written
        server.shutdown()
        server.server_close()

    t0 = time.perf_counter()
    with pytest.raises(CollectionError, match="the model server failed 8 episodes in a row") as e:
        collect(cfg, progress=False, on_batch=kill)
    assert "unreachable" in str(e.value) and "--resume" in str(e.value)
    assert time.perf_counter() - t0 < 30  # not thousands of attempts
    store = TrajectoryStore(out)
    batches = store.manifest()["batches"]
    assert list(batches) == ["shard-0000000000"] and batches["shard-0000000000"]["end_index"] == 10
    held = len(group_episodes(store.read_records("train")))  # what was written is intact
    assert 0 < held < 30
    server = _serve(_Walker, port)  # back on the same address
    try:
        stats = collect(cfg, resume=True, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert stats["kept"] == 30 and stats["kept_this_run"] == 30 - held
    eps = group_episodes(store.read_records("train"))
    assert len(eps) == len({e[0]["episode_id"] for e in eps}) == 30
    assert sorted(b["first_index"] for b in store.manifest()["batches"].values())[:2] == [0, 10]  # no hole
