"""Attention plumbing: HF's 4-D additive mask convention (`additive_mask`), which implementation a config runs, and
the attention the fast engine's steps use on CPU: SDPA with grouped-query heads read in place.

With an explicit mask (every fast step has one: trees, padding, a static cache), transformers' SDPA path repeats
the K/V heads to the query heads (`repeat_kv`) before calling SDPA, i.e. copies the whole cache once per layer
and step. `enable_gqa=True` reads the shared heads in place: on the CPU machines this halves a 1-token step's
attention over 800 cached tokens (234 -> 107 µs) with bit-identical outputs. On CUDA the model's own
implementation is kept: whether SDPA's masked kernels take `enable_gqa` there is unmeasured here.

It is registered in transformers' `AttentionInterface` under NAME and switched in only for the duration of a fast
step (`gqa_attention(adapter)`), like the attention capture does; the user's model is otherwise untouched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

NAME = "specvlm_sdpa_gqa"


def sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    # query (1, H, q, D); key, value (1, H_kv, k, D); attention_mask (1, 1, q, k) additive -> out (1, q, H, D)
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=0.0,
        scale=scaling,
        is_causal=False,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa)


def additive_mask(visible: torch.Tensor, prefix_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """4-D attention mask (1, 1, q, prefix_len + m) for q new rows: the whole committed prefix is visible, and among
    the m tree entries in the cache only those `visible` (q, m) marks. 0 = attend, dtype-min = blocked."""
    q, m = visible.shape
    visible = visible.to(device)
    allowed = torch.cat([torch.ones(q, prefix_len, dtype=torch.bool, device=device), visible], dim=1)
    mask = torch.zeros(q, prefix_len + m, dtype=dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


def implementation(config) -> str:
    """The attention implementation layers configured by `config` run ("sdpa", "eager", "flash_attention_2", ...)."""
    return config._attn_implementation


def uses_gqa_attention(device: torch.device, config) -> bool:
    """Whether fast steps of layers configured by `config` on `device` should attend with `sdpa_gqa`."""
    return device.type == "cpu" and implementation(config) == "sdpa"


@contextmanager
def gqa_attention(config, enabled: bool = True):
    """Within the block the layers configured by `config` attend with `sdpa_gqa` (when `enabled`)."""
    if not enabled:
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before
