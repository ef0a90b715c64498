"""The one rollout layer: collection and evaluation run on the same actor class, and self-boosting
attempts are written through the collector's store, ledger, de-duplication and card."""
import json
import sys

from ray import cloudpickle

from data_collection.attempts import collect_attempts
from data_collection.collector import CollectConfig, collect
from data_collection.fleet import RolloutActor
from data_collection.store import TrajectoryStore, group_episodes
from envs.registry import sample_tasks
from eval.evaluator import eval_fleet, run_units


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Ray actors cannot import a test module


def whoami(actor, chunk, attempt=0) -> dict:
    """Work that reports, from inside the Ray actor process, which class the actor is."""
    return {"is_rollout_actor": isinstance(actor, RolloutActor)}


def test_collection_and_evaluation_actors_are_the_one_rollout_actor(ray_local, tmp_path):
    seen = []

    def on_batch(stats, fleet):
        if not seen:
            seen.append(ray_local.get(fleet.actors[0].run.remote(whoami, [], 0)))

    collect(CollectConfig(episodes=4, workers=1, out=str(tmp_path / "ds"), shard_episodes=4), progress=False,
            on_batch=on_batch)
    pool = eval_fleet("babyai", {}, {"kind": "expert"}, workers=1)
    try:
        units = [(t, 0) for t in sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "test", 2)]
        stats = run_units("clean", "babyai", units, {"kind": "expert"}, {}, 1, tmp_path / "ev", progress=False,
                          pool=pool)
        assert stats["episodes_run"] == 2
        pool.submit(whoami, [])
        seen += [r for _, r in pool.wait(timeout=60)]
    finally:
        pool.close()
    assert len(seen) == 2 and all(s["is_rollout_actor"] for s in seen), seen


def test_self_boosting_attempts_write_ledger_card_and_drop_duplicates(tmp_path):
    tasks = sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "train", 6, base_seed=5)
    policies = [{"kind": "expert"}, {"kind": "expert"}, {"kind": "random", "seed": 3}]
    out = tmp_path / "boost" / "data"
    run = lambda: collect_attempts(out, "babyai", tasks, 3, policies.__getitem__, {"max_steps": 12},  # noqa: E731
                                   workers=0, batch=4)
    info = run()
    # the expert's second trial repeats its first exactly: counted as duplicates, not stored twice
    assert info["successes"] >= 6 and info["duplicates"] >= 6 and info["failures"] >= 1
    store = TrajectoryStore(out)
    batches = store.manifest()["batches"]
    assert len(batches) == 3 * 2  # the ledger: a batch never crosses a trial (6 tasks, batches of 4)
    assert sum(c["attempted"] for b in batches.values() for c in b["levels"].values()) == 18
    train = group_episodes(store.read_records("train"))
    assert len(train) == info["successes"] and all(ep[-1]["verified_success"] for ep in train)
    assert len({ep[0]["episode_hash"] for ep in train}) == len(train)
    assert all(ep[0]["episode_id"].startswith("trial") for ep in train)
    card = json.loads((out / "card.json").read_text())
    assert card["train_episodes"] == info["successes"] and card["failure_episodes"] == info["failures"]
    assert card["complete"] and (out / "README.md").exists()
    assert run() == info  # resumed: every batch is in the ledger, nothing runs again
    assert store.manifest()["batches"] == batches
