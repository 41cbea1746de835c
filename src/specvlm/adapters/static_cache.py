"""A preallocated KV cache written by slot: the fast engine's cache (gpt-fast's design, under HF's `Cache` API).

Each layer holds K and V of shape (1, H_kv, capacity, D), allocated once and reused across generations (their
addresses never change, which CUDA graphs need). A forward of n rows writes them at slots [start, start + n),
where `start` is a 0-d device tensor the session sets before the call; attention then reads the whole buffer
under an explicit (n, capacity) mask, so rows beyond the committed length (rejected drafts, padding) are simply
never visible and get overwritten later: no rollback code. Keeping an accepted tree path is one gather + copy
per layer (`keep`).

Only our own forwards use it, always with an explicit 4-D mask and explicit positions, so transformers never
derives a length from it (`get_seq_length` reports 0: the session, not the cache, tracks lengths); HF's
`StaticCache` is not used because its write index moved between 5.x releases (`cache_position` in 5.0, an
internal counter in 5.24) and it cannot write a tree at arbitrary lengths on both.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class SlotLayer(CacheLayerMixin):
    is_compileable = True

    def __init__(self, owner: "SlotCache"):
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise RuntimeError("SlotCache layers are allocated by SlotCache.load, before any forward")

    def allocate(self, like_keys: torch.Tensor, like_values: torch.Tensor, capacity: int) -> None:
        shape = lambda t: (1, t.shape[1], capacity, t.shape[-1])  # noqa: E731
        self.keys = torch.zeros(shape(like_keys), dtype=like_keys.dtype, device=like_keys.device)
        self.values = torch.zeros(shape(like_values), dtype=like_values.dtype, device=like_values.device)
        self.is_initialized = True
        torch._dynamo.mark_static_address(self.keys)
        torch._dynamo.mark_static_address(self.values)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states (1, H_kv, n, D) -> slots start .. start+n-1 of the (1, H_kv, capacity, D) buffers
        slots = self.owner.start.to(self.keys.device) + torch.arange(key_states.shape[-2], device=self.keys.device)
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        return self.keys, self.values

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        return self.owner.capacity, 0

    def get_seq_length(self, *args, **kwargs) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.owner.capacity

    get_max_cache_shape = get_max_length   # its name before transformers 5.2x


class SlotCache(Cache):
    """`SlotCache(num_layers)`; `load(cache, length)` copies a prefill's DynamicCache in (allocating or reusing
    buffers of at least `capacity` slots); `keep(prefix, src)` moves entries `src` to `prefix, prefix + 1, ...`."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])
        self.capacity = 0
        self.start: torch.Tensor | None = None   # 0-d long: slot of the next forward's first row

    def fits(self, keys: torch.Tensor, capacity: int) -> bool:
        layer = self.layers[0]
        return (layer.is_initialized and self.capacity >= capacity and layer.keys.device == keys.device
                and layer.keys.dtype == keys.dtype and layer.keys.shape[1] == keys.shape[1])

    @torch.no_grad()
    def load(self, cache, length: int, capacity: int) -> bool:
        """Copy the first `length` entries of every layer of `cache` (a filled DynamicCache) into slots
        [0, length). Returns True when the buffers were (re)allocated, i.e. compiled steps must be rebuilt."""
        source = [(layer.keys, layer.values) for layer in cache.layers]
        fresh = not self.fits(source[0][0], capacity)
        if fresh:
            self.capacity = capacity
            for layer, (keys, values) in zip(self.layers, source):
                layer.allocate(keys, values, capacity)
            self.start = torch.zeros((), dtype=torch.long, device=source[0][0].device)
            torch._dynamo.mark_static_address(self.start)
        for layer, (keys, values) in zip(self.layers, source):
            layer.keys[:, :, :length].copy_(keys[:, :, :length])
            layer.values[:, :, :length].copy_(values[:, :, :length])
        return fresh

    @torch.no_grad()
    def keep(self, prefix: int, src: list[int]) -> None:
        """Entries at slots `src` (host ints, all >= prefix, increasing) move to slots prefix, prefix + 1, ...: one
        gather and one copy per layer (the gather reads before anything is written, so overlaps are safe)."""
        src = list(src)
        if src == list(range(prefix, prefix + len(src))):
            return
        index = _on_devices(src)
        dst = _on_devices(list(range(prefix, prefix + len(src))))
        for layer in self.layers:
            device = layer.keys.device
            layer.keys.index_copy_(2, dst(device), layer.keys.index_select(2, index(device)))
            layer.values.index_copy_(2, dst(device), layer.values.index_select(2, index(device)))


def _on_devices(values: list[int]):
    """values as a long tensor on any device, copied there once (layers of a `device_map` split differ)."""
    copies: dict = {}

    def on(device):
        if device not in copies:
            copies[device] = torch.tensor(values, dtype=torch.long, device=device)
        return copies[device]
    return on
