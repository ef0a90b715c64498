"""Prefix cache: KV of recently served token sequences, reused when a new prompt starts with one of them.

    python -c "from serving.prefix_cache import PrefixCache; print(PrefixCache.__doc__)"

An agent's prompt at step t is its prompt at step t-1 plus the action taken and one new observation, and a
grounding retry is the previous prompt plus the rejected output and the error. Without this cache every
request prefills its whole history again, which on CPU costs more than all of its decode steps. Like vLLM's
automatic prefix caching, sequences are matched in blocks of BLOCK tokens through chained block hashes, so a
lookup costs one dict probe per block. Eviction is least-recently-used under an entry and a byte budget.
Only the backend's worker thread uses it: no locking.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

BLOCK = 4  # tokens per hashed block: the granularity of reuse


class _Entry:
    __slots__ = ("ids", "kv", "nbytes", "keys")

    def __init__(self, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]):
        self.ids, self.kv = ids, kv
        self.nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        self.keys: list[int] = []  # block hashes registered for this entry


def _block_hashes(ids: list[int], blocks: int) -> list[int]:
    out, h = [], 0
    for b in range(blocks):
        h = hash((h, tuple(ids[b * BLOCK:(b + 1) * BLOCK])))
        out.append(h)
    return out


class PrefixCache:
    """LRU map from token prefixes (whole blocks) to per-layer K/V tensors [heads, tokens, dim]."""

    def __init__(self, max_bytes: int, max_entries: int = 256):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # id(entry) -> entry, oldest first
        self._by_hash: dict[int, _Entry] = {}
        self.nbytes = 0
        self.hit_tokens = self.lookup_tokens = 0  # for the hit rate reported in metrics

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every entry (the weights that computed them changed)."""
        self._entries.clear()
        self._by_hash.clear()
        self.nbytes = 0

    def lookup(self, ids: list[int]) -> tuple[list | None, int]:
        """(per-layer (K, V) of the longest cached prefix, its length); at least one token is left to prefill."""
        self.lookup_tokens += len(ids)
        best, matched = None, 0
        for b, h in enumerate(_block_hashes(ids, (len(ids) - 1) // BLOCK)):
            entry = self._by_hash.get(h)
            if entry is None:
                break
            best, matched = entry, (b + 1) * BLOCK
        if best is None or best.ids[:matched] != ids[:matched]:  # hash collision: treat as a miss
            return None, 0
        self._entries.move_to_end(id(best))
        self.hit_tokens += matched
        return [(k[:, :matched], v[:, :matched]) for k, v in best.kv], matched

    def store(self, ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Remember `kv` (per layer, [heads, len(ids), dim]) for `ids`; whole blocks only."""
        blocks = len(ids) // BLOCK
        if blocks == 0 or self.max_bytes <= 0:
            return
        n = blocks * BLOCK
        entry = _Entry(ids[:n], [(k[:, :n], v[:, :n]) for k, v in kv])
        if entry.nbytes > self.max_bytes:
            return
        entry.keys = _block_hashes(entry.ids, blocks)
        for h in entry.keys:  # the newest entry owns shared prefixes
            self._by_hash[h] = entry
        self._entries[id(entry)] = entry
        self.nbytes += entry.nbytes
        while self._entries and (self.nbytes > self.max_bytes or len(self._entries) > self.max_entries):
            self._evict(next(iter(self._entries.values())))

    def _evict(self, entry: _Entry) -> None:
        del self._entries[id(entry)]
        self.nbytes -= entry.nbytes
        for h in entry.keys:
            if self._by_hash.get(h) is entry:
                del self._by_hash[h]

    def clear(self) -> None:
        self._entries.clear()
        self._by_hash.clear()
        self.nbytes = 0
