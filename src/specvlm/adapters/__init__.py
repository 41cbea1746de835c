"""Family adapters over unmodified Hugging Face VLMs; `adapter_for(model)` picks one by `config.model_type`."""

from __future__ import annotations

import weakref

from .base import Prompt, VisualSpan, VLMAdapter, cache_keyword, is_shard, keep_cache_entries, whole
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    cls.model_types[0]: cls for cls in (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen2VLAdapter, LlavaNextVideoAdapter)
}


_BUILT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its adapter


def adapter_for(model) -> VLMAdapter:
    """The one adapter of `model`, built on first use (adapters are stateless views: the loader, the checks, the
    generator and its drafters all share it). Rebuilt if the model's embedding or output layer was replaced since
    (e.g. `resize_token_embeddings`)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported model {type(model).__name__} (model_type {model_type!r}); "
            f"specvlm supports: {', '.join(sorted(ADAPTERS))}"
        )
    adapter = _BUILT.get(model)
    if (
        adapter is None
        or type(adapter) is not ADAPTERS[model_type]
        or adapter.embeddings is not model.get_input_embeddings()
        or adapter.lm_head is not model.get_output_embeddings()
    ):
        adapter = _BUILT[model] = ADAPTERS[model_type](model)
    return adapter


__all__ = [
    "ADAPTERS",
    "Prompt",
    "VLMAdapter",
    "VisualSpan",
    "adapter_for",
    "cache_keyword",
    "is_shard",
    "keep_cache_entries",
    "whole",
]
