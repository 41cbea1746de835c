"""One model's decoding state: its adapter, its own KV cache, and where the next committed token sits.

Committed token i of a session sits at cache index i and position i + offset, where the offset is fixed at
prefill (Qwen's rope delta; for a pruned draft prompt, the tokens it dropped). Tree nodes share positions by
depth: a node at depth d below a root at position P sits at P + d.
"""

from __future__ import annotations

import torch

from .adapters import Prompt, VLMAdapter, keep_cache_entries
from .tree import additive_mask


class ModelSession:
    def __init__(self, adapter: VLMAdapter):
        self.adapter = adapter
        self.cache = adapter.new_cache()
        self.length = 0      # entries in the cache
        self.offset = 0      # position of cache entry i is i + offset
        self.forwards = 0

    @property
    def next_position(self) -> int:
        return self.length + self.offset

    def prefill(self, prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, V) after the prompt, and the prompt's hidden states (L, H)."""
        logits, hidden = self.adapter.forward(prompt.embeds, prompt.positions, self.cache, last_only=True)
        self.forwards += 1
        self.length = len(prompt)
        self.offset = prompt.next_position - len(prompt)
        return logits, hidden

    def extend(self, ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor | None = None,
               prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append tokens `ids` (n,) at 1-D `positions` (n,). Without `visible` they attend causally; with it, row r
        sees the first `prefix` cache entries plus the entries after them that `visible[r]` marks."""
        mask = None
        if visible is not None and not _is_causal(visible):
            mask = additive_mask(visible, prefix, self.adapter.dtype, self.adapter.device)
        logits, hidden = self.adapter.forward(self.adapter.embed(ids), self.adapter.positions(positions),
                                              self.cache, mask)
        self.forwards += 1
        self.length += int(ids.numel())
        return logits, hidden

    def keep(self, prefix: int, extra: list[int] = ()) -> None:
        """Keep cache entries [0, prefix) and then `extra` (indices >= prefix), in that order."""
        keep_cache_entries(self.cache, prefix, list(extra))
        self.length = prefix + len(extra)


def _is_causal(visible: torch.Tensor) -> bool:
    """True when the q new rows see exactly what a causal mask gives them (the newest q entries in order, and
    everything before): then no explicit mask is needed and attention can take its causal fast path."""
    q, m = visible.shape
    return torch.equal(visible.cpu(), torch.ones(q, m, dtype=torch.bool).tril(m - q))
