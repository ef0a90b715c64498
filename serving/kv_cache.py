"""The running batch's KV cache: preallocated per-layer slabs that rows join, leave and are copied out of.

    python -c "from serving.kv_cache import SlabLayer; print(SlabLayer.__doc__)"

transformers' DynamicLayer appends a decode step with `torch.cat`, copying the KV history of every row at
every step, and joining or dropping rows that way copies the whole batch again; on CPU those copies were
most of a 32-row decode step. A SlabLayer keeps K and V in [row slots, heads, columns, dim] buffers that
grow geometrically: a decode step writes one column in place, a newcomer is written into free row slots, a
finished row is replaced by the last row (only that row moves), and `keys`/`values` are views of the
filled part. Rows are right-aligned: every row's newest token is in the last column, and the attention mask
kept by the caller marks padding columns, which may sit anywhere (they hold zeros, never garbage). Decode
attention skips most of that padding (serving/decode_attention.py).
"""
from __future__ import annotations

import torch
from transformers.cache_utils import CacheLayerMixin, DynamicCache, DynamicLayer

MIN_GROWTH = 64  # columns added at least when a slab is full


class SlabLayer(CacheLayerMixin):
    """One attention layer's KV for the running batch (see the module docstring).

    The filled part is `_k[:rows, :, start:start + length]`; columns left of `start` are slack, so trimming
    leading padding and taking it back for a newcomer with a longer prompt both cost nothing.
    """

    is_sliding = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor | None = None, values: torch.Tensor | None = None, length: int = 0):
        self.is_initialized = keys is not None
        self._k, self._v, self.start, self.length = keys, values, 0, length
        self.rows = 0 if keys is None else keys.shape[0]
        # Set around a packed forward (serving/embedded.py): (decoding rows, [(row, first token, tokens), ...]).
        self.scatter: tuple[int, list[tuple[int, int, int]]] | None = None
        self.extended = False  # this packed step added its column (see rollback)

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:self.rows, :, self.start:self.start + self.length]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:self.rows, :, self.start:self.start + self.length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._k = key_states.new_zeros((*key_states.shape[:2], 0, key_states.shape[3]))
        self._v = value_states.new_zeros((*value_states.shape[:2], 0, value_states.shape[3]))
        self.rows, self.start, self.length, self.is_initialized = key_states.shape[0], 0, 0, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.scatter is not None:
            return self._update_packed(key_states, value_states)
        new = key_states.shape[2]
        if self.start + self.length + new > self._k.shape[2]:  # a prefill's own cache gets no spare room
            spare = max(MIN_GROWTH, (self.length + new) // 2) if self.length else 0
            self._realloc(self._k.shape[0], self.start, new + spare)
        lo = self.start + self.length
        self._k[:self.rows, :, lo:lo + new] = key_states
        self._v[:self.rows, :, lo:lo + new] = value_states
        self.length += new
        return self.keys, self.values

    def _update_packed(self, key_states: torch.Tensor, value_states: torch.Tensor):
        """A packed step ([1, heads, tokens, dim]): one new column for every row; the first `decode` tokens
        are the next token of rows [0, decode), then each prompt (row, first token, tokens) fills its row's
        last columns. Every row gets the new column."""
        decode, prompts = self.scatter
        if self.start + self.length + 1 > self._k.shape[2]:
            self._realloc(self._k.shape[0], self.start, max(MIN_GROWTH, (self.length + 1) // 2))
        self.length += 1
        self.extended = True
        end = self.start + self.length
        for buf, new in ((self._k, key_states[0]), (self._v, value_states[0])):
            if decode:
                buf[:decode, :, end - 1] = new[:, :decode].transpose(0, 1)
            for row, t0, n in prompts:
                buf[row, :, end - n:end] = new[:, t0:t0 + n]
        return self.keys, self.values

    def _realloc(self, rows: int, left: int, right: int) -> None:
        """New zeroed buffers with `rows` slots and `left` / `right` free columns around the filled part."""
        old_k, old_v, old = self.keys, self.values, self.rows
        self._k = old_k.new_zeros((rows, old_k.shape[1], left + self.length + right, old_k.shape[3]))
        self._v = old_v.new_zeros((rows, old_v.shape[1], left + self.length + right, old_v.shape[3]))
        self._k[:old, :, left:left + self.length], self._v[:old, :, left:left + self.length] = old_k, old_v
        self.start = left

    def _make_room(self, n: int, width: int) -> None:
        """Room for `n` more rows right-aligned over `width` columns: the view grows left (existing rows get
        zero padding) and the buffers are reallocated when the slack or the row slots run out."""
        if self.rows == 0:  # empty: the view will be centred, leaving room for wider newcomers and decode steps
            self.start, self.length = min(self._k.shape[2], (self._k.shape[2] + width) // 2), 0
        grow = max(0, width - self.length)  # columns the view must extend to the left
        slots = self._k.shape[0]
        if grow > self.start or self.rows + n > slots:
            right = self._k.shape[2] - self.start - self.length
            slack = max(MIN_GROWTH, width // 2)
            slots = slots if self.rows + n <= slots else max(self.rows + n, 2 * slots)
            self._realloc(slots, grow + slack, max(right, slack))
        if grow:
            self.start -= grow
            self.length += grow
            self._k[:self.rows, :, self.start:self.start + grow] = 0  # slack may hold trimmed columns
            self._v[:self.rows, :, self.start:self.start + grow] = 0

    def append_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows ([rows, heads, width, dim], right-aligned) after the current ones."""
        n, width = keys.shape[0], keys.shape[2]
        self._make_room(n, width)
        lo, hi = self.rows, self.rows + n
        pad, end = self.start + self.length - width, self.start + self.length
        self._k[lo:hi, :, self.start:pad], self._v[lo:hi, :, self.start:pad] = 0, 0  # a departed row's data
        self._k[lo:hi, :, pad:end], self._v[lo:hi, :, pad:end] = keys, values
        self.rows = hi

    def add_rows(self, prefixes: list, widths: list[int]) -> None:
        """Add rows for a packed step: row j is right-aligned over widths[j] columns and starts with
        prefixes[j] ((K, V) of shape [heads, m, dim], or None); the step writes the columns after the prefix,
        and the padding left of the row is zeroed."""
        self._make_room(len(widths), max(widths))
        lo, end = self.rows, self.start + self.length
        for j, (prefix, width) in enumerate(zip(prefixes, widths)):
            c = end - width
            self._k[lo + j, :, self.start:c], self._v[lo + j, :, self.start:c] = 0, 0  # a departed row's data
            if prefix is not None:
                k, v = prefix
                self._k[lo + j, :, c:c + k.shape[1]], self._v[lo + j, :, c:c + v.shape[1]] = k, v
        self.rows = lo + len(widths)

    def keep_rows(self, keep: list[int]) -> list[int]:
        """Keep the rows `keep`, filling the gaps with rows from the end; returns the new order (old indices)."""
        order = list(range(self.rows))
        gaps = sorted(set(range(len(keep))) - set(keep))
        movers = [i for i in keep if i >= len(keep)]
        lo, hi = self.start, self.start + self.length
        for gap, i in zip(gaps, movers):
            self._k[gap, :, lo:hi], self._v[gap, :, lo:hi] = self._k[i, :, lo:hi], self._v[i, :, lo:hi]
            order[gap] = i
        self.rows = len(keep)
        return order[:self.rows]

    def rollback(self, rows: int, length: int) -> None:
        """Undo a failed packed step: back to the first `rows` rows and their `length` columns (the newest ones
        but the column the step added, if it got that far)."""
        end = self.start + self.length - (1 if self.extended else 0)
        self.rows, self.start, self.length, self.extended = rows, end - length, length, False

    def drop_left(self, columns: int) -> None:
        """Forget the first `columns` columns (padding no remaining row needs); they become slack."""
        self.start += columns
        self.length -= columns

    def get_mask_sizes(self, query_length) -> tuple[int, int]:
        # Recent transformers pass the query length; earlier 5.x releases the cache_position tensor.
        return self.length + (query_length if isinstance(query_length, int) else query_length.shape[0]), 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # the abstract method's name in earlier transformers releases

    def reset(self) -> None:
        self._k = self._v = None
        self.rows = self.start = self.length = 0
        self.is_initialized = False

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[:self.rows][indices], self._v[:self.rows][indices]
        self.rows = self._k.shape[0]


def new_cache(config) -> DynamicCache:
    """An empty cache for `config`: slab layers when every layer is plain full attention, else transformers'."""
    cache = DynamicCache(config=config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [SlabLayer() for _ in cache.layers]
    return cache


def is_slab_config(config) -> bool:
    """Whether `new_cache(config)` gives slab layers."""
    try:
        layers = new_cache(config).layers
    except Exception:  # a config DynamicCache cannot lay out: the model builds its own cache
        return False
    return bool(layers) and all(isinstance(layer, SlabLayer) for layer in layers)


def is_slab(cache) -> bool:
    """Only slab caches can be merged, trimmed, seeded from prefixes and copied out of."""
    return (isinstance(cache, DynamicCache) and len(cache.layers) > 0
            and all(isinstance(layer, SlabLayer) and layer.is_initialized for layer in cache.layers))


def from_prefixes(config, prefixes: list, width: int, extra: int):
    """A slab cache whose row i holds prefixes[i] (per-layer (K, V) of shape [heads, m_i, dim], or None),
    right-aligned in `width` columns with zeros on the left; `extra` columns are reserved for the prefill."""
    cache = new_cache(config)
    like = next(p for p in prefixes if p is not None)
    for li in range(len(cache.layers)):
        k0, v0 = like[li]
        k = k0.new_zeros((len(prefixes), k0.shape[0], width + extra, k0.shape[2]))
        v = v0.new_zeros((len(prefixes), v0.shape[0], width + extra, v0.shape[2]))
        for i, p in enumerate(prefixes):
            if p is not None:
                m = p[li][0].shape[1]
                k[i, :, width - m:width], v[i, :, width - m:width] = p[li]
        cache.layers[li] = SlabLayer(k, v, width)
    return cache


def empty_batch(cache, rows: int, columns: int):
    """An empty slab cache shaped like slab cache `cache`, with room for `rows` rows of `columns` columns:
    the running batch's cache, allocated once and reused while the server is up."""
    out = DynamicCache()
    out.layers = []
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        slab = SlabLayer(k.new_zeros((rows, k.shape[1], columns, k.shape[3])),
                         v.new_zeros((rows, v.shape[1], columns, v.shape[3])))
        slab.rows = 0
        out.layers.append(slab)
    return out


def merge(cache_a, mask_a: torch.Tensor | None, cache_b, mask_b: torch.Tensor):
    """Add batch b's rows after batch a's (both slab caches; a may be empty, with mask None);
    returns (cache_a, merged mask)."""
    for la, lb in zip(cache_a.layers, cache_b.layers):
        la.append_rows(lb.keys, lb.values)
    width = cache_a.layers[0].length
    if mask_a is None:
        mask_a = mask_b.new_zeros((0, width))

    def lpad(m: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.new_zeros((m.shape[0], width - m.shape[1])), m], dim=1) if m.shape[1] < width else m

    return cache_a, torch.cat([lpad(mask_a), lpad(mask_b)], dim=0)


def snapshot(cache) -> list[tuple[int, int]]:
    """Rows and columns of each layer, to `rollback` a packed step that failed."""
    for layer in cache.layers:
        layer.extended = False
    return [(layer.rows, layer.length) for layer in cache.layers]


def rollback(cache, snap: list[tuple[int, int]]) -> None:
    for layer, (rows, length) in zip(cache.layers, snap):
        layer.rollback(rows, length)


def clear(cache) -> None:
    """Drop every row, keeping the buffers for the next batch."""
    for layer in cache.layers:
        layer.rows = layer.length = 0


def keep_rows(cache, keep: list[int]) -> list[int]:
    """Drop every row not in `keep` from a slab cache; returns the new row order as old row indices."""
    order = []
    for layer in cache.layers:
        order = layer.keep_rows(keep)
    return order


def row_kv(cache, row: int, columns: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Copies of one row's K and V at the given columns, per layer: [(K [heads, n, dim], V), ...]."""
    lo, hi = int(columns[0]), int(columns[-1]) + 1
    if hi - lo == len(columns):  # no padding inside the row (the usual case): a slice, not a gather
        columns = slice(lo, hi)
    return [(layer.keys[row][:, columns].clone(), layer.values[row][:, columns].clone()) for layer in cache.layers]
