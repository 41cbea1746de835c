"""Issue 23's goals measured on one family of a (pilot) testbed build, lean enough for one CPU core:

    python benchmarks/testbed_v3_pilot.py --models OUT/models --world OUT/world [--family qwen2_5_vl]
        [--clips 8] [--acc-clips 20] [--unseen-seed 1] [--max-new-tokens 64]

On the build's test split, and on a world rendered with `--unseen-seed` (a seed the build never used):
1. answer accuracy per kind of target and draft against the majority baseline (bench_testbed's);
2. draft τ (chain γ=5, greedy) with the full video, random keep 0.01, SpecVLM keep 0.1, random keep 0.1, uniform
   keep 0.05; self-speculation τ at SpecVLM 0.1, random 0.1, uniform 0.05, random 0.01;
3. where the verifier looks: the share of the verifier's attention mass (the scores SpecVLM prunes with) on
   tokens whose cell an object covers (probe labels), next to those tokens' share of the grid, and the share of
   object tokens inside the top 10 % of scores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_testbed import accuracy_rows, load, majority_baseline, tau_curve  # noqa: E402

from common import table  # noqa: E402

DRAFT_SETTINGS = [("none", 1.0), ("random", 0.01), ("specvlm", 0.1), ("random", 0.1), ("uniform", 0.05)]
SELF_SETTINGS = [("specvlm", 0.1), ("random", 0.1), ("uniform", 0.05), ("random", 0.01)]


@torch.no_grad()
def attention_on_objects(target, clips, fmt) -> dict:
    """The verifier's caption-prompt attention scores (AttentionCapture, as SpecVLM's pruning gets them) against
    the probe's object labels: mass on object tokens, their share of tokens, object recall in the top 10 %."""
    from specvlm.adapters import adapter_for
    from specvlm.adapters.capture import AttentionCapture

    adapter = adapter_for(target)
    mass, share, recall = [], [], []
    for clip in clips:
        inputs = fmt.inputs(clip, fmt.prompt(clip.turns[0][0], clip.n_visual))
        visual = (inputs["input_ids"][0] == fmt.video_id).nonzero().flatten()
        with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
            target(**inputs)
        scores = capture.scores.float()
        obj = clip.labels[:, 0] > 0  # -100 (LLaVA's newline) and 0 (background) are not objects
        mass.append(float(scores[obj].sum() / scores.sum()))
        share.append(float(obj.float().mean()))
        top = torch.topk(scores, max(1, int(0.1 * scores.numel()))).indices
        recall.append(float(obj[top].sum() / max(int(obj.sum()), 1)))
    return {
        "attention_mass_on_object_tokens": round(statistics.fmean(mass), 3),
        "object_token_share": round(statistics.fmean(share), 3),
        "object_tokens_in_top_10pct": round(statistics.fmean(recall), 3),
    }


def evaluate(label, target, draft, clips, fmt, world, args) -> str:
    parts = []
    t0 = time.time()
    if args.acc_clips:
        rows = accuracy_rows(
            {"target": target, "draft": draft}, clips[: args.acc_clips], fmt, majority_baseline(world, clips), 1000
        )
        parts.append(
            f"**Answer accuracy** ({label}, {args.acc_clips} clips, every question):\n\n"
            + table(["kind", "target", "draft", "majority baseline", "questions"], rows)
        )
        print(parts[-1], f"\n({time.time() - t0:.0f} s)", flush=True)
    tau_clips = clips[: args.clips]
    header = ["pruning", "keep", "τ median", "τ min", "τ max", "τ mean", "kept share", "lossless"]
    t0 = time.time()
    parts.append(
        f"**Draft τ** ({label}, {len(tau_clips)} captions, chain γ=5, {args.max_new_tokens} new tokens):\n\n"
        + table(header, tau_curve(target, draft, tau_clips, fmt, DRAFT_SETTINGS, args.max_new_tokens))
    )
    print(parts[-1], f"\n({time.time() - t0:.0f} s)", flush=True)
    t0 = time.time()
    parts.append(
        f"**Self-speculation τ** ({label}):\n\n"
        + table(header, tau_curve(target, "self", tau_clips, fmt, SELF_SETTINGS, args.max_new_tokens))
    )
    print(parts[-1], f"\n({time.time() - t0:.0f} s)", flush=True)
    parts.append(f"**Where the verifier looks** ({label}): " + json.dumps(attention_on_objects(target, tau_clips, fmt)))
    print(parts[-1], flush=True)
    return "\n\n".join(parts)


def main(argv=None) -> str:
    from specvlm.inputs import load_processor
    from specvlm.testbed import generate_world
    from specvlm.testbed.recipe import Recipe
    from specvlm.testbed.train import Formatter, load_clips

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True)
    ap.add_argument("--world", required=True, help="the build's world folder")
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--clips", type=int, default=8, help="captions for τ")
    ap.add_argument("--acc-clips", type=int, default=20, help="clips whose questions are scored")
    ap.add_argument("--unseen-seed", type=int, default=1, help="world seed the build never used (-1: skip)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    recipe = Recipe()
    target_dir = Path(args.models) / args.family / "target"
    target, draft = load(target_dir), load(Path(args.models) / args.family / "draft")
    processor = load_processor(target_dir)
    fmt = Formatter(processor)
    world = Path(args.world)
    n = max(args.clips, args.acc_clips)
    clips = load_clips(world, "test", processor, recipe.num_frames, limit=n, pixel_dtype=torch.float32)
    out = [evaluate("test split", target, draft, clips, fmt, world, args)]
    if args.unseen_seed >= 0:
        unseen = world.parent / f"world-seed{args.unseen_seed}"
        generate_world(
            unseen,
            10 * n,
            seed=args.unseen_seed,
            frames=tuple(recipe.clip_frames),
            size=recipe.world_size,
            questions=recipe.questions,
            workers=1,
        )
        clips = load_clips(unseen, "test", processor, recipe.num_frames, limit=n, pixel_dtype=torch.float32)
        out.append(evaluate(f"world seed {args.unseen_seed}", target, draft, clips, fmt, world, args))
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
