"""Which build recipe makes a testbed target read the video? One-family builds of named recipe variants, each judged
by its target's video gap (issue 23, docs/DESIGN.md Testbed):

    python benchmarks/testbed_recipe_trials.py --variants v1,v5 [--family qwen2_5_vl] [--minutes 55] [--fp32]
                                               [--out testbed-trials] [--record]

Each variant is the recipe as it was before v16 became `Recipe()` (`UNTIL_V16`) with a few knobs changed, built
with `specvlm testbed build`'s own code (`build_testbed`, `--minutes` scaling the steps, seed 0) into OUT/<variant>.
Per variant the table gives the tower's colour read-out before the language steps, the target's validation answer
loss (packs or one-turn conversations, as it was trained), its video gap (the loss with another clip's video minus
with its own: what reading the video buys, ~0 when it ignores it; over every turn and on "which colours" alone)
after the warm-up (large-ball or the first dense stage) and at the end,
its greedy accuracy (all kinds, and the colour questions), and the pair's τ (chain γ=5, validation captions).
`--fp32` trains without bf16 autocast even where the CPU has bf16 units (`train.bf16_is_fast`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from specvlm.testbed.recipe import DenseStage  # noqa: E402

from common import record, table  # noqa: E402

QUESTIONS = ("color", "colors", "count", "direction", "order", "region")
# `Recipe()`'s knobs until v16 became them (December 2026; v17 added the position background): every variant below
# changes these, so each names the same recipe as when it ran. The step counts apply to the full recipe only
# (`--tiny` keeps the miniature's)
UNTIL_V16 = dict(
    textures={"qwen2_5_vl": "plain", "llava_onevision": "plain"},  # every variant before v17 ran on plain
    large_ball_share=0.5,
    freeze_vision=False,
    turns_per_step=0,
    shared_video=False,
    dense_stages=(),
    dense_mix=0.0,
    after_dense_lr=1.0,
)
UNTIL_V16_STEPS = dict(vision_steps={"target": 150, "draft": 150}, text_steps={"target": 600, "draft": 300})
FROZEN_NO_TEXT = {"freeze_vision": True, "text_steps": {"target": 0, "draft": 0}}
COLOUR_WARM_UP = dict(FROZEN_NO_TEXT, turns_per_step=4, warm_up_kinds=("colors",), large_ball_clips=320)
DENSE_COLOURS = dict(
    FROZEN_NO_TEXT,
    vision_steps={"target": 300, "draft": 300},
    large_ball_share=0.0,
    turns_per_step=17,
    shared_video=True,
    dense_stages=(DenseStage(0.34, ("colors",)),),
    after_dense_lr=0.25,
    dense_mix=0.5,
)
ONE_COLOUR = DenseStage(0.34, ("colors",), one_colour=True)
VARIANTS: dict[str, tuple[dict, str]] = {
    "base": ({}, "the recipe until v16: packs of 17 turns, text steps, the tower training with the probe"),
    "v1": (FROZEN_NO_TEXT, "tower frozen after its vision steps, no text steps"),
    "v2": (dict(FROZEN_NO_TEXT, warm_up_kinds=QUESTIONS), "v1, the large-ball steps on the questions only"),
    "v4": (
        dict(FROZEN_NO_TEXT, warm_up_kinds=QUESTIONS, turns_per_step=4),
        "v2 in one-turn batches of 4 (caption + 3 questions; no answer readable off another)",
    ),
    "v5": (
        COLOUR_WARM_UP,
        "one-turn batches of 4, the large-ball steps on 'which colours' only (the minimal run's task), 320 clips",
    ),
    "v7": (
        dict(COLOUR_WARM_UP, video_kinds=("colors",)),
        "v5, and the small-ball steps on 'which colours' only too (does reading the small balls last?)",
    ),
    "v8": (
        dict(COLOUR_WARM_UP, large_ball_mix=0.5),
        "v5, then half the small-ball steps on large balls (the large balls kept on)",
    ),
    "v9": (
        dict(COLOUR_WARM_UP, video_kinds=("colors",), large_ball_mix=0.5),
        "v7 with the large balls kept on: 'which colours' only, half the later steps on large balls",
    ),
    "v10": (
        DENSE_COLOURS,
        "the minimal runs' RL_2 in the build: a 300-step tower, every turn of a clip a step holding the video once, "
        "a third of the steps dense on 'which colours' alone, the rest on every turn at a quarter of the rate, half "
        "of them dense",
    ),
    "v11": (
        dict(DENSE_COLOURS, dense_stages=(ONE_COLOUR,)),
        "v10, the dense steps on the one-colour answers of 'which colours' only (the minimal runs' task)",
    ),
    "v12": (
        dict(DENSE_COLOURS, dense_stages=(ONE_COLOUR, DenseStage(0.34, ("colors", "count"), lr=0.25))),
        "v11, then a third of the steps dense on 'which colours' (every answer) and count at a quarter of the rate, "
        "then the rest as before (the minimal run G: count joins after the colours)",
    ),
    "v13": (
        dict(DENSE_COLOURS, dense_stages=(ONE_COLOUR,), after_dense_lr=0.5),
        "v11, the steps after the dense stage at half the rate instead of a quarter (the captions and the draft "
        "learn slowly at a quarter)",
    ),
    "v14": (
        dict(DENSE_COLOURS, dense_stages=(replace(ONE_COLOUR, share=0.5),)),
        "v11 with half the video steps in its one-colour dense stage instead of a third (does a longer stage start "
        "the reading where 402 steps did not?)",
    ),
    "v15": (
        dict(DENSE_COLOURS, dense_stages=(ONE_COLOUR, DenseStage(0.2, ("caption",), one_colour=True))),
        "v11, then a fifth of the video steps dense on the captions of one ball alone at the full rate (the minimal "
        "run E1: there the captions' colour words start reading)",
    ),
    "v16": (
        dict(DENSE_COLOURS, dense_stages=(DenseStage(0.34, ("caption",), one_colour=True),)),
        "v11 with its dense stage on the captions of one ball instead of the one-colour answers (the minimal run "
        "E3; v15's 237 caption steps were too few, and τ is measured on captions); the first world-3 bundle's recipe",
    ),
    "v17": (
        dict(
            DENSE_COLOURS,
            dense_stages=(DenseStage(0.34, ("caption",), one_colour=True),),
            textures={"qwen2_5_vl": "position", "llava_onevision": "position"},
        ),
        "v16 on the position background (the place words read on it in the minimal runs P1, two seeds; on plain "
        "they never did): does a build read the captions' places? `Recipe()` for Qwen2.5-VL since the bundle built on "
        "it (LLaVA-OneVision's pair stays on plain)",
    ),
}


@contextlib.contextmanager
def fp32_training(enabled: bool):
    """Training without bf16 autocast for the duration (the build asks `train.bf16_is_fast` at each step)."""
    from specvlm.testbed import train

    saved = train.bf16_is_fast
    if enabled:
        train.bf16_is_fast = lambda: False  # type: ignore[assignment]
    try:
        yield
    finally:
        train.bf16_is_fast = saved  # type: ignore[assignment]


def caption_colour_gaps(by_kind: dict) -> str:
    """The video gap on the captions' colour words, every mention / the first of each colour ("–" where not measured:
    builds before the key existed)."""
    return " / ".join(
        f"{by_kind[k]:+.4f}" if k in by_kind else "–" for k in ("caption colours", "caption first colours")
    )


def trial(name: str, args, recipe) -> list:
    from specvlm.testbed.build import build_testbed

    knobs, _ = VARIANTS[name]
    variant = replace(recipe, **UNTIL_V16, **({} if args.tiny else UNTIL_V16_STEPS))
    variant = replace(variant, **knobs)
    if not args.tiny:
        variant = variant.scaled(args.minutes)
    with fp32_training(args.fp32):
        report = build_testbed(
            Path(args.out) / name, recipe=variant, seed=0, families=(args.family,), force=True, threads=args.threads
        )
    fam = report["families"][args.family]
    target = fam["target"]  # its metrics.json, less the pair's τ
    train = target["train"]
    warm_up = train.get("large_ball_warm_up") or (train.get("dense_stages") or [{}])[0]  # the first warm-up
    tower = train.get("vision_pretraining", {}).get("probe_accuracy_before_language", {})
    return [
        name + (" (fp32)" if args.fp32 else ""),
        variant.steps["target"],
        f"{tower['color']:.0%}" if "color" in tower else "–",
        f"{target['validation_loss']:.3f}",
        f"{warm_up['video_gap']:+.4f}" if "video_gap" in warm_up else "–",
        f"{warm_up['video_gap_by_kind']['colors']:+.4f}" if "video_gap_by_kind" in warm_up else "–",
        f"{target['video_gap']:+.4f}",
        f"{target['video_gap_by_kind']['colors']:+.4f}" if "video_gap_by_kind" in target else "–",
        caption_colour_gaps(target.get("video_gap_by_kind", {})),
        f"{target['video_gap_by_kind']['caption places']:+.4f}"
        if "caption places" in target.get("video_gap_by_kind", {})
        else "–",
        f"{target['accuracy']:.0%}",
        f"{target['by_kind'].get('color', 0):.0%}",
        f"{target['by_kind'].get('colors', 0):.0%}",
        f"{fam['speculative']['chain_5']['tau']:.2f}",
    ]


def main(argv=None) -> str:
    from specvlm.testbed.recipe import Recipe, miniature

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="v5", help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--minutes", type=float, default=55.0, help="the build's budget, which sets its steps")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast, whatever the CPU")
    ap.add_argument("--out", default="testbed-trials")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the tests' miniature recipe
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"testbed_recipe_trials: unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    recipe = miniature() if args.tiny else Recipe()
    rows = [trial(name, args, recipe) for name in names]
    body = (
        f"{args.family}, one-family builds of `--minutes {args.minutes:g} --seed 0`, small-ball validation clips:\n\n"
        + table(
            [
                "variant",
                "target video steps",
                "tower: colour of ball cells",
                "val loss",
                "video gap after warm-up",
                "on 'which colours'",
                "video gap",
                "on 'which colours'",
                "on the captions' colour words (all / first mentions)",
                "on their place words",
                "accuracy",
                "'which colour'",
                "'which colours'",
                "τ chain γ=5",
            ],
            rows,
        )
        + "\n\n"
        + "\n".join(f"- {name}: {VARIANTS[name][1]}" for name in names)
    )
    print(body)
    if args.record:
        record("testbed-recipe-trials", "Testbed recipe trials: does the target read the video?", body)
    return body


if __name__ == "__main__":
    main()
