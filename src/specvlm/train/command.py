"""`specvlm train-head`: its options, defined without importing torch (a bad option fails at once); the run itself
is `run.run_from_args`."""

from __future__ import annotations

import argparse

from ..arguments import add_device_arguments
from ..inputs.arguments import add_frame_arguments
from .config import TrainConfig


def _run(args) -> int:
    from .run import run_from_args

    return run_from_args(args)


def add_train_head_parser(subparsers) -> argparse.ArgumentParser:
    """Register `specvlm train-head` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "train-head",
        help="distil an EagleVLM draft head from a target on video / image conversations",
        description="Online logit distillation of an EagleVLM draft head (fc + one decoder layer over the "
        "target's features, sharing its embeddings and LM head): the frozen target runs inside every "
        "step; the loss is 0.1 soft-CE + 1.0 SmoothL1 on the response tokens. The result is a folder "
        "for `specvlm generate --head DIR`.",
        epilog="example: specvlm train-head --target models/target --data world/train.jsonl --out heads/eagle "
        "--steps 1000 --lr 1e-3 --save-every 200",
    )
    add_train_arguments(parser)
    parser.set_defaults(func=_run)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `specvlm train-head`; pair with `parser.set_defaults(func=run_from_args)`."""
    g = parser.add_argument_group("models and data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--target", metavar="DIR", help="target model folder (weights, tokenizer, processor) or hub id")
    src.add_argument(
        "--tiny-smoke",
        metavar="FAMILY",
        help="smoke test only: a tiny RANDOM target of FAMILY (qwen2_5_vl, llava_onevision, ...) "
        "distilled on its own greedy answers to random prompts; nothing it learns is useful",
    )
    g.add_argument(
        "--data",
        metavar="PATH",
        help="JSONL of {video | image | images, conversation} records (paths relative to the file), "
        "a testbed world folder (its train.jsonl), or a .pt list of examples",
    )
    g.add_argument("--split", default="train", help="with a world folder as --data: which split (default train)")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N records of --data only")
    g.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the trained head and its checkpoints (must be new or empty, unless --resume or --overwrite)",
    )
    g.add_argument("--init", metavar="DIR", help="start from a saved head instead of a fresh one")
    g.add_argument(
        "--arch",
        choices=("eagle2", "eagle3"),
        default="eagle2",
        help="eagle2 (default): EagleVLM's head over the target's last features; eagle3: an EAGLE-3 head over "
        "its low / middle / high layers, with its own draft vocabulary, trained with the training-time test, "
        "saved in SpecForge / SGLang's layout",
    )
    g.add_argument(
        "--draft-vocab",
        type=int,
        metavar="N",
        help="eagle3: draft over the N target tokens the data's responses use most (default: every token)",
    )
    g.add_argument(
        "--ttt-steps",
        type=int,
        metavar="K",
        default=TrainConfig.ttt_steps,
        help=f"eagle3: drafting steps unrolled in training (default {TrainConfig.ttt_steps}, as SpecForge)",
    )
    add_device_arguments(g, what="target weights (the head trains in float32)")
    g.add_argument(
        "--tiny-examples",
        type=int,
        default=64,
        metavar="N",
        help="--tiny-smoke: random prompts to self-distil (default 64)",
    )
    add_frame_arguments(parser.add_argument_group("media sampling (as in specvlm generate)"))
    c = parser.add_argument_group("elastic visual compressor (shortens the head's visual span, never the target's)")
    c.add_argument(
        "--compressor",
        default="none",
        metavar="MODE|BRANCH",
        help="none (default); select (SpecVLM: a gate picks one branch per input), weighted or concat; "
        "or one fixed branch: prune:R, prune_random:R, pool:R, conv:R (R<=5), resampler:Q, text, or "
        "verifier:R (the target's text->visual attention picks the kept tokens)",
    )
    c.add_argument(
        "--compressor-branches",
        metavar="LIST",
        help="select/weighted/concat: comma-separated branches (default select: "
        "prune:20,pool:20,conv:3,resampler:2,text)",
    )
    c.add_argument(
        "--compressor-ratio", type=int, metavar="R", default=3, help="weighted mode: the shared ratio (default 3)"
    )
    c.add_argument(
        "--budget-weight",
        type=float,
        metavar="W",
        default=0.0,
        help="select mode: weight of the expected kept-token fraction in the loss (default 0)",
    )
    t = parser.add_argument_group("optimisation")
    d = TrainConfig()
    t.add_argument("--steps", type=int, metavar="N", default=d.steps, help=f"optimizer steps (default {d.steps})")
    t.add_argument(
        "--lr", type=float, metavar="X", default=d.lr, help=f"AdamW learning rate (default {d.lr}; no warmup)"
    )
    t.add_argument(
        "--batch",
        "--batch-size",
        dest="batch_size",
        type=int,
        metavar="N",
        default=d.batch_size,
        help="examples per micro-step (default 1)",
    )
    t.add_argument(
        "--grad-accum",
        type=int,
        metavar="N",
        default=d.grad_accum,
        help="micro-steps per optimizer step (default 1); effective batch = batch * grad-accum",
    )
    t.add_argument(
        "--clip",
        "--clip-grad",
        dest="clip_grad",
        type=float,
        metavar="V",
        default=d.clip_grad,
        help=f"clip gradients by value (default {d.clip_grad}; 0: off)",
    )
    t.add_argument(
        "--noise",
        "--feature-noise",
        dest="feature_noise",
        type=float,
        metavar="A",
        default=d.feature_noise,
        help="a in U(-a, a) added to the head's input features (default 0; EAGLE uses 0.1)",
    )
    t.add_argument(
        "--logit-weight", type=float, metavar="W", default=d.logit_weight, help="soft cross-entropy weight (0.1)"
    )
    t.add_argument(
        "--feature-weight", type=float, metavar="W", default=d.feature_weight, help="SmoothL1 feature weight (1.0)"
    )
    t.add_argument("--seed", type=int, metavar="N", default=d.seed, help="head init, data order and noise (default 0)")
    t.add_argument(
        "--save-every",
        "--checkpoint-every",
        dest="checkpoint_every",
        type=int,
        default=0,
        metavar="N",
        help="also save OUT/checkpoint-<step> every N steps (default 0: the final save only)",
    )
    t.add_argument(
        "--cache-target",
        action="store_true",
        help="keep the frozen target's outputs per example in memory after their first use: the same "
        "result, much faster over several epochs (memory ~ examples x length x (2 hidden + vocab) "
        "floats)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out (its newest checkpoint) up to --steps, exactly as an "
        "uninterrupted run would",
    )
    t.add_argument("--overwrite", action="store_true", help="replace a previous run saved in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print one JSON summary")
