"""Which drafts pay (issue 21): the same-family draft reading all of the target's frames, the same draft reading a
sparser view (--draft-num-frames: ½ and ¼ of the target's frames), the other family's draft (it reads the request
through its own processor), that draft speaking another vocabulary (bridged through text), and SpecVLM pruning at
keep 0.1, on the bundled pair of one family.

The other-vocabulary drafts are copies of the other family's bundled draft: its ordinary token ids permuted, the
embedding and LM-head rows moved with them (the same function under other names: bridging must keep its τ, and
what it costs is the bridge itself), and also a copy whose BPE stops after half its merges (words reach it in more
pieces than it was trained on: what re-tokenizing costs in τ).

    python benchmarks/bench_draft_views.py [--family qwen2_5_vl] [--repeats 3] [--max-new-tokens 48] [--frames 8]
                                           [--threads 2] [--no-compile] [--record]

Per bundled caption clip: every configuration runs once per round, the order rotated each round, after one warm-up
round; each speculative answer is checked equal to the target's own. Baselines, what users would otherwise run: HF
eager `target.generate` and HF's compiled static-cache `generate`. A row: τ (draft tokens accepted per round, as
the first round decides it: greedy, deterministic), the draft's prompt length, and the decoding speedup over each
baseline: median of the per-clip, per-round ratios of wall time (prefill included), with their min–max.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from specvlm import SpeculativeGenerator
from specvlm.inputs import FrameOptions, InputModels, MediaPrompt, prepare_inputs
from specvlm.testbed.assets import FAMILIES, bundled_pair, sample_clips

from common import hf_static_config, record, table

OTHER = {"qwen2_5_vl": "llava_onevision", "llava_onevision": "qwen2_5_vl"}


def load(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()


def other_vocabulary(src: Path, dst: Path, seed: int = 0, keep_merges: float | None = None) -> Path:
    """A copy of the checkpoint `src` speaking another vocabulary: its ordinary token ids permuted with their
    embedding and LM-head rows, and with `keep_merges` (a fraction) its BPE stopped after that share of its merges
    (the later merges' tokens become unreachable fillers)."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / "tokenizer.json").read_text())
    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    if keep_merges is not None:
        kept = int(len(merges) * keep_merges)
        dropped = {"".join(merge) for merge in merges[kept:]}
        spec["model"]["merges"] = merges[:kept]
        vocab = {(f"<unused-merge{i}>" if token in dropped else token): i for token, i in vocab.items()}
    order = list(range(len(vocab)))  # old ordinary id -> new one (special tokens keep theirs, above these)
    random.Random(seed).shuffle(order)
    spec["model"]["vocab"] = {token: order[i] for token, i in vocab.items()}
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    model = load(src)
    moved = torch.tensor(order)
    with torch.no_grad():
        weights = {id(w): w for w in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
        for weight in weights.values():
            weight[moved] = weight[: len(order)].clone()
    model.save_pretrained(dst)
    return dst


def configs(frames: int) -> dict[str, dict]:
    """name -> (draft: which checkpoint, pruning, draft frames)"""
    return {
        "same-family draft, all frames": dict(draft="own", pruning="none", draft_frames=None),
        f"same-family draft, {frames // 2} frames": dict(draft="own", pruning="none", draft_frames=frames // 2),
        f"same-family draft, {frames // 4} frames": dict(draft="own", pruning="none", draft_frames=frames // 4),
        "other-family draft, all frames": dict(draft="other", pruning="none", draft_frames=None),
        "other-family draft, own vocabulary (ids permuted)": dict(
            draft="other, ids permuted", pruning="none", draft_frames=None
        ),
        "other-family draft, own vocabulary (½ merges, ids permuted)": dict(
            draft="other, half merges", pruning="none", draft_frames=None
        ),
        "same-family draft, SpecVLM pruning keep 0.1": dict(draft="own", pruning="specvlm", draft_frames=None),
    }


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_5_vl", choices=[f for f in FAMILIES if f in OTHER])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--frames", type=int, default=8, help="the target's frames per clip (default 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip HF's compiled static-cache baseline")
    parser.add_argument("--record", action="store_true", help="write the table to docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # fp16 checkpoints upcast to fp32 produce denormals that crawl on CPU

    target_dir, draft_dir = bundled_pair(args.family)
    _, other_dir = bundled_pair(OTHER[args.family])
    scratch = Path(tempfile.mkdtemp(prefix="specvlm-vocab-"))
    folders = {
        "own": draft_dir,
        "other": other_dir,
        "other, ids permuted": other_vocabulary(other_dir, scratch / "permuted"),
        "other, half merges": other_vocabulary(other_dir, scratch / "half-merges", keep_merges=0.5),
    }
    target, drafts = load(target_dir), {key: (folder, load(folder)) for key, folder in folders.items()}
    tokenizers = {
        key: AutoTokenizer.from_pretrained(str(folder)) for key, folder in [("target", target_dir), *folders.items()]
    }
    settings = configs(args.frames)
    clips = sample_clips(kind="caption")
    generate = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
    baselines = {"HF eager": {}}
    if not args.no_compile:
        baselines["HF compiled static"] = dict(
            cache_implementation="static", compile_config=hf_static_config(target.device)
        )

    def hf(inputs, length: int, options: dict):
        return target.generate(**inputs, **generate, **options)[0, length:].tolist(), None

    def ours(gen, inputs):
        out = gen.generate(**inputs, **generate)
        return out.token_ids, out.stats

    jobs = {}  # (clip, name) -> a no-argument call returning (new token ids, our SpecStats or None)
    for c, clip in enumerate(clips):
        media = MediaPrompt(clip["question"], (), clip["video"])
        plain = prepare_inputs(InputModels(target_dir, target.config), media, FrameOptions(num_frames=args.frames))
        for name, options in baselines.items():
            jobs[c, name] = functools.partial(hf, plain, plain["input_ids"].shape[1], options)
        for name, setting in settings.items():
            folder, draft = drafts[setting["draft"]]
            frames = FrameOptions(num_frames=args.frames, draft_num_frames=setting["draft_frames"])
            inputs = prepare_inputs(InputModels(target_dir, target.config, folder, draft.config), media, frames)
            gen = SpeculativeGenerator(
                target,
                draft,
                tokenizer=tokenizers["target"],
                draft_tokenizer=tokenizers[setting["draft"]],
                pruning=setting["pruning"],
            )
            jobs[c, name] = functools.partial(ours, gen, inputs)

    names = list(baselines) + list(settings)
    times: dict[tuple, list[float]] = {key: [] for key in jobs}
    stats = {}  # (clip, name) -> the SpecStats of its latest run (greedy: every run the same)
    with torch.no_grad():
        for r in range(args.repeats + 1):  # round 0: warm-up (HF's compile happens there)
            for c in range(len(clips)):
                shift = (r + c) % len(names)
                answers = {}
                for name in names[shift:] + names[:shift]:
                    seconds, (answers[name], stats[c, name]) = timed(jobs[c, name])
                    if r:
                        times[c, name].append(seconds)
                differ = [name for name in names if answers[name] != answers["HF eager"]]
                if differ:
                    raise SystemExit(f"{', '.join(differ)} differ from target.generate on {clips[c]['video']}")
                print(f"round {r}/{args.repeats} clip {c + 1}/{len(clips)}: all equal", flush=True)

    rows = []
    for name in settings:
        row = [name, f"{statistics.median(stats[c, name].mean_accepted_tokens for c in range(len(clips))):.2f}"]
        row.append(f"{statistics.median(stats[c, name].draft_prompt_tokens for c in range(len(clips))):.0f}")
        for base in baselines:
            ratios = [b / s for c in range(len(clips)) for b, s in zip(times[c, base], times[c, name])]
            row.append(f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})")
        rows.append(row)
    headers = ["draft", "τ (median over clips)", "draft prompt tokens"] + [f"vs {b}" for b in baselines]
    text = table(headers, rows)
    print(text)
    shutil.rmtree(scratch)
    if args.record:
        target_tokens = prepare_inputs(
            InputModels(target_dir, target.config),
            MediaPrompt(clips[0]["question"], (), clips[0]["video"]),
            FrameOptions(num_frames=args.frames),
        )["input_ids"].shape[1]
        body = (
            f"{len(clips)} bundled caption clips, {args.family} pair (the other family: {OTHER[args.family]}'s "
            f"draft; its own vocabulary: that draft with its ordinary ids permuted, and also with half its BPE "
            f"merges, bridged through text), the target reads {args.frames} frames ({target_tokens} prompt tokens "
            "on the first clip); "
            f"greedy, at most {args.max_new_tokens} new tokens, generate's default static tree; {args.repeats} timed "
            f"rounds after a warm-up, configurations interleaved and rotated; every answer equal to "
            f"`target.generate`'s. Speedup: median (min–max) of per-clip, per-round wall-time ratios, prefill "
            f"included, {args.threads} torch threads.\n\n" + text
        )
        record(f"draft-views-{args.family}", f"Draft views and other-family drafts ({args.family}, CPU)", body)


if __name__ == "__main__":
    main()
