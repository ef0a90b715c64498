"""SFT samples from trajectory records, rendered by the agent's own prompt renderer.

Each episode becomes whole multi-turn conversations (one per history window); the loss covers
only the assistant's action tokens. Batches group samples of similar length under a token budget.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from agent.prompt import Turn, render_training_chunks
from training.tokenizer import ChatEncoder


@dataclass
class Sample:
    ids: list[int]
    labels: list[int]


def episode_conversations(episodes: list[list[dict]], action_names: list[str], window: int) -> list[list[dict]]:
    convs = []
    for ep in episodes:
        turns = [Turn(state=r["state"], feedback=r["prev_feedback"], action=r["action"]) for r in ep if r["action"]]
        if turns:
            convs.extend(render_training_chunks(ep[0]["request"], turns, action_names, window))
    return convs


def build_samples(convs: list[list[dict]], encoder: ChatEncoder, max_len: int) -> list[Sample]:
    samples = []
    for c in convs:
        ids, labels = encoder.encode(c)
        if len(ids) > max_len:  # the window keeps this rare; never train on a cut-off action
            ids, labels = ids[:max_len], labels[:max_len]
        if any(l != -100 for l in labels):
            samples.append(Sample(ids, labels))
    return samples


def make_batches(samples: list[Sample], tokens_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches of sample indices; order is a pure function of (seed, epoch),
    so a resumed run sees exactly the batches the interrupted one would have."""
    rng = random.Random(seed * 1000003 + epoch)
    order = list(range(len(samples)))
    rng.shuffle(order)
    # sort within large random pools: similar lengths batch together, padding stays small
    pool = 64 * max(1, tokens_per_batch // 256)
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(samples[i].ids))
        batch, longest = [], 0
        for i in chunk:
            n = len(samples[i].ids)
            if batch and max(longest, n) * (len(batch) + 1) > tokens_per_batch:
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, n)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(samples: list[Sample], idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(samples[i].ids) for i in idx)
    ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), n), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), n), dtype=torch.long)
    for row, i in enumerate(idx):
        s = samples[i]
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        labels[row, : len(s.labels)] = torch.tensor(s.labels)
        mask[row, : len(s.ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
