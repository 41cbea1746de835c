"""LLaVA-NeXT-Video (`LlavaNextVideoForConditionalGeneration`): CLIP tower, anyres images, pooled video frames.

Video layout: each frame's patch grid is pooled by `spatial_pool_stride` (no newline tokens); positions are 1-D.
"""

from __future__ import annotations

from .base import VLMAdapter, feature_items


class LlavaNextVideoAdapter(VLMAdapter):
    model_types = ("llava_next_video",)

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
