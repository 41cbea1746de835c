"""Dense supervision of the visual tokens while the testbed models train: what each token shows.

A from-scratch vision tower learns little from answer tokens alone (the bundled 749-step targets of the first
testbed answered 8-9 % of questions, at chance). So during training every visual token is also asked, through a
linear probe on the embedding the language model receives (`hidden_states[0]` at the video placeholders), what
covers its cell of the frame(s) it was made from: the object's colour, the region its centre is in and which way it
moves (`HEADS`; version 2 asked colour and shape). The world knows that exactly (the renderer
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
from .world import COLORS, REGIONS, SHAPES, Scene, direction_name, region

COLOR_CLASSES = ("none",) + tuple(COLORS)  # class 0: no object covers the cell
SHAPE_CLASSES = ("none",) + SHAPES  # world version 3 has one shape: no longer a read-out (kept for reference)
REGION_CLASSES = ("none",) + tuple(r for row in REGIONS for r in row)  # where the covering object's centre is
MOTION_CLASSES = ("none", "left", "right", "up", "down", "still")  # which way it moves between the group's frames
HEADS = {"color": COLOR_CLASSES, "region": REGION_CLASSES, "motion": MOTION_CLASSES}  # label columns, in order
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


def motion_class(scene: Scene, k: int, frames: list[int]) -> int:
    """Object k's motion between the first and last of `frames` as MOTION_CLASSES index; -100 (not asked) for a
    one-frame group, where a token cannot show motion (LLaVA-OneVision)."""
    if len(frames) < 2:
        return -100
    dx, dy = scene.states[frames[-1], k, :2] - scene.states[frames[0], k, :2]
    name = direction_name(float(dx), float(dy))
    return MOTION_CLASSES.index(name) if name in MOTION_CLASSES else MOTION_CLASSES.index("still")


def visual_labels(
    scene: Scene, frame_indices: list[int], size: int, groups: int, side: int, extra: int
) -> torch.Tensor:
    """(groups * side^2 + extra, 3) long: per visual token, the (colour, region, motion) classes (HEADS) of the
    object covering the most of its cell (averaged over the group's frames) when that is at least MIN_COVER, else
    class 0; -100 (ignored) for the `extra` tokens and for motion in one-frame groups. Region and motion let the
    language model read "where" and "which way" from a token's content: version 2's probe asked colour and shape
    only, and its targets answered position and direction questions at or below the majority baseline."""
    n_frames = len(frame_indices)
    if n_frames % groups:
        raise ValueError(f"{n_frames} frames do not split into {groups} groups")
    per = n_frames // groups
    cover = cell_cover(object_masks(scene, size, frame_indices), len(scene.objects), side)
    cover = cover.view(groups, per, *cover.shape[1:]).mean(1)  # (G, K+1, side, side)
    best_cover, best = cover[:, 1:].max(1)  # (G, side, side)
    present = best_cover >= MIN_COVER
    spans = [frame_indices[g * per : (g + 1) * per] for g in range(groups)]
    table = torch.tensor(
        [
            [
                [
                    COLOR_CLASSES.index(scene.colors[fs[0]][k]),
                    REGION_CLASSES.index(region(*scene.states[fs[0], k, :2])),
                    motion_class(scene, k, fs),
                ]
                for k in range(len(scene.objects))
            ]
            for fs in spans
        ],
        dtype=torch.long,
    ).view(groups, len(scene.objects), len(HEADS))  # (G, K, heads)
    picked = table.gather(1, best.flatten(1)[..., None].expand(-1, -1, len(HEADS)))  # (G, side^2, heads)
    labels = torch.where(present.flatten(1)[..., None], picked, 0).flatten(0, 1)
    return torch.cat([labels, torch.full((extra, len(HEADS)), -100, dtype=torch.long)])


class WordAligned(torch.nn.Module):
    """A colour read-out whose class vectors are fixed word embeddings: `words` (len(COLOR_CLASSES), width), row 0
    for "no object", e.g. the language model's input embeddings of the colour names (and of a token it never reads
    for row 0). Trained through it, the embedding a red ball's token gets points along the word "red"'s, as LLaVA's
    feature-alignment stage puts image features in the word-embedding space. logits = scale * x @ words^T."""

    def __init__(self, words: torch.Tensor):
        super().__init__()
        self.register_buffer("words", words.detach().float().clone())
        self.scale = torch.nn.Parameter(torch.ones((), device=words.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x @ self.words.T


def background_energy(embeds: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """The background tokens' mean squared norm over the object tokens' (that one a constant: no gradient), 0 when
    either is missing. embeds (N, width), obj (N,) bool. Pushed down, the empty background reaches the language
    model as near-zero rows, so whatever it attends to at first is mostly what the balls' tokens carry."""
    if not obj.any() or obj.all():
        return embeds.new_zeros(())
    energy = embeds.pow(2).sum(-1)  # (N,)
    return energy[~obj].mean() / energy[obj].mean().detach()


class VisualProbe(torch.nn.Module):
    """One linear read-out per HEADS entry (colour, region, motion) of a visual token's embedding; only used
    while training. `colour_words` (len(COLOR_CLASSES), width): the colour read-out is `WordAligned` to them.
    `quiet`: the weight of `background_energy` in its loss (the empty background's rows pushed towards zero)."""

    def __init__(self, width: int, colour_words: torch.Tensor | None = None, quiet: float = 0.0):
        super().__init__()
        self.quiet = quiet
        heads: dict[str, torch.nn.Module] = {k: torch.nn.Linear(width, len(v)) for k, v in HEADS.items()}
        if colour_words is not None:
            if tuple(colour_words.shape) != (len(COLOR_CLASSES), width):
                raise ValueError(
                    f"colour_words must be ({len(COLOR_CLASSES)}, {width}), got {tuple(colour_words.shape)}"
                )
            heads["color"] = WordAligned(colour_words)
        self.heads = torch.nn.ModuleDict(heads)

    def loss(self, embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per head, mean cross-entropy over object cells plus BACKGROUND_WEIGHT x the mean over background cells
        (labels -100 are left out); the heads' losses summed; plus `quiet` x `background_energy`. embeds (N,
        width), labels (N, heads) as `visual_labels` gives them."""
        keep = labels[:, 0] != -100
        embeds, labels = embeds[keep].float(), labels[keep]
        obj = labels[:, 0] > 0
        total = self.quiet * background_energy(embeds, obj) if self.quiet else embeds.new_zeros(())
        for i, head in enumerate(self.heads.values()):
            per_token = torch.nn.functional.cross_entropy(head(embeds), labels[:, i], reduction="none")
            asked = labels[:, i] != -100
            for cells, weight in ((obj & asked, 1.0), (~obj & asked, BACKGROUND_WEIGHT)):
                if cells.any():
                    total = total + weight * per_token[cells].mean()
        return total

    @torch.no_grad()
    def hits(self, embeds: torch.Tensor, labels: torch.Tensor) -> dict:
        """How many object cells (labels[:, 0] > 0) each read-out names right, how many it was asked about, and how
        many object cells there are."""
        obj = labels[:, 0] > 0
        embeds, labels = embeds[obj].float(), labels[obj]
        out = {"cells": int(obj.sum())}
        for i, (name, head) in enumerate(self.heads.items()):
            asked = labels[:, i] != -100
            out[name] = int((head(embeds).argmax(-1) == labels[:, i])[asked].sum())
            out[f"{name}_asked"] = int(asked.sum())
        return out
