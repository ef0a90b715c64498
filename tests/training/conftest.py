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
