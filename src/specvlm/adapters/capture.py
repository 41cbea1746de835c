"""Verifier-guided scores: how much attention each visual token receives, captured during the target's prefill.

For the SpecVLM video-pruning paper, a visual token's score is the attention it receives from the text after the
visual input (the question and the chat template's tail), averaged over heads, those query tokens and layers.

How: for the duration of the prefill, the language model's attention implementation is switched to a function
registered in transformers' `AttentionInterface`. It calls the model's own attention function unchanged (so the
logits and the cache are bit-identical to a normal prefill) and, on the side, recomputes softmax(q·kᵀ·scale) in
float32 for the text query rows only, adding each visual key's share into one running (N,) vector. The matching
mask builder is registered under the same name in `AttentionMaskInterface` (without it transformers 5.x builds no
proper causal mask for the custom name). Memory: O(sequence length) kept, O(rows x keys) per head group while a
layer runs; never layers x heads x queries x length.

`scoring_s` is the wall time of that extra float32 computation alone, accumulated over the layers: the price of
the scores inside the one prefill, measured where it is paid instead of by prefilling twice.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "specvlm_capture"
_ACTIVE: list[AttentionCapture] = []
_ROWS_X_KEYS = 1 << 24  # float32 elements computed at once (64 MiB)


def _attention(module, query, key, value, attention_mask, **kwargs):
    capture = _ACTIVE[-1]
    out = capture.base_function(module)(module, query, key, value, attention_mask, **kwargs)
    capture.observe(query, key, kwargs.get("scaling"))
    return out


class AttentionCapture:
    """Context manager around one target prefill. `query_start`: prompt index of the first text token after the
    last visual token; `visual_index`: prompt indices of the visual tokens. `scores` afterwards: (N,) float32;
    `scoring_s`: seconds spent computing them (part of the prefill's time)."""

    def __init__(self, adapter, query_start: int, visual_index: torch.Tensor):
        self.adapter = adapter
        self.config = adapter.decoder.config
        self.query_start = int(query_start)
        self.visual_index = visual_index.long()
        self.total = torch.zeros(self.visual_index.numel(), dtype=torch.float32, device="cpu")  # host accumulator
        self.rows = 0  # (layer, head, query) triples averaged over
        self.scoring_s = 0.0

    def base_function(self, module):
        if self.base == "eager":  # eager lives in each modeling file, not in the registry
            return sys.modules[type(module).__module__].eager_attention_forward
        return ALL_ATTENTION_FUNCTIONS[self.base]

    def __enter__(self) -> AttentionCapture:
        self.base = self.config._attn_implementation
        AttentionInterface.register(NAME, _attention)
        AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS[self.base])
        self.config._attn_implementation = NAME
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.pop()
        self.config._attn_implementation = self.base

    def observe(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> None:
        # on a GPU the layer's own attention is still queued: wait for it, so the clock holds only our kernels
        # (accumulate() ends with a copy to the CPU, which waits for them)
        if query.is_cuda:
            torch.cuda.synchronize(query.device)
        started = time.perf_counter()
        self.accumulate(query, key, scaling)
        self.scoring_s += time.perf_counter() - started

    @torch.no_grad()
    def accumulate(self, query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> None:
        # query (1, H, q, d) for this call's new tokens; key (1, H_kv, kv, d) with the cache before them
        offset = key.shape[2] - query.shape[2]  # prompt index of query row 0
        first = max(self.query_start - offset, 0)
        rows = query[0, :, first:]
        if rows.shape[1] == 0:
            return
        heads, n_rows, dim = rows.shape
        keys = key[0].float()
        groups = heads // keys.shape[0]
        scale = scaling if scaling is not None else dim**-0.5
        positions = torch.arange(offset + first, offset + first + n_rows, device=keys.device)
        future = torch.arange(keys.shape[1], device=keys.device)[None, :] > positions[:, None]  # causal
        visual = self.visual_index.to(keys.device)
        step = max(1, _ROWS_X_KEYS // max(groups * n_rows * keys.shape[1], 1))
        for kv_head in range(0, keys.shape[0], step):
            k = keys[kv_head : kv_head + step]  # (s, kv, d)
            q = rows[kv_head * groups : (kv_head + k.shape[0]) * groups].float()
            q = q.reshape(k.shape[0], groups * n_rows, dim)  # (s, g*T, d)
            logits = torch.bmm(q, k.transpose(1, 2)) * scale  # (s, g*T, kv)
            logits = logits.reshape(k.shape[0], groups, n_rows, -1).masked_fill(future, float("-inf"))
            self.total += logits.softmax(-1)[..., visual].sum(dim=(0, 1, 2)).cpu()
        self.rows += heads * n_rows

    @property
    def scores(self) -> torch.Tensor:
        """Averaged over every head: under tensor parallelism each rank saw its own heads, so the sums are summed
        over the ranks (the same selection on every rank, the one all heads give)."""
        group = self.adapter.tp_group
        if group is None:
            return self.total / max(self.rows, 1)
        from ..engine.distributed import sum_over_ranks

        counts = torch.tensor([float(self.rows)], device="cpu")
        total = sum_over_ranks(group, torch.cat([self.total, counts]), self.adapter.device)
        return total[:-1] / max(float(total[-1]), 1.0)
