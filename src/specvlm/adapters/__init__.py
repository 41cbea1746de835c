"""Family adapters over unmodified Hugging Face VLMs; `adapter_for(model)` picks one by `config.model_type`."""

from __future__ import annotations

from .base import Prompt, VisualSpan, VLMAdapter, cache_keyword, keep_cache_entries
from .llava_next_video import LlavaNextVideoAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: dict[str, type[VLMAdapter]] = {
    cls.model_types[0]: cls for cls in (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen2VLAdapter, LlavaNextVideoAdapter)
}


def adapter_for(model) -> VLMAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported model {type(model).__name__} (model_type {model_type!r}); "
            f"specvlm supports: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "Prompt", "VLMAdapter", "VisualSpan", "adapter_for", "cache_keyword", "keep_cache_entries"]
