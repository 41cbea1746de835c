"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): flattened 14x14 patches, 2x2 merge, 3-D M-RoPE.

Positions: stock `generate` gives visual tokens (t, h, w) ids from `get_rope_index` (videos step t by
tokens_per_second * second_per_grid_ts) and text tokens the same id on all three axes; after the prompt, text
continues at len(prompt) + rope_delta. Without `mm_token_type_ids` stock `generate` silently uses 1-D positions,
and so do we (to stay token-identical); the processor always emits them.

Batches: pixel_values (sum of patches, D) concatenates every image's t*h*w patches in batch order, image_grid_thw
(num_images, 3) gives each image's grid, and an image fills t*h*w / merge**2 placeholders; videos likewise, with
second_per_grid_ts (num_videos,). The grids therefore say which images fill which row's placeholders.
"""

from __future__ import annotations

import warnings

import torch

from .base import VLMAdapter, feature_items, hand_out, items_by_tokens, offsets, placeholder_counts


class Qwen2_5_VLAdapter(VLMAdapter):
    model_types = ("qwen2_5_vl",)
    uses_mrope = True
    # (modality, patches, grids, per-item extras); Qwen2-VL's processor gives no second_per_grid_ts, its model
    # ignores it, and a batch that has it is split like Qwen2.5-VL's
    VISUAL_INPUTS = (
        ("image", "pixel_values", "image_grid_thw", ()),
        ("video", "pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",)),
    )
    visual_keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

    def visual_features(self, inputs: dict) -> dict:
        model, out = self.model.model, {}
        if inputs.get("pixel_values") is not None:
            features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
            out["image"] = feature_items(features.pooler_output, self.hidden_size)
        if inputs.get("pixel_values_videos") is not None:
            features = model.get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            )
            out["video"] = feature_items(features.pooler_output, self.hidden_size)
        return out

    def item_layout(self, modality: str, index: int, inputs: dict):
        merge = self.config.vision_config.spatial_merge_size
        t, h, w = (int(v) for v in inputs[f"{modality}_grid_thw"][index])
        return (t, h // merge, w // merge), 0

    def prompt_positions(self, inputs: dict, input_ids: torch.Tensor):
        has_grid = inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None
        if inputs.get("mm_token_type_ids") is None or not has_grid:
            if has_grid:
                warnings.warn(
                    "no mm_token_type_ids in the inputs: like stock generate, M-RoPE falls back to 1-D "
                    "positions; pass the processor's full output to get 3-D positions",
                    stacklevel=3,
                )
            pos, nxt = super().prompt_positions(inputs, input_ids)
            return self.positions(pos[0]), nxt
        positions, delta = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs.get("attention_mask"),
        )
        return positions.to(self.device), input_ids.shape[1] + int(delta.reshape(-1)[0])

    def positions(self, pos: torch.Tensor) -> torch.Tensor:
        """1-D text positions (B, n) or (n,) -> M-RoPE ids (3, B, n): the same id on the t, h and w axes."""
        return pos.to(self.device).reshape(-1, pos.shape[-1])[None].expand(3, -1, -1)

    def split_visual(self, inputs: dict, input_ids: torch.Tensor) -> list[dict]:
        """Images and videos go to rows by their grids: item i has t*h*w patch rows and t*h*w / merge**2
        placeholder tokens, and rows take items in order until their placeholder counts are filled."""
        rows = [{} for _ in range(input_ids.shape[0])]
        merge = self.config.vision_config.spatial_merge_size
        for modality, pixels_key, grid_key, extra_keys in self.VISUAL_INPUTS:
            counts = placeholder_counts(input_ids, self.token_id(modality))
            pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
            extras = {key: inputs[key] for key in extra_keys if inputs.get(key) is not None}
            if pixels is None and grid is None and not extras:
                if any(counts):
                    raise ValueError(
                        f"{self.family}: the batch has {modality} placeholder tokens (per row {counts}) "
                        f"but no {pixels_key}"
                    )
                continue
            if pixels is None or grid is None:
                given = ", ".join(k for k in (pixels_key, grid_key, *extras) if inputs.get(k) is not None)
                raise ValueError(
                    f"{self.family}: the batch has {given} but no {grid_key if pixels is not None else pixels_key}"
                )
            patches = [t * h * w for t, h, w in grid.tolist()]  # (num_items, 3) -> host ints
            if sum(patches) != pixels.shape[0]:
                raise ValueError(
                    f"{self.family}: {grid_key} gives {sum(patches)} patches but {pixels_key} has "
                    f"{pixels.shape[0]} rows"
                )
            for key, value in extras.items():
                if value.shape[0] != len(patches):
                    raise ValueError(
                        f"{self.family}: {key} has {value.shape[0]} entries for {len(patches)} {modality}s"
                    )
            items = items_by_tokens(counts, [p // merge**2 for p in patches], modality)
            start = offsets(patches)
            for row, mine in zip(rows, items):
                if mine:
                    row[pixels_key] = pixels[start[mine.start] : start[mine.stop]]  # (its items' patches, D)
            hand_out(rows, items, {grid_key: grid, **extras})
        return rows
