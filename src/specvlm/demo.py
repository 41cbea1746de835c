"""`make demo` / `specvlm demo`: the bundled testbed pair answers a question about a bundled sample clip, with
speculative decoding and SpecVLM pruning of the draft's video tokens, measured against target-only decoding in the
same run, and checked to produce exactly the target's output. No downloads, no training.

The inputs go through the same path as `specvlm generate` (`prepare_inputs`): the clip is decoded with PyAV and
preprocessed by the target's (and, where it differs, the draft's) processor.
"""

from __future__ import annotations

import statistics
import time

import torch

from .drafters.loading import load_drafter
from .engine.generator import SpeculativeGenerator
from .inputs import InputModels, MediaPrompt, prepare_inputs
from .numerics import denormals_flushed
from .testbed.assets import bundled_pair, sample_clips


def interleaved_times(calls: dict, repeats: int) -> tuple[dict, dict[str, list[float]]]:
    """Runs every call once untimed (warm-up), then `repeats` rounds in which each call runs once, timed, the order
    rotating by one per round so a slow drift of the machine falls on all of them alike. Returns (each call's last
    result, each call's list of seconds)."""
    results = {name: fn() for name, fn in calls.items()}
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            results[name] = calls[name]()
            times[name].append(time.perf_counter() - start)
    return results, times


def speedup_line(base_s: list[float], spec_s: list[float]) -> str:
    """Target-only vs speculative seconds from the same interleaved rounds: medians, ranges, the median of the
    per-round ratios and its range, and whether the difference is within what this machine varies by (the per-round
    ratios fall on both sides of 1)."""
    ratios = [b / s for b, s in zip(base_s, spec_s)]
    median = statistics.median(ratios)
    line = (
        f"target-only {statistics.median(base_s):.2f}s ({min(base_s):.2f}-{max(base_s):.2f}), speculative "
        f"{statistics.median(spec_s):.2f}s ({min(spec_s):.2f}-{max(spec_s):.2f}): speedup {median:.2f}x "
        f"(per-round {min(ratios):.2f}-{max(ratios):.2f}x, median of {len(ratios)} interleaved rounds)"
    )
    if min(ratios) <= 1 <= max(ratios):
        line += "\nthe two are within this machine's run-to-run noise: no difference is measured"
    return line


def draft_views(target, draft, tokenizer, inputs, options, keep_ratio: float, engine: str) -> dict:
    """τ of one speculative decode per view of the video the draft gets: all of it, SpecVLM's `keep_ratio` of the
    tokens (chosen by the verifier's attention) and as many chosen at random. {name: (τ, its token ids)}: the ids
    must all be the target's (pruning only changes how often the draft is right). Uncompiled: τ does not depend
    on it."""
    views = {"full video": {}, f"SpecVLM keep {keep_ratio:g}": dict(pruning="specvlm", visual_keep_ratio=keep_ratio)}
    views[f"random keep {keep_ratio:g}"] = dict(pruning="random", visual_keep_ratio=keep_ratio)
    out = {}
    for name, pruning in views.items():
        gen = SpeculativeGenerator(target, draft, tokenizer=tokenizer, engine=engine, compile=False, **pruning)
        result = gen.generate(**inputs, **options)
        out[name] = (result.stats.mean_accepted_tokens, result.token_ids)
    return out


@torch.no_grad()
@denormals_flushed()
def run_demo(
    family: str, *, max_new_tokens: int, keep_ratio: float, repeats: int, engine: str = "fast", compile="auto"
) -> int:
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the demo prints its own lines; weight-loading bars are noise here
    target_dir, draft_dir = bundled_pair(family)
    sample = sample_clips(kind="caption")[0]
    target = AutoModelForImageTextToText.from_pretrained(target_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(target_dir)
    draft = load_drafter(draft_dir, target, dtype="float32", kind="model", tokenizer=tokenizer)  # on the target's CPU
    inputs = prepare_inputs(
        InputModels(target_dir, target.config, draft_dir, draft.config),
        MediaPrompt(sample["question"], video=sample["video"]),
        max_new_tokens=max_new_tokens,
    )
    plain_inputs = {k: v for k, v in inputs.items() if k != "draft_inputs"}
    size = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
    print(
        f"specvlm demo: bundled testbed pair ({family}): target {size(target):.1f}M parameters, draft "
        f"{size(draft):.1f}M, trained from scratch on the synthetic video world (docs/DESIGN.md, Testbed)."
    )
    print(f"clip:     {sample['video']}")
    print(f"question: {sample['question']}\n")

    options = dict(do_sample=False, max_new_tokens=max_new_tokens)
    prompt_len = plain_inputs["input_ids"].shape[1]
    gen = SpeculativeGenerator(
        target,
        draft,
        tokenizer=tokenizer,
        pruning="specvlm",
        visual_keep_ratio=keep_ratio,
        engine=engine,
        compile=compile,
    )
    results, times = interleaved_times(
        {
            "target": lambda: target.generate(**plain_inputs, **options)[0, prompt_len:].tolist(),
            "speculative": lambda: gen.generate(**inputs, **options),
        },
        repeats,
    )
    plain, out = results["target"], results["speculative"]
    stats, same = out.stats, out.token_ids == plain

    print(f"answer:   {out.text}")
    print(f"(world's reference: {sample['reference']})\n")
    print(
        f"prompt: target {stats.target_prompt_tokens} tokens ({stats.visual_tokens} visual); draft "
        f"{stats.draft_prompt_tokens} (keeps {stats.kept_visual_tokens} visual tokens: SpecVLM pruning, keep "
        f"ratio {keep_ratio:g})"
    )
    print(
        f"τ (draft tokens accepted per round): {stats.mean_accepted_tokens:.2f}   target forwards: "
        f"{stats.target_forwards} for {stats.new_tokens} tokens"
    )
    views = draft_views(target, draft, tokenizer, inputs, options, keep_ratio, engine)
    print(
        "τ by what the draft sees of the video: "
        + ", ".join(f"{name} {tau:.2f}" for name, (tau, _) in views.items())
        + " (the paper's claim: SpecVLM's tokens keep τ, random ones lose it)"
    )
    same = same and all(equal == plain for _, equal in views.values())
    print(f"timing ({torch.get_num_threads()} CPU threads, one warm-up each, then {repeats} rounds):")
    print(speedup_line(times["target"], times["speculative"]))
    if gen.compile:
        print(f"one-time compile {gen.compile_seconds:.1f}s (during the warm-up, not in the times above)")
    elif gen.engine == "fast" and target.device.type == "cpu":
        print(
            "uncompiled: on CPU, `specvlm demo --compile on` compiles the steps once (about 10 s here) and is what "
            "makes speculation pay (docs/BENCHMARKS.md, fast-* sections)"
        )
    print("output equals target-only decoding:", "yes, token for token" if same else "NO — this is a bug")
    return 0 if same else 1
