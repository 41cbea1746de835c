"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, anyres images, pooled video frames.

Video layout: each frame's (S/14)x(S/14) patch grid is bilinearly pooled to ceil(side/2) squared tokens, frames
follow each other, and ONE `image_newline` token closes the whole video. Positions are plain 1-D.

Batches: pixel_values (num_images, max_patches, 3, H, W) stacks every image's anyres patches, zero-padded to the
largest count in the batch; image_sizes (num_images, 2); batch_num_images groups the images as the processor was
given them: per prompt *with images* for one list per prompt (text-only prompts are left out of it), per image for a
flat list. It also changes what an image is: an image alone in its group is anyres, the images of a larger group
are single tiles (no anyres patches), for the processor's token counts and the model's features alike.
pixel_values_videos (num_videos, frames, 3, H, W) stacks videos, so all videos of a batch have the same frame count.
"""

from __future__ import annotations

import math
import sys

import torch

from .base import VLMAdapter, feature_items, hand_out, items_by_tokens, offsets, placeholder_counts


class LlavaOnevisionAdapter(VLMAdapter):
    model_types = ("llava_onevision",)
    visual_keys = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos")

    def visual_features(self, inputs: dict) -> dict:
        model, out = self.model.model, {}
        if inputs.get("pixel_values") is not None:
            features = model.get_image_features(
                inputs["pixel_values"],
                inputs["image_sizes"],
                batch_num_images=inputs.get("batch_num_images"),
                return_dict=True,
            )
            out["image"] = feature_items(features.pooler_output, self.hidden_size)
        if inputs.get("pixel_values_videos") is not None:
            features = model.get_video_features(inputs["pixel_values_videos"], return_dict=True)
            out["video"] = [
                self._with_newline(item, inputs) for item in feature_items(features.pooler_output, self.hidden_size)
            ]
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

    def split_visual(self, inputs: dict, input_ids: torch.Tensor) -> list[dict]:
        """Images go to rows by batch_num_images when its groups follow the rows (the processor given one list of
        images per prompt, as apply_chat_template and build_inputs call it), else by token counts; videos by their
        fixed token count."""
        rows = [{} for _ in range(input_ids.shape[0])]
        counts = placeholder_counts(input_ids, self.image_token_id)
        images = anyres_images(self, inputs, counts)
        if images is not None:
            pixels, sizes = images
            groups = inputs.get("batch_num_images")
            if groups is None:  # the model then treats every image as anyres
                items = items_by_tokens(counts, image_token_lengths(self, pixels, sizes), "image")
                patched = None
            else:
                items, owned, patched = self._items_by_groups(pixels, sizes, groups, counts)
                for row, mine in zip(rows, owned):
                    if mine:  # the row's own groups, as its processor output has them
                        row["batch_num_images"] = groups[mine.start : mine.stop]
            hand_out_images(rows, items, pixels, sizes, patches_read(self, sizes, patched))
        split_stacked_videos(self, inputs, input_ids, rows)
        return rows

    def _items_by_groups(self, pixels, sizes, groups, counts) -> tuple[list[range], list[range], list[bool]]:
        """(per row its images, per row its batch_num_images entries, per image whether the model patches it).

        batch_num_images groups the images as the processor was given them: one group per prompt when given one
        list per prompt (text-only prompts left out), one group per image when given a flat list. The model reads
        it only to decide which images are anyres (those alone in their group). Groups that follow the rows assign
        the images directly; otherwise the images' token lengths (the model's own, see `image_token_lengths`) do,
        and every row must own whole groups."""
        numbers = groups.tolist()
        if sum(numbers) != pixels.shape[0]:
            raise ValueError(
                f"batch_num_images {numbers} adds up to {sum(numbers)} images but pixel_values has {pixels.shape[0]}"
            )
        patched = [n == 1 for n in numbers for _ in range(n)]  # the model's own reading of batch_num_images
        owned = groups_per_row(numbers, counts)
        bounds = offsets(numbers)
        if owned is not None:
            return [range(bounds[g.start], bounds[g.stop]) for g in owned], owned, patched
        items = items_by_tokens(counts, image_token_lengths(self, pixels, sizes, groups), "image")
        return items, groups_of_items(numbers, items), patched


# ---- LLaVA batch layouts (shared with LLaVA-NeXT-Video, which lays out its inputs the same way) -------------------
def anyres_images(adapter, inputs: dict, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(pixel_values, image_sizes) of a batch, checked against each other, or None when it has no images."""
    pixels, sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
    if pixels is None:
        if any(counts):
            raise ValueError(
                f"{adapter.family}: the batch has image placeholder tokens (per row {counts}) but no pixel_values"
            )
        if sizes is not None or inputs.get("batch_num_images") is not None:
            raise ValueError(f"{adapter.family}: the batch has image_sizes / batch_num_images but no pixel_values")
        return None
    if pixels.dim() != 5 or sizes is None or sizes.shape[0] != pixels.shape[0]:
        raise ValueError(
            f"{adapter.family}: pixel_values {tuple(pixels.shape)} must be (num_images, patches, 3, H, W) "
            f"with one image_sizes row per image (image_sizes: "
            f"{None if sizes is None else tuple(sizes.shape)})"
        )
    return pixels, sizes


