"""Does a freshly initialised testbed target learn to read the visual tokens? The experiment behind the build's
large-ball warm-up and mix (issue 23, docs/DESIGN.md Testbed):

    python benchmarks/testbed_reads_video.py [--family qwen2_5_vl] [--frames 8] [--large-steps 400] [--steps 400]
        [--mix 0.5] [--ball small|medium] [--text-steps 600] [--align none|answer|caption]

One family's target, its vision tower and projector first trained on the visual-token probe (`pretrain_vision`)
and then frozen; then the language model alone on one question kind ("which colours do the balls have", answers
naming one colour: the one fact that needs no binding), no caption, no text steps: `--large-steps` on a world of
large balls, then `--steps` on the world itself (`--ball`: small balls), each of them on a large-ball clip instead
with probability `--mix`. Every `--every` steps the validation answer loss with each clip's own video and with
another clip's: the gap is what reading the video buys (none: the model ignores it), and greedy accuracy.
`--large-steps 0` is the control: the small balls alone. Two other ways tried: `--text-steps` first trains the
caption then the question without the video (the answer can be copied from the caption), and `--align` fixes the
probe's colour read-out to the language model's input embeddings of the colour names (`probe.WordAligned`), so a
ball's visual token looks like its colour's word.
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


def one_colour_turns(clips, kinds, caption: bool = False):
    """The clips with only their turns of `kinds` whose answer names one colour, after the caption when `caption`;
    clips without any are dropped."""
    out = []
    for clip in clips:
        turns = [t for t in clip.turns if t[3] in kinds and " and " not in t[1]]
        if turns:
            out.append(replace(clip, turns=[t for t in clip.turns if caption and t[3] == "caption"] + turns))
    return out


@torch.no_grad()
def evaluate(model, fmt, clips) -> tuple[float, float, float]:
    """(answer loss with each clip's video, with the next clip's video, greedy accuracy of the first question)."""
    from specvlm.testbed.language import is_correct

    own, other, hits = [], [], []
    for i, clip in enumerate(clips):
        ids, labels, _ = fmt.example(clip, range(len(clip.turns)))
        target = torch.tensor(labels[1:])
        for video_of, losses in ((clip, own), (clips[(i + 1) % len(clips)], other)):
            logits = model(**fmt.inputs(replace(clip, visual=video_of.visual), ids)).logits[0, :-1].float()
            losses.append(float(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100)))
        question, _, answer, _ = clip.turns[0]
        inputs = fmt.inputs(clip, fmt.prompt(question, clip.n_visual))
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        hits.append(
            is_correct(fmt.tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True), answer)
        )
    return statistics.fmean(own), statistics.fmean(other), statistics.fmean(hits)


def train_language(model, fmt, clips, val, steps, args, stage, rows, mixed_in=None, text=False) -> None:
    """AdamW on the language model (the vision side frozen), one clip a step; a row every `args.every` steps
    (no validation when `val` is empty). `mixed_in`: clips of which a step draws one instead with probability
    `args.mix` (the large balls kept on). `text`: without the video, the turns in order (the caption first)."""
    from specvlm.testbed.train import lr_at, mixed_stream

    params = [
        p for n, p in model.named_parameters() if "visual" not in n and "vision" not in n and "projector" not in n
    ]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    stream, losses, start = mixed_stream(clips, mixed_in, args.mix, rng), [], time.perf_counter()
    model.train()
    with torch.enable_grad():
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, args.lr, 0.05)
            clip = next(stream)
            order = range(len(clip.turns)) if text else [int(k) for k in rng.permutation(len(clip.turns))]
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
                    own, other, acc = evaluate(model, fmt, val)
                    rows.append(
                        [stage, step + 1, train_loss, f"{own:.3f}", f"{other:.3f}", f"{other - own:+.3f}", f"{acc:.0%}"]
                    )
                else:  # the text stage: nothing to read
                    rows.append([stage, step + 1, train_loss, "–", "–", "–", "–"])
                print(f"{rows[-1]} ({time.perf_counter() - start:.0f} s)", flush=True)
                model.train()
    model.eval()


def main(argv=None) -> str:
    from specvlm.inputs import load_processor
    from specvlm.testbed import build_text_corpus, generate_world
    from specvlm.testbed.recipe import Recipe, family_tokenizer, make_model, save_processor, train_bpe
    from specvlm.testbed.train import Formatter, load_clips, pretrain_vision

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_5_vl")
    ap.add_argument("--out", default="testbed-reads-video", help="worlds and processor files go here")
    ap.add_argument("--clips", type=int, default=400, help="clips of each world (80 %% train, 10 %% validation)")
    ap.add_argument("--frames", type=int, default=8, help="frames sampled per clip (8: the build's)")
    ap.add_argument("--kinds", default="colors", help="question kinds trained and scored, comma-separated")
    ap.add_argument("--vision-steps", type=int, default=100)
    ap.add_argument("--large-steps", type=int, default=400, help="steps on the large-ball world first (0: none)")
    ap.add_argument("--steps", type=int, default=400, help="steps on the small-ball world")
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
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
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

    def split(ball, name, text=False):
        dtype = torch.float32 if name == "validation" else torch.float16
        clips = load_clips(worlds[ball], name, processor, args.frames, pixel_dtype=dtype)
        return one_colour_turns(clips, kinds, caption=text)

    model = make_model(recipe, args.family, "target", 7)
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
    pretrain_vision(model, split("small", "train"), args.vision_steps, recipe.vision_lr, args.seed, colour_words=words)
    val = split("small", "validation")
    if args.large_steps:
        train_language(
            model,
            fmt,
            split("large", "train"),
            split("large", "validation"),
            args.large_steps,
            args,
            "large balls",
            rows,
        )
        own, other, acc = evaluate(model, fmt, val)
        rows.append(
            ["(small-ball validation)", 0, "", f"{own:.3f}", f"{other:.3f}", f"{other - own:+.3f}", f"{acc:.0%}"]
        )
    mixed_in = split("large", "train") if args.mix else None
    train_language(model, fmt, split("small", "train"), val, args.steps, args, f"{args.ball} balls", rows, mixed_in)
    body = (
        f"{args.family} target, {args.frames} frames ({val[0].n_visual} visual tokens), questions {args.kinds} "
        f"with one-colour answers, {len(val)} validation clips; vision tower probe-trained {args.vision_steps} "
        "steps then frozen:\n\n"
        + table(
            ["stage", "step", "train loss", "val loss, own video", "val loss, another clip's", "gap", "accuracy"], rows
        )
    )
    print(body)
    return body


if __name__ == "__main__":
    main()
