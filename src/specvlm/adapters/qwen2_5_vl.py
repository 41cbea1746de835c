"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): flattened 14x14 patches, 2x2 merge, 3-D M-RoPE.

Positions: stock `generate` gives visual tokens (t, h, w) ids from `get_rope_index` (videos step t by
tokens_per_second * second_per_grid_ts) and text tokens the same id on all three axes; after the prompt, text
continues at len(prompt) + rope_delta. Without `mm_token_type_ids` stock `generate` silently uses 1-D positions,
and so do we (to stay token-identical); the processor always emits them.
"""

from __future__ import annotations

import warnings

import torch

from .base import VLMAdapter, feature_items


class Qwen2_5_VLAdapter(VLMAdapter):
    model_types = ("qwen2_5_vl",)
    uses_mrope = True

    def visual_features(self, inputs: dict) -> dict:
        model, out = self.model.model, {}
        if inputs.get("pixel_values") is not None:
            features = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True)
            out["image"] = feature_items(features.pooler_output, self.hidden_size)
        if inputs.get("pixel_values_videos") is not None:
            features = model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                                return_dict=True)
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
                warnings.warn("no mm_token_type_ids in the inputs: like stock generate, M-RoPE falls back to 1-D "
                              "positions; pass the processor's full output to get 3-D positions", stacklevel=3)
            pos, nxt = super().prompt_positions(inputs, input_ids)
            return self.positions(pos[0]), nxt
        positions, delta = self.model.model.get_rope_index(
            input_ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs.get("attention_mask"))
        return positions.to(self.device), input_ids.shape[1] + int(delta.reshape(-1)[0])

    def positions(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.to(self.device)[None, None].expand(3, 1, -1)
