"""Rebuilding a session from its record (agent/session_rebuild.py, agent/session_host.py), in process:
every rebuildable world comes back with the conversation and memory an uninterrupted run has, and any
mismatch (a digest, an action, an environment that cannot be rebuilt) is a divergence naming the step.

    python -m pytest -q tests/agent/test_session_rebuild.py
"""
import copy
import json
import subprocess
import sys

import pytest

from agent.session_host import SessionHost, SessionSpec
from envs.base import Task, digest, rebuildable

WORLDS = [("babyai", "BabyAI-GoToLocal-v0", 3, "test"), ("bfcl", "multi_turn_base", 5, "all"),
          ("toolworld", "L3", 7, "test")]
MEMORY = {"memory": {"short_term_k": 3}}  # short-term memory is part of what must come back


def _spec(env, level, seed, split, policy=None, runner=None) -> SessionSpec:
    return SessionSpec(env, {"env": env, "level": level, "seed": seed, "split": split},
                       policy or {"kind": "expert"}, runner or dict(MEMORY))


def _record(spec: SessionSpec, n: int):
    """n steps on a fresh host: (steps as the store keeps them, digests, the host still holding it)."""
    host = SessionHost()
    if not host.open("s", spec)["ok"]:
        raise AssertionError("open failed")
    steps, digests = [], []
    for _ in range(n):
        out = host.advance("s")
        steps.append(json.loads(json.dumps(out["log"], default=str)))
        digests.append(out["digest"])
    return steps, digests, host


def _open_or_skip(env):
    from envs.registry import make_env

    try:
        make_env(env).close()
    except ImportError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("env, level, seed, split", WORLDS)
def test_rebuilt_session_continues_exactly_like_an_uninterrupted_one(env, level, seed, split):
    _open_or_skip(env)
    spec = _spec(env, level, seed, split)
    steps, digests, original = _record(spec, 2)
    assert all(digests) and len(set(digests)) == 2  # one digest per step, and the state changed
    rebuilt = SessionHost()
    assert rebuilt.rebuild("s", spec, steps, digests) is None
    a, b = original.advance("s"), rebuilt.advance("s")  # the third step, uninterrupted vs rebuilt
    assert b["log"]["messages"] == a["log"]["messages"] and b["log"]["memory"] == a["log"]["memory"] != ""
    assert (b["log"]["action"], b["log"]["feedback"], b["digest"]) == (a["log"]["action"], a["log"]["feedback"],
                                                                      a["digest"])
    while not a["finished"]:
        a, b = original.advance("s"), rebuilt.advance("s")
        assert b["digest"] == a["digest"]
    ea, eb = original.finish("s"), rebuilt.finish("s")
    assert eb.success == ea.success and eb.end_reason == ea.end_reason and len(eb.steps) == len(ea.steps)
    assert [s.latency_s for s in eb.steps[:2]] == [s["latency_s"] for s in steps]  # the transcript as recorded


@pytest.mark.parametrize("tamper, step, reason", [
    (lambda steps, digests: digests.__setitem__(1, "0" * 16), 1, "state digest"),
    (lambda steps, digests: steps[1].__setitem__("raw_output", "drop"), 1, "policy now answers"),
    (lambda steps, digests: steps[0].__setitem__("feedback", "you flew"), 0, "feedback"),
    (lambda steps, digests: steps[1].__setitem__("state", "elsewhere"), 1, "observation before step 1"),
])
def test_a_record_that_does_not_come_back_is_a_divergence_naming_the_step(tamper, step, reason):
    spec = _spec("babyai", "BabyAI-GoToLocal-v0", 3, "test")
    steps, digests, _ = _record(spec, 2)
    steps, digests = copy.deepcopy(steps), list(digests)
    tamper(steps, digests)
    host = SessionHost()
    diverged = host.rebuild("s", spec, steps, digests)
    assert diverged is not None and diverged.step == step and reason in diverged.reason, diverged
    assert host.live() == []


def test_a_model_policy_is_not_asked_again_and_its_outputs_come_back():
    """A model's recorded outputs (garbage included: its retries) are replayed without a server."""
    spec = _spec("babyai", "BabyAI-GoToLocal-v0", 3, "test", {"kind": "scripted", "actions": ["%%%", "go forward"]})
    steps, digests, _ = _record(spec, 2)
    model = _spec("babyai", "BabyAI-GoToLocal-v0", 3, "test",
                  {"kind": "model", "base_url": "http://127.0.0.1:9/v1", "model": "m"})  # nothing listens there
    host = SessionHost()
    assert host.rebuild("s", model, steps, digests) is None
    assert host.runners["s"].step_index == 2 and not steps[0]["valid"] and steps[1]["valid"]


def test_an_environment_that_does_not_declare_it_can_be_rebuilt_is_refused():
    from agent.episode import EpisodeRunner, RunnerConfig
    from agent.policies import ExpertPolicy
    from agent.session_rebuild import rebuild
    from envs.babyai import BabyAIEnv

    class Opaque(BabyAIEnv):
        rebuildable = False

    runner = EpisodeRunner(Opaque(), ExpertPolicy(), Task("babyai", "BabyAI-GoToLocal-v0", 3, "test"), RunnerConfig())
    assert not rebuildable(runner.env)
    diverged = rebuild(runner, [], [])
    assert diverged.step == 0 and "does not declare" in diverged.reason


_DIGESTS = """
import json, sys
from agent.policies import ExpertPolicy
from agent.episode import EpisodeRunner, RunnerConfig
from envs.base import Task
from envs.registry import make_env
out = {}
for env, level, seed, split in json.loads(sys.argv[1]):
    try:
        e = make_env(env)
    except ImportError:
        continue
    r = EpisodeRunner(e, ExpertPolicy(), Task(env, level, seed, split), RunnerConfig())
    r.start()
    out[env] = [r.advance() and e.state_digest() for _ in range(2)]
print(json.dumps(out))
"""


def test_state_digests_are_the_same_in_another_process():
    """A restart compares digests made by a process that is gone: they must not depend on the process
    (object addresses, hash seeds, set order)."""
    run = lambda: json.loads(subprocess.run([sys.executable, "-c", _DIGESTS, json.dumps(WORLDS)], check=True,  # noqa: E731
                                            capture_output=True, text=True, env={"PYTHONHASHSEED": "random",
                                                                                 **__import__("os").environ}).stdout)
    first, second = run(), run()
    assert first == second and first["babyai"][0] != first["babyai"][1]
    assert digest({"a": 1, "b": [2]}) == digest({"b": [2], "a": 1}) != digest({"a": 1, "b": [3]})
