"""LLaVA-NeXT-Video (`LlavaNextVideoForConditionalGeneration`): CLIP tower, anyres images, pooled video frames.

Video layout: each frame's patch grid is pooled by `spatial_pool_stride` (no newline tokens); positions are 1-D.

Batches are laid out like LLaVA-OneVision's (patch-padded anyres pixel_values + image_sizes, stacked videos) but
nothing says how many images each prompt has; their placeholder counts do, once each image's token count is known.
"""

from __future__ import annotations

import torch

from .base import VLMAdapter, feature_items, items_by_tokens, placeholder_counts
from .llava_onevision import anyres_images, hand_out_images, image_token_lengths, patches_read, split_stacked_videos


class LlavaNextVideoAdapter(VLMAdapter):
    model_types = ("llava_next_video",)
    visual_keys = ("pixel_values", "image_sizes", "pixel_values_videos")

    def visual_features(self, inputs: dict) -> dict:
        model, out = self.model.model, {}
        if inputs.get("pixel_values") is not None:
            features = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], return_dict=True)
            out["image"] = feature_items(features.pooler_output, self.hidden_size)
        if inputs.get("pixel_values_videos") is not None:
            features = model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
            out["video"] = feature_items(features.pooler_output, self.hidden_size)
        return out

    def item_layout(self, modality: str, index: int, inputs: dict):
        if modality != "video":
            return None, 0
        vision = self.config.vision_config
        side = (vision.image_size // vision.patch_size) // self.config.spatial_pool_stride
        return (int(inputs["pixel_values_videos"].shape[1]), side, side), 0

    def split_visual(self, inputs: dict, input_ids: torch.Tensor) -> list[dict]:
        """Images go to rows by their token counts, which the model's own `get_image_features` gives (an anyres
        image's count depends on its size; see `image_token_lengths`); every image is anyres here."""
        rows = [{} for _ in range(input_ids.shape[0])]
        counts = placeholder_counts(input_ids, self.image_token_id)
        images = anyres_images(self, inputs, counts)
        if images is not None:
            pixels, sizes = images
            items = items_by_tokens(counts, image_token_lengths(self, pixels, sizes), "image")
            hand_out_images(rows, items, pixels, sizes, patches_read(self, sizes, None))
        split_stacked_videos(self, inputs, input_ids, rows)
        return rows
