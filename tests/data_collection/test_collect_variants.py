"""Mission variants (data evolving): paraphrases and composed tasks, verified by minigrid itself."""
import gymnasium as gym
import pytest

from agent.episode import RunnerConfig, run_episode
from agent.policy_factory import build_policy
from data_collection.collector import CollectConfig, collect
from data_collection.store import TrajectoryStore, group_episodes
from envs.babyai import BABYAI_LEVELS, BabyAIEnv, replay
from envs.babyai_variants import COMPOSE_BASES, variant_name, variant_origin
from envs.base import Task
from envs.registry import get_env_spec


def test_variant_names_and_origin():
    assert variant_name("BabyAI-GoToLocal-v0", "then") == "LAM-GoToLocal-Then-v0"
    assert variant_origin("LAM-GoToLocal-Then-v0") == ("BabyAI-GoToLocal-v0", "then")
    assert variant_origin("BabyAI-GoToLocal-v0") == ("BabyAI-GoToLocal-v0", "")
    spec = get_env_spec("babyai")
    levels = spec.with_variants(["BabyAI-GoToLocal-v0", "BabyAI-BossLevel-v0"], ["paraphrase", "then"])
    # BossLevel has no single-clause mission to compose with, so it gets a paraphrase only
    assert levels == ["BabyAI-GoToLocal-v0", "BabyAI-BossLevel-v0", "LAM-GoToLocal-Paraphrase-v0",
                      "LAM-BossLevel-Paraphrase-v0", "LAM-GoToLocal-Then-v0"]
    with pytest.raises(ValueError, match="unknown variant 'twice'"):
        spec.with_variants(["BabyAI-GoToLocal-v0"], ["twice"])


def test_paraphrase_keeps_the_world_and_changes_only_the_words():
    env = BabyAIEnv()
    differs = 0
    for seed in range(10):
        base = env.reset(Task("babyai", "BabyAI-PickupLoc-v0", seed))
        para = env.reset(Task("babyai", "LAM-PickupLoc-Paraphrase-v0", seed))
        info = env.variant_info()
        assert para.state == base.state  # same layout, same view
        assert info == {"variant": "paraphrase", "base_level": "BabyAI-PickupLoc-v0", "base_request": base.request}
        differs += para.request != base.request
    assert differs == 10


@pytest.mark.parametrize("kind", ["then", "after", "and"])
def test_composed_tasks_are_solved_verified_and_replayable(kind):
    env = BabyAIEnv()
    policy = build_policy({"kind": "expert"}, on_crash="raise")
    for base in COMPOSE_BASES[:3]:
        level = variant_name(base, kind)
        for seed in range(3):
            ep = run_episode(env, policy, Task("babyai", level, seed), RunnerConfig(max_steps=1000))
            info = env.variant_info()
            assert ep.success, (level, seed, ep.end_reason, ep.error)
            assert info["base_request"] in ep.request and ep.request != info["base_request"]
            assert {"then": ", then ", "after": " after you ", "and": " and "}[kind] in ep.request
            assert replay(level, seed, [s.action for s in ep.steps])  # plain gym.make(level) verifies it


def test_composed_task_is_not_verified_by_the_first_clause_alone():
    env = BabyAIEnv()
    full = run_episode(env, build_policy({"kind": "expert"}, on_crash="raise"), Task("babyai", "LAM-GoToLocal-Then-v0", 4), RunnerConfig())
    base = run_episode(env, build_policy({"kind": "expert"}, on_crash="raise"), Task("babyai", "BabyAI-GoToLocal-v0", 4), RunnerConfig())
    base_actions = [s.action for s in base.steps if s.action != "done"]
    assert full.success and len(full.steps) > len(base_actions)
    assert not replay("LAM-GoToLocal-Then-v0", 4, base_actions)


def test_collect_with_variants_records_origin(tmp_path):
    out = tmp_path / "evolved"
    collect(CollectConfig(levels=["BabyAI-GoToLocal-v0"], variants=["paraphrase", "then"], episodes=30, workers=0,
                          out=str(out), shard_episodes=15), progress=False)
    eps = group_episodes(TrajectoryStore(out).read_records("train"))
    by_variant = {}
    for ep in eps:
        by_variant.setdefault(ep[0]["variant"], []).append(ep)
    assert set(by_variant) == {"", "paraphrase", "then"} and all(len(v) == 10 for v in by_variant.values())
    for ep in by_variant["then"]:
        r = ep[0]
        assert r["base_level"] == "BabyAI-GoToLocal-v0" and r["request"].startswith(r["base_request"] + ", then ")
        assert replay(r["level"], r["seed"], [x["action"] for x in ep])
    assert all(gym.spec(lvl) for lvl in BABYAI_LEVELS if lvl.startswith("LAM-"))
