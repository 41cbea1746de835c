"""A preallocated KV cache written by slot: the fast engine's cache (gpt-fast's design, under HF's `Cache` API),
with one row per sequence of a batch.

Each layer holds K and V of shape (R, H_kv, capacity, D): R rows (sequences), allocated once and reused across
generations (their addresses never change while the shape holds, which CUDA graphs need). A forward of B rows and
n positions writes row b at slots [start[b], start[b] + n), where `start` is a (R,) device tensor the session sets
before the call; attention then reads rows 0..B-1 whole under an explicit (B, n, capacity) mask, so slots beyond a
row's committed length (rejected drafts, padding) are simply never visible and get overwritten later: no rollback
code, no realignment between rows of different lengths (vLLM's `num_computed_tokens -= num_rejected`). Keeping the
accepted tree paths of all rows is one gather + one scatter per layer (`keep`).

Only our own forwards use it, always with an explicit 4-D mask and explicit positions, so transformers never
derives a length from it (`get_seq_length` reports 0: the session, not the cache, tracks lengths); HF's
`StaticCache` is not used because its write index moved between 5.x releases (`cache_position` in 5.0, one counter
shared by all rows in 5.24) and it cannot write trees at different lengths per row on both.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotLayer(CacheLayerMixin):
    is_compileable = True

    def __init__(self, owner: SlotCache):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("SlotCache layers are allocated by SlotCache.load, before any forward")

    def allocate(self, like_keys: torch.Tensor, like_values: torch.Tensor, rows: int, capacity: int) -> None:
        old = (self.keys, self.values) if self.is_initialized else None
        shape = lambda t: (rows, t.shape[1], capacity, t.shape[-1])
        self.keys = torch.zeros(shape(like_keys), dtype=like_keys.dtype, device=like_keys.device)
        self.values = torch.zeros(shape(like_values), dtype=like_values.dtype, device=like_values.device)
        if old is not None:  # growing: what the rows hold stays
            r, c = min(rows, old[0].shape[0]), min(capacity, old[0].shape[2])
            self.keys[:r, :, :c].copy_(old[0][:r, :, :c])
            self.values[:r, :, :c].copy_(old[1][:r, :, :c])
        self.is_initialized = True
        torch._dynamo.mark_static_address(self.keys)
        torch._dynamo.mark_static_address(self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states (B, H_kv, n, D) -> row b's slots start[b] .. start[b]+n-1 of the (R, H_kv, capacity, D) buffers
        rows, heads, n, dim = key_states.shape
        slots = self.owner.start[:rows].to(self.keys.device)[:, None] + torch.arange(n, device=self.keys.device)
        index = slots[:, None, :, None].expand(rows, heads, n, dim)  # (B, H_kv, n, D)
        keys, values = self.keys[:rows], self.values[:rows]
        keys.scatter_(2, index, key_states)
        values.scatter_(2, index, value_states)
        return keys, values

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.owner.capacity, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.owner.capacity

    get_max_cache_shape = get_max_length  # its name before transformers 5.2x


class SlotCache(Cache):
    """`SlotCache(num_layers)`; `load(cache, row, length, rows, capacity)` copies a prefill's DynamicCache into one
    row (allocating or growing buffers of at least `rows` x `capacity` slots); `keep(prefix, sources)` moves each
    row's accepted entries down; `move_row(src, dst)` copies a row (a batch closing a gap)."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])
        self.capacity = 0
        self.rows = 0
        self.start: torch.Tensor | None = None  # (R,) long: slot of the next forward's first position, per row

    @torch.no_grad()
    def load(self, cache, row: int, length: int, rows: int, capacity: int) -> bool:
        """Copy the first `length` entries of every layer of `cache` (a filled batch-of-one DynamicCache) into row
        `row`, slots [0, length), growing the buffers to at least `rows` x `capacity` slots first (other rows keep
        what they hold; a session's model, so the heads, dtype and device, never change). Returns True when the
        buffers were (re)allocated, i.e. compiled steps must be rebuilt."""
        source = [(layer.keys, layer.values) for layer in cache.layers]
        fresh = not self.layers[0].is_initialized or self.capacity < capacity or self.rows < rows
        if fresh:
            self.capacity, self.rows = max(capacity, self.capacity), max(rows, self.rows)
            for layer, (keys, values) in zip(self.layers, source):
                layer.allocate(keys, values, self.rows, self.capacity)
            self.start = torch.zeros(self.rows, dtype=torch.long, device=source[0][0].device)
            torch._dynamo.mark_static_address(self.start)
        for layer, (keys, values) in zip(self.layers, source):
            layer.keys[row, :, :length].copy_(keys[0, :, :length])
            layer.values[row, :, :length].copy_(values[0, :, :length])
        return fresh

    @torch.no_grad()
    def grow(self, capacity: int) -> None:
        """Every row gets `capacity` slots, keeping what it holds (new buffers: compiled steps must be rebuilt)."""
        self.capacity = capacity
        for layer in self.layers:
            layer.allocate(layer.keys, layer.values, self.rows, capacity)

    @torch.no_grad()
    def keep(self, prefix: list[int], sources: list[list[int]]) -> None:
        """Row b's entries at slots `sources[b]` (host ints, all >= prefix[b], increasing) move to slots prefix[b],
        prefix[b] + 1, ...: per layer one gather and one indexed write for the whole batch (the gather reads before
        anything is written, so overlaps are safe). Rows whose lists are shorter copy slots onto themselves past
        their kept entries (harmless: beyond the row's new length)."""
        moves = [
            (b, p, list(src))
            for b, (p, src) in enumerate(zip(prefix, sources))
            if list(src) != list(range(p, p + len(src)))
        ]
        if not moves:
            return
        width = max(len(src) for _, _, src in moves)
        rows = [b for b, _, _ in moves]
        src = [s + [p + j for j in range(len(s), width)] for _, p, s in moves]
        dst = [[p + j for j in range(width)] for _, p, _ in moves]
        index = _on_devices(rows, src, dst)
        for layer in self.layers:
            row_index, src_index, dst_index = index(layer.keys.device)  # (k, 1), (k, w), (k, w)
            for buffer in (layer.keys, layer.values):
                buffer[row_index, :, dst_index] = buffer[row_index, :, src_index]  # (k, w, H_kv, D)

    @torch.no_grad()
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Row `src`'s first `length` slots become row `dst`'s (a batch moves its last row into a freed one)."""
        for layer in self.layers:
            layer.keys[dst, :, :length].copy_(layer.keys[src, :, :length])
            layer.values[dst, :, :length].copy_(layer.values[src, :, :length])


def _on_devices(rows: list[int], src: list[list[int]], dst: list[list[int]]):
    """(rows (k, 1), src (k, w), dst (k, w)) as long tensors on any device, copied there once (the layers of a
    `device_map` split may live on different devices)."""
    copies: dict = {}
    k, w = len(rows), len(src[0])
    host = torch.tensor(rows + [x for row in src + dst for x in row], dtype=torch.long, device="cpu")

    def on(device):
        if device not in copies:
            moved = host.to(device)
            copies[device] = (moved[:k, None], moved[k : k + k * w].reshape(k, w), moved[k + k * w :].reshape(k, w))
        return copies[device]

    return on
