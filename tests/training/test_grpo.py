"""The online RL phase's arithmetic (training/grpo.py) on real BabyAI episodes and a tiny model built from config.

    PYTHONPATH=$PWD .venv/bin/python -m pytest tests/training/test_grpo.py -q
"""
from __future__ import annotations

import pytest
import torch

from agent.episode import RunnerConfig, run_episode
from agent.policies import ExpertPolicy, RandomPolicy
from data_collection.schema import StepRow, episode_rows
from envs.babyai import BabyAIEnv
from envs.registry import sample_tasks
from training.grpo import episode_loss, episode_reward, group_advantages, invalid_outputs


def test_group_baseline_equal_rewards_teach_nothing():
    adv, informative, groups = group_advantages([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
                                                ["a", "a", "b", "b", "c", "c", "c", "c"])
    assert adv[:4] == [0.0, 0.0, 0.0, 0.0]  # all solved / all failed: no direction
    assert (informative, groups) == (1, 3)
    assert adv[4] == pytest.approx(3 ** 0.5, rel=1e-4)  # (1 - 1/4) / sqrt(3/16)
    assert adv[5] == adv[6] == adv[7] == pytest.approx(-(1 / 3) ** 0.5, rel=1e-4)
    assert sum(adv[4:]) == pytest.approx(0.0, abs=1e-5)  # a baseline: the group's advantages cancel
    pair, _, _ = group_advantages([1.0, 0.0], ["t", "t"])
    assert pair == pytest.approx([1.0, -1.0], rel=1e-4)


def test_reward_is_the_verdict_less_the_invalid_penalty():
    ep = [StepRow(step=0, valid=True, retries=1), StepRow(step=1, valid=False, retries=2, episode_success=True)]
    assert invalid_outputs(ep) == 4  # 1 retry, then 2 retries and the step left invalid
    assert episode_reward(ep) == 1.0
    assert episode_reward(ep, invalid_penalty=0.05) == pytest.approx(0.8)
    assert episode_reward([StepRow(step=0)], 0.05) == 0.0


def test_kl_is_zero_at_the_reference_and_positive_away_from_it():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.9]))
    loss, kl, clip = episode_loss(logp, logp, logp, advantage=1.0, clip_eps=0.2, kl_coef=0.1)
    assert float(kl) == 0.0 and float(clip) == 0.0
    assert float(loss) == pytest.approx(-1.0)  # ratio 1: -A
    _, kl, _ = episode_loss(logp, logp, logp - 0.3, advantage=0.0, clip_eps=0.2, kl_coef=0.1)
    assert float(kl) > 0


def test_the_clip_stops_the_push_past_the_trust_region():
    old = torch.log(torch.tensor([0.2, 0.2]))
    logp = (old + torch.tensor([0.5, 0.0])).requires_grad_(True)  # token 0: ratio e^0.5 > 1.2
    loss, _, clip = episode_loss(logp, old, old, advantage=1.0, clip_eps=0.2, kl_coef=0.0)
    loss.backward()
    assert float(clip) == 0.5
    assert logp.grad[0] == 0.0 and logp.grad[1] < 0  # the clipped token gets no more push; the other does


@pytest.fixture(scope="module")
def episodes():
    """A bot success and a random failure on the same BabyAI task, as stored rows."""
    env = BabyAIEnv()
    for task in sample_tasks("babyai", ["BabyAI-GoToLocal-v0"], "train", 20, base_seed=9_200_000):
        g = run_episode(env, ExpertPolicy(), task, RunnerConfig(max_steps=8), episode_id=f"g{task.seed}")
        b = run_episode(env, RandomPolicy(seed=3), task, RunnerConfig(max_steps=8), episode_id=f"b{task.seed}")
        if g.success and not b.success:
            return episode_rows(g), episode_rows(b)
    raise AssertionError("no success/failure pair in 20 tasks")


def test_the_gradient_raises_a_rewarded_episode_and_lowers_a_failed_one(tiny_hf_model, episodes):
    """One SGD step on the loss (A = +1 for the success, -1 for the failure) moves each episode's
    action log-probability the way its advantage says, while the KL to the reference grows from 0."""
    from training.dpo import action_logps, frozen_copy
    from training.model import ActionLoss, build_model
    from training.samples import build_samples, episode_conversations
    from training.tokenizer import ChatEncoder, load_tokenizer

    tok = load_tokenizer(tiny_hf_model)
    enc = ChatEncoder(tok)
    torch.manual_seed(0)
    for ep, adv in ((episodes[0], 1.0), (episodes[1], -1.0)):
        policy = ActionLoss(build_model(str(tiny_hf_model), len(tok)))
        reference = frozen_copy(policy)
        samples = build_samples(episode_conversations([ep]), enc, 1024)
        assert samples, "the episode must have learnable actions"
        with torch.no_grad():
            before = action_logps(policy, samples, tok.pad_token_id, "cpu")
            ref = action_logps(reference, samples, tok.pad_token_id, "cpu")
        opt = torch.optim.SGD(policy.parameters(), lr=0.05)
        lp = action_logps(policy, samples, tok.pad_token_id, "cpu")
        loss, kl, _ = episode_loss(lp, before, ref, adv, clip_eps=0.2, kl_coef=0.1)
        assert float(kl) == pytest.approx(0.0, abs=1e-6)  # policy == reference
        loss.backward()
        opt.step()
        with torch.no_grad():
            after = action_logps(policy, samples, tok.pad_token_id, "cpu")
            _, kl_after, _ = episode_loss(after, before, ref, adv, 0.2, 0.1)
        moved = float(after.sum() - before.sum())
        assert moved * adv > 0, (adv, float(before.sum()), float(after.sum()))
        assert float(kl_after) > 0


def test_one_iterations_update_widens_the_gap_between_the_rewarded_and_the_failed_episode(tiny_hf_model, episodes):
    """training/rl.py's update through the DeepSpeed engine: one optimizer step per episode (the second one's
    `old` log-probs are the rollout weights', computed before the first step)."""
    from training.dpo import action_logps, frozen_copy, optimizer_engine
    from training.model import ActionLoss, build_model
    from training.rl import RLConfig, update
    from training.samples import build_samples, episode_conversations
    from training.tokenizer import ChatEncoder, load_tokenizer
    from training.train import _setup_dist

    _setup_dist()
    tok = load_tokenizer(tiny_hf_model)
    enc = ChatEncoder(tok)
    policy = ActionLoss(build_model(str(tiny_hf_model), len(tok)))
    reference = frozen_copy(policy)
    engine = optimizer_engine(policy, 1e-4, 0, 1)
    cfg = RLConfig(episodes_per_step=1, clip_eps=0.2, kl_coef=0.05)

    def gap() -> float:
        with torch.no_grad():
            good, bad = (action_logps(policy, build_samples(episode_conversations([ep]), enc, 1024),
                                      tok.pad_token_id, "cpu").mean() for ep in episodes)
        return float(good - bad)

    before = gap()
    stats = update(engine, reference, list(episodes), [1.0, -1.0], enc, tok.pad_token_id, cfg, it=1)
    assert stats["steps"] == 2 and stats["episodes_trained"] == 2
    assert stats["kl"] > 0 and 0.0 <= stats["clip_frac"] <= 1.0  # the second episode was scored after a step
    assert gap() > before
    assert update(engine, reference, list(episodes), [0.0, 0.0], enc, tok.pad_token_id, cfg, it=2)["steps"] == 0
