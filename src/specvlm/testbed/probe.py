"""Dense supervision of the visual tokens while the testbed models train: what each token shows.

A from-scratch vision tower learns little from answer tokens alone (the bundled 749-step targets of the first
testbed answered 8-9 % of questions, at chance). So during training every visual token is also asked, through a
linear probe on the embedding the language model receives (`hidden_states[0]` at the video placeholders), which
colour and which shape covers its cell of the frame(s) it was made from. The world knows that exactly (the renderer
draws the same scene as object masks), every token gets a label, and the tower learns to see in a few hundred
steps. The probe is thrown away after training: the saved checkpoints are plain HF models.

Token layout (both families emit visual tokens frame group by frame group, each group a row-major grid):
LLaVA-OneVision: one group per sampled frame, side x side pooled tokens, then one newline token for the video;
Qwen2.5-VL: one group per `temporal_patch_size` sampled frames, (h / merge) x (w / merge) merged tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .render import object_masks
from .world import COLORS, SHAPES, Scene

COLOR_CLASSES = ("none",) + tuple(COLORS)  # class 0: no object covers the cell
SHAPE_CLASSES = ("none",) + SHAPES  # world version 3 has one shape: this read-out is "is there an object"
MIN_COVER = 0.02  # an object labels a cell when it covers at least this fraction: world version 3's balls (radius
#                   ~7 px at 224, ~140 px^2) cover at most ~18 % of a LLaVA-OV 28 px cell and ~40 % of a Qwen one,
#                   and a ball on a cell corner ~5 % of each of four (at version 2's 0.1 most would go unlabelled)
BACKGROUND_WEIGHT = 0.2  # background cells are most of the frame; they weigh this much each


def token_grid(visual: dict, n_visual: int, n_frames: int, merge: int = 2) -> tuple[int, int, int]:
    """(groups, side, extra): visual tokens are `groups` row-major side x side grids followed by `extra` tokens
    (LLaVA-OneVision's one video newline). Square frames only (the testbed's)."""
    if "video_grid_thw" in visual:
        t, h, w = (int(v) for v in visual["video_grid_thw"][0])
        if h != w or t * (h // merge) * (w // merge) != n_visual:
            raise ValueError(f"unexpected Qwen video grid {t}x{h}x{w} for {n_visual} tokens")
        return t, h // merge, 0
    side = math.isqrt((n_visual - 1) // n_frames)
    if n_frames * side * side + 1 != n_visual:
        raise ValueError(f"{n_visual} visual tokens are not {n_frames} square grids + 1 newline")
    return n_frames, side, 1


def cell_cover(masks: np.ndarray, n_objects: int, side: int) -> torch.Tensor:
    """(F, K + 1, side, side): the fraction of each grid cell covered by the background (0) and by each of the K
    objects, from (F, S, S) object masks (area average, so any S works with any side)."""
    onehot = torch.nn.functional.one_hot(torch.from_numpy(masks).long(), n_objects + 1)  # (F, S, S, K+1)
    return torch.nn.functional.adaptive_avg_pool2d(onehot.permute(0, 3, 1, 2).float(), side)


def visual_labels(
    scene: Scene, frame_indices: list[int], size: int, groups: int, side: int, extra: int
) -> torch.Tensor:
    """(groups * side^2 + extra, 2) long: per visual token, its (colour class, shape class) in COLOR_CLASSES /
    SHAPE_CLASSES: the object covering the most of its cell (averaged over the group's frames) when that is at
    least MIN_COVER, else class 0; -100 (ignored) for the `extra` tokens."""
    n_frames = len(frame_indices)
    if n_frames % groups:
        raise ValueError(f"{n_frames} frames do not split into {groups} groups")
    cover = cell_cover(object_masks(scene, size, frame_indices), len(scene.objects), side)
    cover = cover.view(groups, n_frames // groups, *cover.shape[1:]).mean(1)  # (G, K+1, side, side)
    best_cover, best = cover[:, 1:].max(1)  # (G, side, side)
    present = best_cover >= MIN_COVER
    firsts = frame_indices[:: n_frames // groups]
    color_of = torch.tensor(
        [[COLOR_CLASSES.index(scene.colors[t][k]) for k in range(len(scene.objects))] for t in firsts]
    )  # (G, K)
    shape_of = torch.tensor([SHAPE_CLASSES.index(o.shape) for o in scene.objects])  # (K,)
    color = torch.where(present, color_of.gather(1, best.flatten(1)).view_as(best), 0)
    shape = torch.where(present, shape_of[best], 0)
    labels = torch.stack([color.flatten(), shape.flatten()], dim=1)
    return torch.cat([labels, torch.full((extra, 2), -100, dtype=torch.long)])


class VisualProbe(torch.nn.Module):
    """Two linear read-outs (colour, shape) of a visual token's embedding; only used while training."""

    def __init__(self, width: int):
        super().__init__()
        self.color = torch.nn.Linear(width, len(COLOR_CLASSES))
        self.shape = torch.nn.Linear(width, len(SHAPE_CLASSES))

    def loss(self, embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of both read-outs over object cells plus BACKGROUND_WEIGHT x the mean over background
        cells. embeds (N, width), labels (N, 2) as `visual_labels` gives them."""
        keep = labels[:, 0] != -100
        embeds, labels = embeds[keep].float(), labels[keep]
        per_token = torch.nn.functional.cross_entropy(
            self.color(embeds), labels[:, 0], reduction="none"
        ) + torch.nn.functional.cross_entropy(self.shape(embeds), labels[:, 1], reduction="none")
        obj = labels[:, 1] > 0
        parts = [
            per_token[obj].mean() if obj.any() else per_token.new_zeros(()),
            BACKGROUND_WEIGHT * per_token[~obj].mean() if (~obj).any() else per_token.new_zeros(()),
        ]
        return parts[0] + parts[1]

    @torch.no_grad()
    def hits(self, embeds: torch.Tensor, labels: torch.Tensor) -> dict:
        """How many object cells (labels[:, 1] > 0) each read-out names right, and how many there are."""
        obj = labels[:, 1] > 0
        embeds, labels = embeds[obj].float(), labels[obj]
        return {
            "color": int((self.color(embeds).argmax(-1) == labels[:, 0]).sum()),
            "shape": int((self.shape(embeds).argmax(-1) == labels[:, 1]).sum()),
            "cells": int(obj.sum()),
        }
