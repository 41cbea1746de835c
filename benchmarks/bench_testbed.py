"""Do the bundled testbed models read the video? Issue 23's goals on the held-out test split of the build's world
and on a world rendered with a seed the build never used, per family:

    python benchmarks/bench_testbed.py [--family qwen2_5_vl] [--models OUT/models] [--clips 12] [--max-new-tokens 64]
                                       [--unseen-seed 1] [--record]

1. Answer accuracy per question kind of the target and the draft (greedy, every test question), next to the
   majority baseline (always answer the train split's most frequent answer of that kind).
2. Draft τ (draft tokens accepted per round, γ=5 chain, greedy) on the test captions vs the share of visual tokens
   the draft's prompt keeps, per pruning method (specvlm / uniform / random / attention); random keep 0.01 is the
   "almost no video" reference. Median and min–max over clips; every output checked equal to `target.generate`.
3. The same curve for self-speculation (the target drafts from its own pruned prompt).
4. Where the verifier looks: the share of its caption-prompt attention scores (those SpecVLM prunes with) on the
   visual tokens a ball covers (the probe's labels), those tokens' share, and how many of them are in its top 10 %.
5. Issue 23's goals, met or not (`goal_rows`), per world.
6. Per-token decode cost of target and draft ((t(1 + n tokens) − t(1 token)) / n, median of interleaved repeats),
   with HF eager `generate` and with HF's compiled static-cache `generate` (per-forward overhead mostly gone: the
   cost ratio then follows the models' compute more closely).

The world is regenerated from the build's seed (`Recipe()`'s 400 clips, seed 0), so the test clips are the ones the
models never saw; the unseen world (`--unseen-clips` clips of seed `--unseen-seed`) is one they never saw at all.
1-5 run on both worlds, 6 on the first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from specvlm import SpeculativeGenerator

from common import hf_static_config, record, table

METHODS = ("specvlm", "uniform", "random", "attention")
GOAL_KINDS = ("color", "region", "count", "direction")  # the kinds issue 23's accuracy goal names


def load(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()


def majority_baseline(world: Path, test_clips) -> dict[str, float]:
    """Per kind: accuracy on the test questions of always giving the train split's most frequent answer."""
    import json

    from specvlm.testbed import is_correct

    counts: dict[str, Counter] = {}
    for line in (world / "train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["answer"] is not None:
            counts.setdefault(row["kind"], Counter())[row["answer"]] += 1
    hits: dict[str, list[bool]] = {}
    for clip in test_clips:
        for _, _, answer, kind in clip.turns:
            if answer is not None:
                guess = counts[kind].most_common(1)[0][0] if kind in counts else ""
                hits.setdefault(kind, []).append(is_correct(f"{guess}.", answer))
    return {k: statistics.fmean(v) for k, v in hits.items()}


def accuracy_rows(models: dict, clips, fmt, baseline: dict, per_clip: int) -> list[list]:
    from specvlm.testbed.train import answer_accuracy

    per_role = {role: answer_accuracy(m, clips, fmt, per_clip=per_clip) for role, m in models.items()}
    asked = [t[3] for c in clips for t in [t for t in c.turns if t[2] is not None][:per_clip]]
    kinds = sorted(per_role["target"]["by_kind"])
    rows = [
        [k, per_role["target"]["by_kind"][k], per_role["draft"]["by_kind"][k], round(baseline[k], 3), asked.count(k)]
        for k in kinds
    ]
    rows.append(
        [
            "all",
            per_role["target"]["accuracy"],
            per_role["draft"]["accuracy"],
            round(statistics.fmean(baseline[k] for k in asked), 3),
            per_role["target"]["questions"],
        ]
    )
    return rows


def tau_curve(target, draft, clips, fmt, settings, max_new_tokens: int) -> list[list]:
    """One row per (method, keep): median, min and max over clips of τ, kept tokens, and losslessness."""
    prompts = [fmt.inputs(c, fmt.prompt(c.turns[0][0], c.n_visual)) for c in clips]
    reference = [
        target.generate(**p, max_new_tokens=max_new_tokens, do_sample=False)[0, p["input_ids"].shape[1] :].tolist()
        for p in prompts
    ]
    rows = []
    for method, keep in settings:
        options = dict(tree="chain", num_draft_tokens=5)
        if method != "none":
            options.update(pruning=method, visual_keep_ratio=keep)
        gen = SpeculativeGenerator(target, draft, **options)
        taus, kept, same = [], [], 0
        for p, ref in zip(prompts, reference):
            out = gen.generate(**p, max_new_tokens=max_new_tokens, do_sample=False)
            taus.append(out.stats.mean_accepted_tokens)
            kept.append(out.stats.kept_visual_tokens / max(out.stats.visual_tokens, 1))
            same += out.token_ids == ref
        rows.append(
            [
                method,
                keep,
                round(statistics.median(taus), 2),
                round(min(taus), 2),
                round(max(taus), 2),
                round(statistics.fmean(taus), 2),
                round(statistics.fmean(kept), 3),
                f"{same}/{len(prompts)}",
            ]
        )
    return rows


@torch.no_grad()
def attention_on_objects(target, clips, fmt) -> dict:
    """The verifier's caption-prompt attention scores (AttentionCapture, as SpecVLM's pruning gets them) against
    the probe's object labels: mass on object tokens, their share of the tokens, object recall in the top 10 %."""
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
        ball = clip.labels[:, 0] > 0  # -100 (LLaVA's newline) and 0 (background) are not objects
        mass.append(float(scores[ball].sum() / scores.sum()))
        share.append(float(ball.float().mean()))
        top = torch.topk(scores, max(1, int(0.1 * scores.numel()))).indices
        recall.append(float(ball[top].sum() / max(int(ball.sum()), 1)))
    return {
        "attention mass on ball tokens": round(statistics.fmean(mass), 3),
        "ball tokens' share": round(statistics.fmean(share), 3),
        "ball tokens in the top 10 %": round(statistics.fmean(recall), 3),
    }


def goal_rows(accuracy: list[list] | None, draft: list[list], self_spec: list[list]) -> list[list]:
    """Issue 23's goals from `accuracy_rows` and two `tau_curve`s (τ: the mean over clips): [goal, measured, met]."""
    tau = {(r[0], r[1]): r[5] for r in draft}
    own = {(r[0], r[1]): r[5] for r in self_spec}
    rows = []
    if accuracy is not None:
        for kind, target_acc, _, baseline, _ in (r for r in accuracy if r[0] in GOAL_KINDS):
            rows.append(
                [
                    f"target answers {kind} ≥ 60 % and ≥ baseline + 15 points",
                    f"{target_acc:.0%} (baseline {baseline:.0%})",
                    target_acc >= 0.6 and target_acc >= baseline + 0.15,
                ]
            )
    full, blind = tau[("none", 1.0)], tau[("random", 0.01)]
    spec, rand, uni = tau[("specvlm", 0.1)], tau[("random", 0.1)], tau[("uniform", 0.05)]
    rows += [
        [
            "draft τ full ≥ 1.3 × random keep 0.01",
            f"{full:.2f} vs {blind:.2f} ({full / blind:.2f}×)",
            full >= 1.3 * blind,
        ],
        ["SpecVLM 0.1 ≥ 0.9 × full", f"{spec:.2f} vs {full:.2f} ({spec / full:.2f}×)", spec >= 0.9 * full],
        ["SpecVLM 0.1 ≥ random 0.1 + 0.3", f"{spec:.2f} vs {rand:.2f} ({spec - rand:+.2f})", spec >= rand + 0.3],
        ["SpecVLM 0.1 > uniform 0.05", f"{spec:.2f} vs {uni:.2f}", spec > uni],
    ]
    s_spec, s_rand, s_uni = own[("specvlm", 0.1)], own[("random", 0.1)], own[("uniform", 0.05)]
    rows.append(
        [
            "self-speculation: SpecVLM 0.1 > random 0.1 and > uniform 0.05",
            f"{s_spec:.2f} vs {s_rand:.2f} and {s_uni:.2f}",
            s_spec > s_rand and s_spec > s_uni,
        ]
    )
    return [[goal, measured, "yes" if met else "no"] for goal, measured, met in rows]


def decode_ms(models: dict, prompt: dict, new_tokens: int, repeats: int, **generate_kwargs) -> dict[str, float]:
    """Median ms per decoded token of each model, (t(1 + n) − t(1)) / n, the models interleaved per repeat;
    `generate_kwargs` choose HF's decoding (e.g. its compiled static cache)."""

    def timed(model, n):
        start = time.perf_counter()
        model.generate(**prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, **generate_kwargs)
        return time.perf_counter() - start

    samples: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        timed(m, 1 + new_tokens)  # warm-up (and compile)
    for _ in range(repeats):
        for k, m in models.items():
            samples[k].append((timed(m, 1 + new_tokens) - timed(m, 1)) / new_tokens * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def pair_dirs(family: str, models: str | None) -> tuple[Path, Path]:
    """(target, draft) folders of `family`: under a build's models folder, or the bundled pair."""
    from specvlm.testbed.assets import bundled_pair

    return (Path(models) / family / "target", Path(models) / family / "draft") if models else bundled_pair(family)


def world_textures(families, models: str | None) -> dict[str, str]:
    """{family: the background its target was trained on}: its test worlds are rendered on it."""
    from specvlm.testbed.assets import trained_texture

    return {f: trained_texture(pair_dirs(f, models)[0]) for f in families}


def run_family(family: str, worlds: list[tuple[str, Path]], background: str, args) -> str:
    """The findings on `worlds` (rendered on `background`, the one the family's target was trained on)."""
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import Recipe
    from specvlm.testbed.train import Formatter, load_clips

    target_dir, draft_dir = pair_dirs(family, args.models)
    target, draft = load(target_dir), load(draft_dir)
    processor = load_processor(target_dir)
    fmt = Formatter(processor)
    recipe = Recipe()
    parts = []
    for label, folder in worlds:
        clips = load_clips(folder, "test", processor, recipe.num_frames, pixel_dtype=torch.float32)
        print(f"{family}: {len(clips)} test clips of {label}", flush=True)
        parts += findings(target, draft, fmt, folder, clips, label, args)
    parts.append(decode_costs(target, draft, fmt, clips, args))
    return f"### {family} ({args.models or 'bundled'}, {background} background)\n\n" + "\n\n".join(parts)


def findings(target, draft, fmt, world: Path, clips, label: str, args) -> list[str]:
    """Parts 1-5 of the module docstring on `clips` of `world` (`label` names it)."""
    from specvlm.testbed.recipe import Recipe

    parts, rows = [], None
    if not args.skip_accuracy:
        rows = accuracy_rows(
            {"target": target, "draft": draft}, clips, fmt, majority_baseline(world, clips), args.questions_per_clip
        )
        asked = (
            "every question"
            if args.questions_per_clip >= Recipe().questions
            else f"the first {args.questions_per_clip} questions of each clip"
        )
        parts.append(
            f"**Answer accuracy** ({label}, {len(clips)} test clips, {asked}, greedy):\n\n"
            + table(["kind", "target", "draft", "majority baseline", "questions"], rows)
        )
        print(parts[-1], flush=True)
    tau_clips = clips[: args.clips]
    keeps = sorted({float(k) for k in args.keep_ratios.split(",")} | {0.1, 0.05}, reverse=True)  # the goals' too
    settings = [("none", 1.0)] + [(m, k) for k in keeps for m in METHODS] + [("random", 0.01)]
    header = ["pruning", "keep", "τ median", "τ min", "τ max", "τ mean", "kept share", "lossless"]
    draft_rows = tau_curve(target, draft, tau_clips, fmt, settings, args.max_new_tokens)
    parts.append(
        f"**Draft τ vs visual tokens kept** ({label}, {len(tau_clips)} test captions, chain γ=5, "
        f"{args.max_new_tokens} new tokens):\n\n" + table(header, draft_rows)
    )
    print(parts[-1], flush=True)
    self_settings = [(m, k) for k in keeps for m in METHODS] + [("random", 0.01)]
    self_rows = tau_curve(target, "self", tau_clips, fmt, self_settings, args.max_new_tokens)
    parts.append(
        f"**Self-speculation τ vs visual tokens kept** ({label}, the target drafting from its pruned prompt, "
        f"same captions):\n\n" + table(header, self_rows)
    )
    print(parts[-1], flush=True)
    looks = attention_on_objects(target, tau_clips, fmt)
    parts.append(f"**Where the verifier looks** ({label}): " + ", ".join(f"{k} {v:.1%}" for k, v in looks.items()))
    parts.append(
        f"**Issue 23's goals** ({label}):\n\n"
        + table(["goal", "measured", "met"], goal_rows(rows, draft_rows, self_rows))
    )
    print(*parts[-2:], sep="\n\n", flush=True)
    return parts


def decode_costs(target, draft, fmt, clips, args) -> str:
    """Part 6: each model's per-token decode cost under HF eager and HF compiled static-cache `generate`."""
    prompt = fmt.inputs(clips[0], fmt.prompt(clips[0].turns[0][0], clips[0].n_visual))
    costs = {"HF eager `generate`": {}}
    if not args.no_compile:
        costs["HF compiled static-cache `generate`"] = dict(
            cache_implementation="static", compile_config=hf_static_config(target.device)
        )
    lines = []
    for name, kwargs in costs.items():
        ms = decode_ms({"target": target, "draft": draft}, prompt, args.cost_tokens, args.repeats, **kwargs)
        lines.append(
            f"{name}: target {ms['target']:.2f} ms, draft {ms['draft']:.2f} ms, ratio "
            f"**{ms['target'] / ms['draft']:.2f}×**"
        )
    line = f"**Decode cost per token** (median of {args.repeats} interleaved repeats): " + "; ".join(lines) + "."
    print(line, flush=True)
    return line


def main(argv=None) -> str:
    from specvlm.testbed import generate_world
    from specvlm.testbed.recipe import FAMILIES, Recipe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=FAMILIES, action="append", help="default: both")
    ap.add_argument(
        "--world",
        help="the build's world folder, generated there if it holds another (default: regenerated into a temporary "
        "folder on each family's background; one background only)",
    )
    ap.add_argument(
        "--world-clips",
        type=int,
        default=Recipe().n_clips,
        help="clips of the world (default: the build's; fewer only to try the script out)",
    )
    ap.add_argument(
        "--models", help="a build's models folder (OUT/models of `specvlm testbed build`; default: the bundled pairs)"
    )
    ap.add_argument("--clips", type=int, default=12, help="test captions for the τ curves (default 12)")
    ap.add_argument("--unseen-seed", type=int, default=1, help="seed of the world the build never used (-1: none)")
    ap.add_argument("--unseen-clips", type=int, default=100, help="its clips (10 %% of them are its test split)")
    ap.add_argument("--keep-ratios", default="0.25,0.1,0.05")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled decode cost (a quick run)")
    ap.add_argument("--cost-tokens", type=int, default=32, help="tokens per decode-cost measurement")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--questions-per-clip", type=int, default=1000, help="questions scored per test clip (default: all)"
    )
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--record", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    ap.add_argument("--label", default="bundled", help="names the recorded section (default: bundled)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    recipe = Recipe()
    families = args.family or FAMILIES
    textures = world_textures(families, args.models)
    if args.world and len(set(textures.values())) > 1:
        raise SystemExit(
            f"bench_testbed: --world is one background, these families were trained on several ({textures}); "
            "leave --world out or pass one --family"
        )

    def render(folder: Path, clips: int, seed: int, texture: str) -> Path:
        generate_world(
            folder,
            clips,
            seed=seed,
            frames=tuple(recipe.clip_frames),
            size=recipe.world_size,
            questions=recipe.questions,
            workers=2,
            texture=texture,
        )
        return folder

    with tempfile.TemporaryDirectory() as tmp:
        worlds: dict[str, list[tuple[str, Path]]] = {}  # by background: the build's world, the unseen one
        for texture in dict.fromkeys(textures.values()):
            own = Path(args.world) if args.world else Path(tmp) / f"world-{texture}"
            worlds[texture] = [("the build's world (seed 0), test split", render(own, args.world_clips, 0, texture))]
            if args.unseen_seed >= 0:
                unseen = Path(tmp) / f"world-{texture}-seed{args.unseen_seed}"
                render(unseen, args.unseen_clips, args.unseen_seed, texture)
                worlds[texture].append((f"an unseen world (seed {args.unseen_seed})", unseen))
        body = "\n\n".join(run_family(f, worlds[textures[f]], textures[f], args) for f in families)
    if args.record:
        record(
            f"testbed-findings-{args.label}",
            f"Testbed findings, {args.label} pairs: do the models read the video?",
            body,
        )
    return body


if __name__ == "__main__":
    main()