def groups_per_row(numbers: list[int], counts: list[int]) -> list[range] | None:
    """Per row, its batch_num_images entries when the groups follow the rows: one group per row with image
    placeholders, in order (HF's layout for one list of images per prompt), or one entry per row with zeros for
    the rows without images. None when they do not follow the rows (a flat list of images)."""
    with_images = [b for b, count in enumerate(counts) if count]
    if len(numbers) == len(counts) and all((n > 0) == (count > 0) for n, count in zip(numbers, counts)):
        return [range(b, b + 1) if count else range(b, b) for b, count in enumerate(counts)]
    if len(numbers) == len(with_images) and all(numbers):
        index = {b: k for k, b in enumerate(with_images)}
        return [range(index[b], index[b] + 1) if b in index else range(0) for b in range(len(counts))]
    return None


def groups_of_items(numbers: list[int], items: list[range]) -> list[range]:
    """Per row, the batch_num_images entries that hold exactly its images; a group shared by two rows (which no
    processor makes) is a ValueError."""
    bounds = offsets(numbers)
    out = []
    for row, mine in enumerate(items):
        if mine and (mine.start not in bounds or mine.stop not in bounds):
            raise ValueError(
                f"row {row} holds images {mine.start}..{mine.stop - 1}, which cut a batch_num_images group {numbers}"
            )
        out.append(range(bounds.index(mine.start), bounds.index(mine.stop)) if mine else range(0))
    return out


def image_token_lengths(adapter, pixels: torch.Tensor, sizes: torch.Tensor, groups=None) -> list[int]:
    """How many placeholders each image fills, from the model's own `get_image_features`: an anyres image's count
    depends on its size through the pinpoint choice, unpadding and newlines, and the features the forward scatters
    are by definition what it consumes (HF's processor keeps a separate copy of that formula). Costs one pass of
    the vision tower over the batch's images, paid only when the batch does not say how many images each row has.
    `groups`: OneVision's batch_num_images, which decides which images are anyres."""
    with torch.no_grad():
        features = adapter.visual_features({"pixel_values": pixels, "image_sizes": sizes, "batch_num_images": groups})
    return [item.shape[0] for item in features["image"]]


def patches_read(adapter, sizes: torch.Tensor, patched: list[bool] | None) -> list[int]:
    """Per image, how many leading patch slots of its pixel_values row the model reads: anyres images their
    pinpoint grid + 1, single tiles (OneVision's multi-image prompts: `patched` False) one. This is the model's own
    rule: `image_size_to_num_patches` of its modeling module, the function its get_image_features calls; the rest
    is batch padding."""
    config = adapter.config
    image_size_to_num_patches = sys.modules[type(adapter.model.model).__module__].image_size_to_num_patches
    patched = patched if patched is not None else [True] * sizes.shape[0]
    return [
        image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size) if anyres else 1
        for size, anyres in zip(sizes.tolist(), patched)
    ]


def hand_out_images(
    rows: list[dict], items: list[range], pixels: torch.Tensor, sizes: torch.Tensor, patches: list[int]
) -> None:
    """Each row's images, with the batch's patch padding cut to what its own processor output would have: the most
    patches any of its images has. The model reads the same patches either way (it slices each image to its own
    count), so the row's features are bit-identical to the padded slice's."""
    for row, mine in zip(rows, items):
        if mine:
            kept = min(max(patches[mine.start : mine.stop]), pixels.shape[1])
            row["pixel_values"] = pixels[mine.start : mine.stop, :kept]  # (its images, kept, 3, H, W)
    hand_out(rows, items, {"image_sizes": sizes})


def split_stacked_videos(adapter, inputs: dict, input_ids: torch.Tensor, rows: list[dict]) -> None:
    """pixel_values_videos (num_videos, frames, 3, H, W): every video has the same frame count, hence the same
    number of placeholders (`item_layout`: frames x pooled grid, + OneVision's newline), so a row's placeholder
    count says how many videos it holds."""
    counts = placeholder_counts(input_ids, adapter.video_token_id)
    videos = inputs.get("pixel_values_videos")
    if videos is None:
        if any(counts):
            raise ValueError(
                f"{adapter.family}: the batch has video placeholder tokens (per row {counts}) but no "
                "pixel_values_videos"
            )
        return
    if videos.dim() != 5:
        raise ValueError(
            f"{adapter.family}: pixel_values_videos {tuple(videos.shape)} must be (num_videos, frames, 3, H, W)"
        )
    (frames, height, width), tail = adapter.item_layout("video", 0, inputs)
    items = items_by_tokens(counts, [frames * height * width + tail] * videos.shape[0], "video")
    hand_out(rows, items, {"pixel_values_videos": videos})
