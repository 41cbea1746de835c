"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, anyres images, pooled video frames.

Video layout: each frame's (S/14)x(S/14) patch grid is bilinearly pooled to ceil(side/2) squared tokens, frames
follow each other, and ONE `image_newline` token closes the whole video. Positions are plain 1-D.
"""

from __future__ import annotations

import math

from .base import VLMAdapter, feature_items


class LlavaOnevisionAdapter(VLMAdapter):
    model_types = ("llava_onevision",)

    def visual_features(self, inputs: dict) -> dict:
        model, out = self.model.model, {}
        if inputs.get("pixel_values") is not None:
            features = model.get_image_features(inputs["pixel_values"], inputs["image_sizes"],
                                                batch_num_images=inputs.get("batch_num_images"), return_dict=True)
            out["image"] = feature_items(features.pooler_output, self.hidden_size)
        if inputs.get("pixel_values_videos") is not None:
            features = model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
            out["video"] = feature_items(features.pooler_output, self.hidden_size)
        return out

    def item_layout(self, modality: str, index: int, inputs: dict):
        if modality != "video":
            return None, 0  # anyres: base tile + unpadded crops with row newlines, not one grid
        vision = self.config.vision_config
        side = math.ceil((vision.image_size // vision.patch_size) / 2)
        return (int(inputs["pixel_values_videos"].shape[1]), side, side), 1
