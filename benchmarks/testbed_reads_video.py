"""Does a freshly initialised testbed target learn to read the visual tokens? The experiment behind the build's
large-ball warm-up and mix (issue 23, docs/DESIGN.md Testbed):

    python benchmarks/testbed_reads_video.py [--family qwen2_5_vl] [--frames 8] [--large-steps 400] [--steps 400]
        [--mix 0.5] [--ball small|medium] [--text-steps 600] [--align none|answer|caption]
        [--kinds colors,color,region,count,direction,order] [--layout pack|shared] [--eval-questions 5]
        [--warm-frames 2] [--dense-steps 400 --dense-keep 0.1 --dense-mix 0.5 --dense-kinds colors]
        [--dense-mix-kinds colors] [--last-lr 5e-4] [--vision-steps 300] [--init-seed 1] [--val-clips 60]

One family's target, its vision tower and projector first trained on the visual-token probe (`pretrain_vision`)
and then frozen; then the language model alone on one question kind ("which colours do the balls have", answers
naming one colour: the one fact that needs no binding), no caption, no text steps: `--large-steps` on a world of
large balls, then `--steps` on the world itself (`--ball`: small balls), each of them on a large-ball clip instead
with probability `--mix`. Every `--every` steps the validation answer loss with each clip's own video and with
another clip's: the gap is what reading the video buys (none: the model ignores it), and greedy accuracy.
`--large-steps 0` is the control: the small balls alone. Two other ways tried: `--text-steps` first trains the
caption then the question without the video (the answer can be copied from the caption), and `--align` fixes the
probe's colour read-out to the language model's input embeddings of the colour names (`probe.WordAligned`), so a
ball's visual token looks like its colour's word. `--kinds` trains and scores other question kinds too, and
`--layout shared` trains each clip's turns as one-turn conversations that hold the video once (`Formatter.shared`):
every question of the clip is an answer to learn from, at about the cost of one. `--warm-frames` runs the
large-ball warm-up at fewer frames (fewer visual tokens, cheaper steps) than the rest. `--dense-steps` is another
warm-up on the world itself: each clip's visual tokens pruned to those a ball covers and `--dense-keep` of the
others, so the information is dense without changing what a ball's token looks like (`--dense-mix`: such steps
kept on afterwards). The tower's read-out accuracy on the validation clips is printed before the language steps:
whether the reading starts followed it (300 vision steps: ~97 % colour; 100: 57–89 %, by `--init-seed`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import table  # noqa: E402


def one_colour_turns(
    clips, kinds, caption: bool = False, every_colours: bool = False, one_colour_captions=False, one_ball=False
):
    """The clips with only their turns of `kinds`, the "which colours" ones only where the answer names one colour
    (unless `every_colours`: `train.one_colour_answers`), the captions only where they name one colour with
    `one_colour_captions`, after the caption when `caption`; with `one_ball` only the clips of one ball (their caption
    names one colour: any question about a ball is about that one); clips without any are dropped."""
    from specvlm.testbed.train import names_one_colour, one_ball_captions, one_colour_answers, only_kinds

    out = []
    for clip in clips:
        if one_ball and not any(t[3] == "caption" and names_one_colour(t[1]) for t in clip.turns):
            continue
        if one_colour_captions:
            clip = one_ball_captions(clip)
        asked = only_kinds(clip if every_colours else one_colour_answers(clip), tuple(kinds))
        if asked.turns:
            out.append(replace(clip, turns=[t for t in clip.turns if caption and t[3] == "caption"] + asked.turns))
    return out


@torch.no_grad()
def evaluate(model, fmt, clips, per_clip: int) -> tuple[float, float, dict, dict]:
    """(answer loss with each clip's video, with the next clip's video, greedy accuracy by question kind over each
    clip's first `per_clip` questions, the gap by kind of turn). The losses are each clip's mean over its turns'
    answer tokens, each turn a one-turn conversation (one sequence holding the video once: `Formatter.shared`),
    then the mean over clips. The gap by kind (`build.video_gap_by_kind`, per answer token; with captions also on
    their colour words alone) is given where the clips ask more than one kind or have captions."""
    from specvlm.testbed.build import video_gap_by_kind
    from specvlm.testbed.train import answer_accuracy, answer_token_losses

    own, other = (
        [
            float(losses[target != -100].mean())
            for target, losses in answer_token_losses(model, clips, fmt, another, True)
        ]
        for another in (False, True)
    )
    accuracy = answer_accuracy(model, clips, fmt, per_clip=per_clip, max_new_tokens=16)
    by_kind = video_gap_by_kind(model, clips, fmt, single_turns=True)
    return statistics.fmean(own), statistics.fmean(other), accuracy, by_kind if len(by_kind) > 1 else {}


def gaps_text(by_kind: dict) -> str:
    return ", ".join(f"{k} {v:+.3f}" for k, v in by_kind.items()) or "–"


def majority_baseline(train, val, per_clip: int) -> dict:
    """By question kind, the accuracy of always giving the kind's most common training answer, over the questions
    `evaluate` scores (each validation clip's first `per_clip`)."""
    from collections import Counter

    from specvlm.testbed.language import is_correct

    common = {}
    for kind in {t[3] for clip in train for t in clip.turns if t[2] is not None}:
        common[kind] = Counter(t[2] for clip in train for t in clip.turns if t[3] == kind).most_common(1)[0][0]
    hits: dict = {}
    for clip in val:
        for _, _, answer, kind in [t for t in clip.turns if t[2] is not None][:per_clip]:
            hits.setdefault(kind, []).append(kind in common and is_correct(common[kind], answer))
    flat = [h for v in hits.values() for h in v]
    overall = statistics.fmean(flat) if flat else None  # None: captions alone
    return {"accuracy": overall, "by_kind": {k: statistics.fmean(v) for k, v in sorted(hits.items())}}


def accuracy_text(accuracy: dict) -> str:
    kinds = accuracy["by_kind"]
    if accuracy["accuracy"] is None:  # captions alone: no question to score
        return "–"
    if len(kinds) == 1:
        return f"{accuracy['accuracy']:.0%}"
    return f"{accuracy['accuracy']:.0%} (" + ", ".join(f"{k} {v:.0%}" for k, v in kinds.items()) + ")"


def train_language(
    model, fmt, clips, val, steps, args, stage, rows, mixed_in=None, text=False, dense=0.0, lr=None, dense_kinds=""
) -> None:
    """AdamW on the language model (the vision side frozen), one clip a step; a row every `args.every` steps
    (no validation when `val` is empty). `mixed_in`: clips of which a step draws one instead with probability
    `args.mix` (the large balls kept on). `text`: without the video, the turns in order (the caption first).
    `args.layout`: "pack", the clip's turns as one multi-turn chat in a random order, each answer token weighing
    the same; "shared", each turn its own one-turn conversation, the video held once (`Formatter.shared`), the
    loss the mean of theirs (`example_loss`). `dense`: the share of steps that see only the ball tokens and
    `args.dense_keep` of the others (`train.dense_visual`; layout "shared"), asking only the turns of
    `dense_kinds` (comma-separated) where the clip has any. `lr`: the stage's peak (default
    `args.lr`): each stage warms up to it and decays to a tenth of it."""
    from specvlm.testbed.train import dense_visual, example_loss, lr_at, mixed_stream

    params = [
        p for n, p in model.named_parameters() if "visual" not in n and "vision" not in n and "projector" not in n
    ]
    peak = lr or args.lr
    opt = torch.optim.AdamW(params, lr=peak, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(args.seed if args.init_seed is None else [args.seed, args.init_seed])
    stream, losses, start = mixed_stream(clips, mixed_in, args.mix, rng), [], time.perf_counter()
    model.train()
    with torch.enable_grad():
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, peak, 0.05)
            clip = next(stream)
            order = range(len(clip.turns)) if text else [int(k) for k in rng.permutation(len(clip.turns))]
            keep = dense_visual(clip, args.dense_keep, rng) if dense and rng.random() < dense else None
            if keep is not None and dense_kinds:
                asked = [k for k in order if clip.turns[k][3] in dense_kinds.split(",")]
                order, keep = (asked, keep) if asked else (order, None)
            if args.layout == "shared" and not text:
                loss = example_loss(
                    model, fmt, clip, order, autocast=False, single_turns=True, shared_video=True, keep=keep
                )
            else:
                ids, labels, _ = fmt.example(clip, order, video=not text)
                logits = model(**fmt.inputs(clip, ids, video=not text)).logits[0, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:]), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if (step + 1) % args.every == 0 or step + 1 == steps:
                model.eval()
                train_loss = f"{statistics.fmean(losses[-args.every :]):.3f}"
                if val:
                    own, other, acc, by_kind = evaluate(model, fmt, val, args.eval_questions)
                    rows.append(
                        [
                            stage,
                            step + 1,
                            train_loss,
                            f"{own:.3f}",
                            f"{other:.3f}",
                            f"{other - own:+.3f}",
                            gaps_text(by_kind),
                            accuracy_text(acc),
                        ]
                    )
                else:  # the text stage: nothing to read
                    rows.append([stage, step + 1, train_loss, "–", "–", "–", "–", "–"])
                print(f"{rows[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
                model.train()
    model.eval()


def main(argv=None) -> str:
    from specvlm.inputs import load_processor
    from specvlm.testbed import build_text_corpus, generate_world
    from specvlm.testbed.language import QUESTION_KINDS
    from specvlm.testbed.recipe import Recipe, family_tokenizer, make_model, save_processor, train_bpe
    from specvlm.testbed.train import Formatter, load_clips, pretrain_vision, probe_accuracy, vision_parameters
    from specvlm.testbed.world import WORLD_TEXTURES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--out", default="testbed-reads-video", help="worlds and processor files go here")
    ap.add_argument("--clips", type=int, default=400, help="clips of each world (80 %% train, 10 %% validation)")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip (8: the build's)")
    ap.add_argument("--kinds", default="colors", help="question kinds trained and scored, comma-separated")
    ap.add_argument("--vision-steps", type=int, default=100)
    ap.add_argument("--large-steps", type=int, default=400, help="steps on the large-ball world first (0: none)")
    ap.add_argument(
        "--warm-frames", type=int, default=0, help="frames of the large-ball clips in the warm-up (0: --frames)"
    )
    ap.add_argument("--steps", type=int, default=400, help="steps on the small-ball world")
    ap.add_argument(
        "--dense-steps",
        type=int,
        default=0,
        help="first, steps on the small-ball world that keep only the ball tokens and --dense-keep of the others",
    )
    ap.add_argument("--dense-keep", type=float, default=0.1, help="share of the ball-free tokens a dense step keeps")
    ap.add_argument("--dense-kinds", default="", help="question kinds of the --dense-steps (default: --kinds)")
    ap.add_argument(
        "--dense-mix-kinds", default="", help="question kinds of the later dense steps (default: all the clip's)"
    )
    ap.add_argument("--dense-mix", type=float, default=0.0, help="share of the later small-ball steps that are dense")
    ap.add_argument(
        "--texture",
        default="plain",
        choices=WORLD_TEXTURES,
        help="the worlds' background (position: its colour says where a cell is, render.POSITION_LEVELS)",
    )
    ap.add_argument("--ball", default="small", help="the world's ball size (world.SIZES: small, medium)")
    ap.add_argument("--mix", type=float, default=0.0, help="share of the small-ball steps drawn from the large balls")
    ap.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="first, steps on the caption then the question, without the video (answers copied from the caption)",
    )
    ap.add_argument(
        "--align",
        choices=("none", "answer", "caption"),
        default="none",
        help="the probe's colour read-out fixed to the LM's input embeddings of the colour names as a reply starts "
        "('Red') or as a caption says them (' red'); no object: the video placeholder's",
    )
    ap.add_argument(
        "--layout",
        choices=("pack", "shared"),
        default="pack",
        help="a step's turns as one multi-turn chat, or as one-turn conversations holding the video once",
    )
    ap.add_argument(
        "--every-colours",
        action="store_true",
        help='"which colours" with every answer, not only those naming one colour (as the build asks it)',
    )
    ap.add_argument(
        "--dense-one-colour-captions",
        action="store_true",
        help="the --dense-steps train the captions that name one colour only (clips with one ball)",
    )
    ap.add_argument(
        "--dense-one-ball",
        action="store_true",
        help="the --dense-steps train the clips of one ball only (every question about a ball is about that one)",
    )
    ap.add_argument(
        "--dense-one-colour",
        action="store_true",
        help='with --every-colours: the --dense-steps ask "which colours" only where the answer names one colour',
    )
    ap.add_argument(
        "--quiet-background",
        type=float,
        default=0.0,
        help="weight of the background's energy in the vision steps' loss (probe.background_energy: the empty "
        "background pushed towards zero rows)",
    )
    ap.add_argument("--eval-questions", type=int, default=1, help="questions scored per validation clip (its first)")
    ap.add_argument("--val-clips", type=int, default=0, help="validation clips scored (0: all)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--last-lr", type=float, default=None, help="the peak of the last stage (--steps; default --lr)")
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="the worlds' seed (and, without --init-seed, the steps')")
    ap.add_argument("--init-seed", type=int, default=None, help="another model and step order in the same worlds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe, out, kinds = Recipe(), Path(args.out), set(args.kinds.split(","))
    worlds = {}
    for ball in ("small", "large") if args.large_steps or args.mix else ("small",):
        worlds[ball] = out / f"world-{ball}"
        generate_world(
            worlds[ball],
            args.clips,
            seed=args.seed,
            frames=recipe.clip_frames,
            size=recipe.world_size,
            questions=recipe.questions,
            workers=2,
            ball=args.ball if ball == "small" else ball,
            texture=args.texture,
        )
    tokenizer = family_tokenizer(
        train_bpe(build_text_corpus(worlds["small"] / "train.jsonl"), recipe.vocab), args.family, recipe.vocab
    )
    save_processor(
        out / "processor",
        replace(recipe, num_frames=args.frames),
        args.family,
        tokenizer,
        make_model(recipe, args.family, "draft", 0),
    )
    processor = load_processor(out / "processor")
    fmt = Formatter(processor)

    def split(
        ball,
        name,
        text=False,
        frames=args.frames,
        only=None,
        every_colours=args.every_colours,
        one_colour_captions=False,
        one_ball=False,
    ):
        dtype = torch.float32 if name == "validation" else torch.float16
        clips = load_clips(worlds[ball], name, processor, frames, pixel_dtype=dtype)
        return one_colour_turns(
            clips,
            only or kinds,
            caption=text,
            every_colours=every_colours,
            one_colour_captions=one_colour_captions,
            one_ball=one_ball,
        )

    model = make_model(recipe, args.family, "target", 7 if args.init_seed is None else 100 + args.init_seed)
    rows: list[list] = []
    if args.text_steps:
        text_clips = split("small", "train", text=True)
        train_language(model, fmt, text_clips, [], args.text_steps, args, "text", rows, text=True)
    words = None
    if args.align != "none":  # the input embeddings as they are now (after the text stage, if any)
        from specvlm.testbed.world import COLORS

        form = "{}" if args.align == "answer" else " {}"  # "Red" (a reply's first token) or " red" (in a caption)
        ids = [fmt.video_id] + [
            fmt.ids(form.format(c.capitalize() if args.align == "answer" else c))[0] for c in COLORS
        ]
        words = model.get_input_embeddings().weight[ids].detach()
    every_clip = {"caption", *QUESTION_KINDS}  # the vision steps see every clip, whatever the language steps ask
    probe, _ = pretrain_vision(
        model,
        split("small", "train", only=every_clip),
        args.vision_steps,
        recipe.vision_lr,
        args.seed,
        colour_words=words,
        quiet_background=args.quiet_background,
    )
    read = probe_accuracy(model, probe, split("small", "validation", only=every_clip))
    print(f"probe on the small-ball validation clips: {read}")
    for _, p in vision_parameters(model):  # frozen from here: no gradient computed for what no optimizer moves
        p.requires_grad_(False)
    val = split("small", "validation")[: args.val_clips or None]
    if args.large_steps:
        train_language(
            model,
            fmt,
            split("large", "train", frames=args.warm_frames or args.frames),
            split("large", "validation", frames=args.warm_frames or args.frames),
            args.large_steps,
            args,
            "large balls",
            rows,
        )
        own, other, acc, by_kind = evaluate(model, fmt, val, args.eval_questions)
        rows.append(
            [
                "(small-ball validation)",
                0,
                "",
                f"{own:.3f}",
                f"{other:.3f}",
                f"{other - own:+.3f}",
                gaps_text(by_kind),
                accuracy_text(acc),
            ]
        )
    if args.dense_steps:
        if args.layout != "shared":
            raise SystemExit("--dense-steps needs --layout shared")
        stage = f"dense {args.ball} balls (keep {args.dense_keep:g})"
        dense_kinds = set(args.dense_kinds.split(",")) if args.dense_kinds else None
        train_clips = split(
            "small",
            "train",
            only=dense_kinds,
            every_colours=args.every_colours and not args.dense_one_colour,
            one_colour_captions=args.dense_one_colour_captions,
            one_ball=args.dense_one_ball,
        )
        print(f"dense stage: {len(train_clips)} training clips", flush=True)
        train_language(model, fmt, train_clips, val, args.dense_steps, args, stage, rows, dense=1.0)
    mixed_in = split("large", "train") if args.mix else None
    train_language(
        model,
        fmt,
        split("small", "train"),
        val,
        args.steps,
        args,
        f"{args.ball} balls",
        rows,
        mixed_in,
        dense=args.dense_mix,
        lr=args.last_lr,
        dense_kinds=args.dense_mix_kinds,
    )
    body = (
        f"{args.family} target, {args.frames} frames ({val[0].n_visual} visual tokens), questions {args.kinds} "
        f'("colors" with {"every answer" if args.every_colours else "one-colour answers"}), layout {args.layout}, '
        f"{len(val)} validation clips; vision tower "
        f"probe-trained {args.vision_steps} steps then frozen; the majority answer scores "
        f"{accuracy_text(majority_baseline(split('small', 'train'), val, args.eval_questions))}:\n\n"
        + table(
            [
                "stage",
                "step",
                "train loss",
                "val loss, own video",
                "val loss, another clip's",
                "gap",
                "gap by kind",
                "accuracy",
            ],
            rows,
        )
    )
    print(body)
    return body


if __name__ == "__main__":
    main()
