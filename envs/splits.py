"""Disjoint train/test seed ranges, shared by the registry and the worlds that map seeds onto their own
task sets (BFCL entries, the tool world's value pools). Its own module so no world imports the registry."""
from __future__ import annotations

# Seeds are split by range so a held-out test seed can never appear in collection.
TRAIN_SEEDS = (0, 1_000_000_000)
TEST_SEEDS = (1_000_000_000, 2_000_000_000)


def seed_range(split: str) -> tuple[int, int]:
    if split == "train":
        return TRAIN_SEEDS
    if split == "test":
        return TEST_SEEDS
    raise ValueError(f"unknown split {split!r}: expected 'train' or 'test'")
