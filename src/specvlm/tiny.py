"""Tiny random models of the real Hugging Face VLM classes, built from configs (no download), and inputs for them
shaped exactly like each family's processor output.

They exist for tests and smoke runs: their weights are random, so any acceptance rate measured on them says
nothing about real models (identical copies excepted). The trained testbed models are what benchmarks use.
"""

from __future__ import annotations

import math

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration,
                          LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, SiglipVisionConfig)

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen2_vl", "llava_next_video")


def special_ids(vocab: int) -> dict[str, int]:
    """Special tokens live at the top of the vocabulary; ordinary text ids are 0 .. vocab-7."""
    names = ("image", "video", "vision_start", "vision_end", "eos", "pad")
    return {name: vocab - len(names) + i for i, name in enumerate(names)}


def _text(vocab, hidden, layers, heads=4, kv=2, init=0.02, mrope=False, pad=0):
    ids = special_ids(vocab)
    text = dict(vocab_size=vocab + pad, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                eos_token_id=ids["eos"], bos_token_id=None, pad_token_id=ids["pad"], tie_word_embeddings=False,
                initializer_range=init)
    # A small rope_theta makes every position difference visible in the logits, so tests notice wrong positions
    # (with real thetas of 1e4..1e6 and head_dim 16, shifts of a few positions barely rotate anything).
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 20.0}
    if mrope:  # (t, h, w) sections must sum to head_dim / 2
        half = (hidden // heads) // 2
        s = 3 * half // 8
        text["rope_parameters"]["mrope_section"] = [half - 2 * s, s, s]
    return text


def make_model(family: str, seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 1024,
               init: float = 0.02, attn: str = "sdpa", vocab_pad: int = 0):
    """A random tiny VLM of `family`. Vision towers are fixed small shapes so that draft and target of one family
    accept the same processor outputs whatever their text widths. `init` scales the random weights (larger gives
    peakier next-token distributions); `vocab_pad` adds never-used rows to the vocabulary, like real checkpoints
    padded to a multiple of 64 or 128."""
    torch.manual_seed(seed)
    ids = special_ids(vocab)
    text = _text(vocab, hidden, layers, init=init, pad=vocab_pad, mrope=family in ("qwen2_5_vl", "qwen2_vl"))
    if family == "llava_onevision":
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=56, patch_size=14, vision_use_head=False)
        config = LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**text),
                                      image_token_index=ids["image"], video_token_index=ids["video"],
                                      image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
                                      vision_feature_layer=-1, vision_feature_select_strategy="full")
        cls = LlavaOnevisionForConditionalGeneration
    elif family == "llava_next_video":
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=56, patch_size=14, projection_dim=32)
        config = LlavaNextVideoConfig(vision_config=vision, text_config=LlamaConfig(**text),
                                      image_token_index=ids["image"], video_token_index=ids["video"],
                                      image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
                                      vision_feature_layer=-2, vision_feature_select_strategy="default")
        cls = LlavaNextVideoForConditionalGeneration
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        common = dict(text_config=text, image_token_id=ids["image"],
                      video_token_id=ids["video"], vision_start_token_id=ids["vision_start"],
                      vision_end_token_id=ids["vision_end"])
        if family == "qwen2_5_vl":
            vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                          fullatt_block_indexes=[0], tokens_per_second=2)
            config, cls = Qwen2_5_VLConfig(vision_config=vision, **common), Qwen2_5_VLForConditionalGeneration
        else:
            vision = dict(depth=1, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2)
            config, cls = Qwen2VLConfig(vision_config=vision, **common), Qwen2VLForConditionalGeneration
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    model = cls(config).eval()
    model.set_attn_implementation(attn)
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    return model


def make_inputs(family: str, kind: str = "video", prompt_len: int = 3, suffix_len: int = 2, frames: int = 4,
                seed: int = 0, vocab: int = 1024, grid: tuple[int, int] = (8, 12)) -> dict:
    """Processor-shaped inputs for `family`: [prompt text | visual placeholders | suffix text]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = special_ids(vocab)
    text = lambda n: torch.randint(0, ids["image"], (n,), generator=g, device="cpu").tolist()
    prompt, suffix = text(prompt_len), text(suffix_len)
    token = ids[kind]
    if family in ("qwen2_5_vl", "qwen2_vl"):
        h, w = grid
        t = 1 if kind == "image" else max(frames // 2, 1)
        n = t * h * w // 4
        pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g, device="cpu")
        seq = prompt + [ids["vision_start"]] + [token] * n + [ids["vision_end"]] + suffix
        input_ids = torch.tensor([seq], device="cpu")
        out = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                   mm_token_type_ids=(input_ids == token).int() * (1 if kind == "image" else 2))
        grid_thw = torch.tensor([[t, h, w]], device="cpu")
        if kind == "image":
            out.update(pixel_values=pixels, image_grid_thw=grid_thw)
        else:
            out.update(pixel_values_videos=pixels, video_grid_thw=grid_thw)
            if family == "qwen2_5_vl":
                out["second_per_grid_ts"] = torch.tensor([1.0], device="cpu")
        return out
    size = 56
    if kind == "video":
        side = size // 14
        per_frame = math.ceil(side / 2) ** 2 if family == "llava_onevision" else (side // 2) ** 2
        n = frames * per_frame + (1 if family == "llava_onevision" else 0)
        out = dict(pixel_values_videos=torch.randn(1, frames, 3, size, size, generator=g, device="cpu"))
    else:
        # anyres with a square image: one base tile + one crop; count tokens with the reference formula below
        out = dict(pixel_values=torch.randn(1, 2, 3, size, size, generator=g, device="cpu"),
                   image_sizes=torch.tensor([[size, size]], device="cpu"))
        n = _llava_image_tokens(family)
        if family == "llava_onevision":
            out["batch_num_images"] = torch.tensor([1], device="cpu")
    input_ids = torch.tensor([prompt + [token] * n + suffix], device="cpu")
    out.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out


def _llava_image_tokens(family: str) -> int:
    """Tokens for a 56x56 image with pinpoints up to 112: base 4x4 tile + the 56x56 crop grid 4x4 with one newline
    per row (no unpadding needed for a square image): 16 + 4 * (4 + 1) = 36."""
    side = 56 // 14
    return side * side + side * (side + 1)
