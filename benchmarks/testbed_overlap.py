"""How sparse is the testbed's visual information? Data level, no models (issue 23):

    python benchmarks/testbed_overlap.py [--clips 200] [--seed 0]

Per family, over the first `--clips` clips of the world `--seed` (frames sampled as the processors sample them:
8 uniform indices; Qwen2.5-VL merges two frames into one token grid of 28 px cells at 336 px, LLaVA-OneVision pools
each 224 px frame into 8 x 8 cells of 28 px):
- the share of visual tokens whose cell any object overlaps (any pixel), and whose cell an object covers at least
  `probe.MIN_COVER` of (what the probe labels);
- what random pruning keeps of the objects: over 200 draws per clip, the share of (object, token group) pairs, i.e.
  an object as one frame (group) shows it, that keep at least one overlapping token, at keep 0.1 and 0.01.
A world where pruning matters has few object tokens and a random 10 % that misses most (object, group) pairs.
Run with `PYTHONPATH` pointing at another checkout to measure its world (only `clip_scene`, `object_masks` and
`cell_cover` are used, and `Recipe().clip_frames`).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

GRIDS = {"qwen2_5_vl": (2, 12), "llava_onevision": (1, 8)}  # (frames per token group, cells per side)
NUM_FRAMES = 8


def token_cover(scene, size: int, frames_per_group: int, side: int) -> torch.Tensor:
    """(groups, K, side, side): the share of each token's cell each object covers, averaged over the group's
    frames, from 8 uniformly sampled frames."""
    from specvlm.testbed.probe import cell_cover
    from specvlm.testbed.render import object_masks

    n = scene.n_frames
    indices = [int(i) for i in np.arange(NUM_FRAMES) * n // NUM_FRAMES]
    cover = cell_cover(object_masks(scene, size, indices), len(scene.objects), side)[:, 1:]  # (F, K, s, s)
    return cover.view(NUM_FRAMES // frames_per_group, frames_per_group, *cover.shape[1:]).mean(1)


def random_keep_hits(cover: torch.Tensor, keep: float, draws: int, rng: np.random.Generator) -> float:
    """Mean share, over `draws` random keeps of round(keep x tokens) tokens, of the (object, group) pairs with an
    overlapping token kept."""
    groups, k, side, _ = cover.shape
    touched = (cover > 0).permute(1, 0, 2, 3).reshape(k, -1)  # (K, tokens)
    pairs = (cover > 0).flatten(2).any(-1)  # (groups, K): the object is in that group at all
    if not pairs.any():
        return float("nan")
    n_tokens, n_keep = touched.shape[1], max(1, round(keep * touched.shape[1]))
    hits = []
    for _ in range(draws):
        kept = torch.zeros(n_tokens, dtype=torch.bool)
        kept[torch.from_numpy(rng.choice(n_tokens, n_keep, replace=False))] = True
        seen = (touched & kept).view(k, groups, side * side).any(-1).T  # (groups, K)
        hits.append(float((seen & pairs).sum() / pairs.sum()))
    return statistics.fmean(hits)


def measure(n_clips: int, seed: int) -> dict:
    from specvlm.testbed.export import clip_scene
    from specvlm.testbed.probe import MIN_COVER
    from specvlm.testbed.recipe import Recipe

    frames = tuple(Recipe().clip_frames)
    rng = np.random.default_rng(0)
    out = {}
    for family, (per_group, side) in GRIDS.items():
        any_share, labelled_share, keep10, keep01 = [], [], [], []
        for i in range(n_clips):
            scene = clip_scene(i, seed, frames)
            cover = token_cover(scene, 224, per_group, side)
            any_share.append(float((cover > 0).any(1).float().mean()))
            labelled_share.append(float((cover.max(1).values >= MIN_COVER).float().mean()))
            keep10.append(random_keep_hits(cover, 0.1, 200, rng))
            keep01.append(random_keep_hits(cover, 0.01, 200, rng))
        out[family] = {
            "tokens_overlapping_an_object": round(statistics.fmean(any_share), 4),
            "tokens_labelled_min_cover": round(statistics.fmean(labelled_share), 4),
            "random_keep_0.1_object_groups_seen": round(statistics.fmean([h for h in keep10 if h == h]), 3),
            "random_keep_0.01_object_groups_seen": round(statistics.fmean([h for h in keep01 if h == h]), 3),
        }
    return out


def main(argv=None) -> dict:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from specvlm.testbed.export import WORLD_VERSION

    from common import record, table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    result = measure(args.clips, args.seed)
    columns = list(next(iter(result.values())))
    body = (
        f"World version {WORLD_VERSION}, its first {args.clips} clips of seed {args.seed}, 224 px frames:\n\n"
        + table(["family", *(c.replace("_", " ") for c in columns)], [[f, *r.values()] for f, r in result.items()])
    )
    print(body)
    if args.record:
        record("testbed-overlap", "Testbed world: how sparse is the visual information (data level)?", body)
    return result


if __name__ == "__main__":
    main()
