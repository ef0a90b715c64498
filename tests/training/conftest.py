import pytest

from training.train import TrainConfig, train


@pytest.fixture(scope="session")
def trained(bot_dataset, tmp_path_factory):
    """A tiny model trained through the DeepSpeed engine on the session's bot dataset."""
    data, _ = bot_dataset
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(model="tiny", vocab_size=512, epochs=1.0, tokens_per_batch=2048, warmup_steps=5,
                      lr=3e-3, checkpoint_every=0, eval_fraction=0.1, threads=2)
    return out, train(str(data), str(out), cfg, progress=False)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """A few bot episodes collected in one plain process (no Ray): enough for a handful of training steps."""
    from data_collection.collector import CollectConfig, collect

    out = tmp_path_factory.mktemp("small") / "ds"
    collect(CollectConfig(episodes=24, workers=0, out=str(out), shard_episodes=24), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_hf_model(small_dataset, tmp_path_factory):
    """A model a user brings: the tiny Llama built from its config (untrained), saved as a Hugging Face dir
    with the project's tokenizer and chat template."""
    from data_collection.store import TrajectoryStore

    from training.model import build_model
    from training.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_hf") / "model"
    texts = [r.request + "\n" + r.state + "\n" + r.action for r in TrajectoryStore(small_dataset).read_rows("train")]
    tok = train_tokenizer(texts, vocab_size=400)
    build_model("tiny", vocab_size=len(tok), max_positions=1024, seed=1).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def pairs_dataset(tmp_path_factory):
    """Success/failure pairs on the same tasks: the BabyAI bot against a random policy."""
    from agent.episode import RunnerConfig, run_episode
    from agent.policies import ExpertPolicy, RandomPolicy
    from data_collection.schema import episode_rows
    from data_collection.store import TrajectoryStore
    from envs.babyai import BabyAIEnv
    from envs.registry import sample_tasks

    root = tmp_path_factory.mktemp("pairs") / "ds"
    env, good, bad = BabyAIEnv(), [], []
    for task in sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "train", 16, base_seed=9_100_000):
        g = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=8), episode_id=f"g{task.seed}")
        b = run_episode(env, RandomPolicy(seed=3), task, RunnerConfig(max_steps=8), episode_id=f"b{task.seed}")
        if g.success and not b.success:
            good += episode_rows(g)
            bad += episode_rows(b)
    store = TrajectoryStore(root)
    store.write_shard("train", "s", good)
    store.write_shard("failures", "f", bad)
    return root
