"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, anyres images, pooled video frames.

Video layout: each frame's (S/14)x(S/14) patch grid is bilinearly pooled to ceil(side/2) squared tokens, frames
follow each other, and ONE `image_newline` token closes the whole video. Positions are plain 1-D.
"""

from __future__ import annotations

import math

import torch

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
            out["video"] = [self._with_newline(item, inputs) for item in
                            feature_items(features.pooler_output, self.hidden_size)]
        return out

    def _with_newline(self, video: torch.Tensor, inputs: dict) -> torch.Tensor:
        """A video's rows end with the model's `image_newline`: `get_video_features` appends it from transformers
        5.2x on; before (5.0 ... 5.17 at least) the model's forward did, after calling it."""
        grid, _ = self.item_layout("video", 0, inputs)
        per_video = grid[0] * grid[1] * grid[2]
        if video.shape[0] != per_video:
            return video
        newline = self.model.model.image_newline
        return torch.cat([video, newline[None].to(video.device, video.dtype)])

    def item_layout(self, modality: str, index: int, inputs: dict):
        if modality != "video":
            return None, 0  # anyres: base tile + unpadded crops with row newlines, not one grid
        vision = self.config.vision_config
        side = math.ceil((vision.image_size // vision.patch_size) / 2)
        return (int(inputs["pixel_values_videos"].shape[1]), side, side), 1
