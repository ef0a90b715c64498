"""The online RL phase's arithmetic (GRPO, Shao et al. 2024): rewards from the environment's verdict,
group-relative advantages, and the per-episode loss over its action tokens. training/rl.py runs the loop:

    lam rl --model runs/train/export --out runs/rl iterations=20 tasks_per_iter=16 group_size=4

A group is `group_size` episodes of the same task by the same weights. Its baseline is the group's mean
reward, its scale the group's standard deviation: A = (r - mean) / (std + eps). A group whose episodes all
earned the same reward (all solved, or all failed) has A = 0 for every episode and teaches nothing; the share
of groups that do teach (`informative_groups`) is the first number to read when the phase does not move.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from data_collection.schema import StepRow


def invalid_outputs(ep: list[StepRow]) -> int:
    """Outputs the runner could not ground or execute: retries plus steps left invalid (agent/episode.py's
    Episode.invalid_actions, from the stored rows)."""
    return sum(r.retries + (0 if r.valid else 1) for r in ep if r.step >= 0)


def episode_reward(ep: list[StepRow], invalid_penalty: float = 0.0) -> float:
    """The environment's verdict (1 solved, 0 not), less `invalid_penalty` per invalid output."""
    return float(bool(ep[-1].episode_success)) - invalid_penalty * invalid_outputs(ep)


def group_advantages(rewards: list[float], groups: list[str], eps: float = 1e-6) -> tuple[list[float], int, int]:
    """GRPO's advantages, one per episode; also (informative groups, groups). The std is the group's own
    (population) one, so a group of two with rewards 1 and 0 gives +1 and -1."""
    by: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by.setdefault(g, []).append(i)
    adv = [0.0] * len(rewards)
    informative = 0
    for idx in by.values():
        r = [rewards[i] for i in idx]
        mean = sum(r) / len(r)
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / len(r))
        if std <= eps:  # every episode as good as the others: no direction to push
            continue
        informative += 1
        for i in idx:
            adv[i] = (rewards[i] - mean) / (std + eps)
    return adv, informative, len(by)


def episode_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantage: float,
                 clip_eps: float, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode's loss over its action tokens (each 1-D, one entry per token), normalized by its tokens:
    the PPO-clipped surrogate -min(ratio A, clip(ratio) A), ratio = pi / pi_rollout, plus kl_coef times
    the k3 estimate of KL(pi || reference), exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased).
    On the first step of an iteration ratio = 1 and the gradient is that of -A logp. clip_eps <= 0: no clip.
    Returns (loss, kl, share of tokens clipped)."""
    import torch

    ratio = torch.exp(logp - old_logp)
    if clip_eps > 0:
        clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
        surrogate = torch.minimum(ratio * advantage, clipped * advantage)
        clip_frac = ((ratio - clipped).abs() > 1e-8).float().mean()
    else:
        surrogate, clip_frac = ratio * advantage, torch.zeros(())
    d = ref_logp - logp
    kl = (torch.exp(d) - d - 1).mean()
    return -surrogate.mean() + kl_coef * kl, kl.detach(), clip_frac.detach()
