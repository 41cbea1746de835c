"""Tiny random models of the real Hugging Face VLM classes, built from configs (no download), and inputs for them
shaped exactly like each family's processor output.

They exist for tests and smoke runs: their weights are random, so any acceptance rate measured on them says
nothing about real models (identical copies excepted). The trained testbed models are what benchmarks use.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    SiglipVisionConfig,
)

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen2_vl", "llava_next_video")


def special_ids(vocab: int) -> dict[str, int]:
    """Special tokens live at the top of the vocabulary; ordinary text ids are 0 .. vocab-7."""
    names = ("image", "video", "vision_start", "vision_end", "eos", "pad")
    return {name: vocab - len(names) + i for i, name in enumerate(names)}


def _text(vocab, hidden, layers, heads=4, kv=2, init=0.02, mrope=False, pad=0):
    ids = special_ids(vocab)
    text = dict(
        vocab_size=vocab + pad,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=4096,
        eos_token_id=ids["eos"],
        bos_token_id=None,
        pad_token_id=ids["pad"],
        tie_word_embeddings=False,
        initializer_range=init,
    )
    # A small rope_theta makes every position difference visible in the logits, so tests notice wrong positions
    # (with real thetas of 1e4..1e6 and head_dim 16, shifts of a few positions barely rotate anything).
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 20.0}
    if mrope:  # (t, h, w) sections must sum to head_dim / 2
        half = (hidden // heads) // 2
        s = 3 * half // 8
        text["rope_parameters"]["mrope_section"] = [half - 2 * s, s, s]
    return text


def make_model(
    family: str,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 1024,
    init: float = 0.02,
    attn: str = "sdpa",
    vocab_pad: int = 0,
):
    """A random tiny VLM of `family`. Vision towers are fixed small shapes so that draft and target of one family
    accept the same processor outputs whatever their text widths. `init` scales the random weights (larger gives
    peakier next-token distributions); `vocab_pad` adds never-used rows to the vocabulary, like real checkpoints
    padded to a multiple of 64 or 128."""
    torch.manual_seed(seed)
    ids = special_ids(vocab)
    text = _text(vocab, hidden, layers, init=init, pad=vocab_pad, mrope=family in ("qwen2_5_vl", "qwen2_vl"))
    if family == "llava_onevision":
        vision = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            vision_use_head=False,
        )
        config = LlavaOnevisionConfig(
            vision_config=vision,
            text_config=Qwen2Config(**text),
            image_token_index=ids["image"],
            video_token_index=ids["video"],
            image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
        )
        cls = LlavaOnevisionForConditionalGeneration
    elif family == "llava_next_video":
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            projection_dim=32,
        )
        config = LlavaNextVideoConfig(
            vision_config=vision,
            text_config=LlamaConfig(**text),
            image_token_index=ids["image"],
            video_token_index=ids["video"],
            image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
        cls = LlavaNextVideoForConditionalGeneration
    elif family in ("qwen2_5_vl", "qwen2_vl"):
        common = dict(
            text_config=text,
            image_token_id=ids["image"],
            video_token_id=ids["video"],
            vision_start_token_id=ids["vision_start"],
            vision_end_token_id=ids["vision_end"],
        )
        if family == "qwen2_5_vl":
            vision = dict(
                depth=1,
                hidden_size=32,
                intermediate_size=64,
                num_heads=2,
                out_hidden_size=hidden,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=56,
                fullatt_block_indexes=[0],
                tokens_per_second=2,
            )
            config, cls = Qwen2_5_VLConfig(vision_config=vision, **common), Qwen2_5_VLForConditionalGeneration
        else:
            vision = dict(
                depth=1,
                embed_dim=32,
                hidden_size=hidden,
                num_heads=2,
                mlp_ratio=2,
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
            )
            config, cls = Qwen2VLConfig(vision_config=vision, **common), Qwen2VLForConditionalGeneration
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    model = cls(config).eval()
    model.set_attn_implementation(attn)
    model.generation_config.eos_token_id = ids["eos"]
    model.generation_config.pad_token_id = ids["pad"]
    return model


def make_inputs(
    family: str,
    kind: str = "video",
    prompt_len: int = 3,
    suffix_len: int = 2,
    frames: int = 4,
    seed: int = 0,
    vocab: int = 1024,
    grid=(8, 12),
    images: int = 1,
    image_size: tuple[int, int] = (56, 56),
) -> dict:
    """Processor-shaped inputs for `family`: [prompt text | visual placeholders | suffix text].

    `kind`: "image", "video", "image+video" (the images, then the video, as specvlm's prompts place them) or
    "text" (no visual input). `images` images for the image kinds; Qwen's each have `grid` (h, w) patches, or
    grid[i] when `grid` is a list; LLaVA's are `image_size` (h, w), one of the tiny models' pinpoints, and in
    LLaVA-OneVision a prompt with several images gets one pooled tile per image, as its processor makes them.
    Pixels are drawn in that order (images, then the video), so the single kinds are what they always were."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = special_ids(vocab)
    text = lambda n: torch.randint(0, ids["image"], (n,), generator=g, device="cpu").tolist()
    prompt, suffix = text(prompt_len), text(suffix_len)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    num_images = images if "image" in kind else 0
    video = "video" in kind
    if family in ("qwen2_5_vl", "qwen2_vl"):
        return _qwen_inputs(family, g, ids, prompt, suffix, num_images, video, frames, grid)
    if family not in ("llava_onevision", "llava_next_video"):
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    return _llava_inputs(family, g, ids, prompt, suffix, num_images, video, frames, image_size)


KINDS = ("image", "video", "image+video", "text")


def _qwen_inputs(family, g, ids, prompt, suffix, num_images, video, frames, grid) -> dict:
    grids = list(grid) if isinstance(grid, list) else [grid] * max(num_images, 1)
    items = [("image", 1, *grids[i]) for i in range(num_images)]  # (modality, t, h, w): t temporal patches
    items += [("video", max(frames // 2, 1), *grids[0])] if video else []
    seq, pixels = list(prompt), {"image": [], "video": []}
    for modality, t, h, w in items:
        seq += [ids["vision_start"]] + [ids[modality]] * (t * h * w // 4) + [ids["vision_end"]]
        pixels[modality].append(torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g, device="cpu"))
    input_ids = torch.tensor([seq + suffix], device="cpu")
    out = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == ids["image"]).int() + (input_ids == ids["video"]).int() * 2,
    )
    grid_of = lambda modality: torch.tensor([[t, h, w] for m, t, h, w in items if m == modality], device="cpu")
    if num_images:
        out.update(pixel_values=torch.cat(pixels["image"]), image_grid_thw=grid_of("image"))
    if video:
        out.update(pixel_values_videos=torch.cat(pixels["video"]), video_grid_thw=grid_of("video"))
        if family == "qwen2_5_vl":
            out["second_per_grid_ts"] = torch.tensor([1.0], device="cpu")
    return out


def _llava_inputs(family, g, ids, prompt, suffix, num_images, video, frames, image_size) -> dict:
    size, side = 56, 56 // 14
    if tuple(image_size) not in {(56, 56), (56, 112), (112, 56), (112, 112)}:
        raise ValueError(f"image_size {image_size} is not one of the tiny models' pinpoints (56 or 112 a side)")
    out, seq = {}, list(prompt)
    if num_images:
        # anyres: a base tile + one crop per 56x56 of the pinpoint; OneVision's multi-image prompts: one tile each
        single_tiles = family == "llava_onevision" and num_images > 1
        tiles = 1 if single_tiles else 1 + image_size[0] // size * image_size[1] // size
        out["pixel_values"] = torch.cat(
            [torch.randn(1, tiles, 3, size, size, generator=g, device="cpu") for _ in range(num_images)]
        )
        out["image_sizes"] = torch.tensor([list(image_size)] * num_images, device="cpu")
        per_image = side * side + 1 if tiles == 1 else _llava_image_tokens(family, image_size)
        seq += [ids["image"]] * (per_image * num_images)
        if family == "llava_onevision":
            out["batch_num_images"] = torch.tensor([num_images], device="cpu")
    if video:
        per_frame = math.ceil(side / 2) ** 2 if family == "llava_onevision" else (side // 2) ** 2
        seq += [ids["video"]] * (frames * per_frame + (1 if family == "llava_onevision" else 0))
        out["pixel_values_videos"] = torch.randn(1, frames, 3, size, size, generator=g, device="cpu")
    input_ids = torch.tensor([seq + suffix], device="cpu")
    out.update(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out


def _llava_image_tokens(family: str, image_size: tuple[int, int] = (56, 56)) -> int:
    """Tokens for an anyres image whose size is one of the pinpoints (so unpadding removes nothing): the 4x4 base
    tile, then the crops' grid (4 rows per 56 px of height, 4 columns per 56 px of width) with one newline per row.
    A 56x56 image: 16 + 4 * (4 + 1) = 36."""
    side = 56 // 14
    rows, cols = side * image_size[0] // 56, side * image_size[1] // 56
    return side * side + rows * (cols + 1)


# token tensors of a processor output and what HF's processor pads them with on the left (input_ids: the pad id)
PADDED_TOKEN_KEYS = (("input_ids", None), ("attention_mask", 0), ("mm_token_type_ids", 0))


def make_batch(rows: list[dict], family: str, pad_id: int) -> dict:
    """One batch of batch-of-one inputs (`make_inputs` outputs: any prompt lengths, kinds, frame counts, grids),
    laid out as the family's HF processor lays out the batch of those prompts with `padding_side="left"`:
    input_ids padded with `pad_id` on the left, attention_mask and mm_token_type_ids with zeros; visual tensors
    concatenated in row order (Qwen's flattened patches, grids, second_per_grid_ts; LLaVA's images zero-padded to
    the batch's largest patch count, its stacked videos); LLaVA-OneVision's batch_num_images lists the rows that
    have images only, as HF's does. The inverse of `VLMAdapter.split_batch`, for tests. Rows HF could not batch
    either (LLaVA videos of different frame counts or sizes, which HF stacks) raise ValueError."""
    from .adapters import ADAPTERS  # here: modules that import tiny for special_ids need not load the adapters

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    if not rows:
        raise ValueError("make_batch needs at least one row")
    visual_keys = ADAPTERS[family].visual_keys
    for b, row in enumerate(rows):
        if row["input_ids"].shape[0] != 1:
            raise ValueError(f"row {b} is a batch of {row['input_ids'].shape[0]}, not one prompt")
        unknown = set(row) - {key for key, _ in PADDED_TOKEN_KEYS} - set(visual_keys)
        if unknown:
            raise ValueError(f"row {b} has inputs a {family} batch does not have: {sorted(unknown)}")
    length = max(row["input_ids"].shape[1] for row in rows)
    batch = {}
    for key, fill in PADDED_TOKEN_KEYS:
        parts = _present(rows, key, lambda row: True)
        if parts:
            batch[key] = torch.cat([_left_pad(part, length, pad_id if fill is None else fill) for part in parts])
    # per-item extras come with every item of their modality, or with none (as from one processor)
    _present(rows, "second_per_grid_ts", lambda row: "pixel_values_videos" in row)
    _present(rows, "batch_num_images", lambda row: "pixel_values" in row)
    llava = family in ("llava_onevision", "llava_next_video")
    for key in visual_keys:
        parts = [row[key] for row in rows if key in row]
        if not parts:
            continue
        if llava and key == "pixel_values":  # (images, patches, 3, H, W): pad patches to the batch's most
            most = max(part.shape[1] for part in parts)
            parts = [
                torch.cat([part, part.new_zeros(part.shape[0], most - part.shape[1], *part.shape[2:])], 1)
                for part in parts
            ]
        if llava and key == "pixel_values_videos" and len({tuple(part.shape[1:]) for part in parts}) > 1:
            raise ValueError(
                f"{family} stacks a batch's videos, so they need the same frames and size: got "
                f"{[tuple(part.shape[1:]) for part in parts]}"
            )
        batch[key] = torch.cat(parts)
    return batch


def _present(rows: list[dict], key: str, expected) -> list:
    """`key`'s values of the rows that have it, which must be every row for which `expected(row)` holds."""
    have = [key in row for row in rows]
    if any(have) and have != [bool(expected(row)) for row in rows]:
        raise ValueError(f"{key} is in rows {[b for b, h in enumerate(have) if h]} only")
    return [row[key] for row in rows if key in row]


def _left_pad(tokens: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    """(1, n) -> (1, length) with `fill` in front."""
    return torch.cat([tokens.new_full((1, length - tokens.shape[1]), fill), tokens], 1)
