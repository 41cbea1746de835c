"""Batched `generate` on the bundled testbed pair: our speculative generator on batches of 1/4/8/16 prompts against
what users run on the same batch today: HF `target.generate` (eager) and HF's compiled static-cache `generate`,
plus our generator one row at a time (what a batch cost before the engine batched).

    python benchmarks/bench_batch.py [--family qwen2_5_vl] [--batches 1,4,8,16] [--repeats 3] [--max-new-tokens 48]
                                     [--threads 2] [--methods ...] [--no-compile] [--record]

A batch of B rows cycles over the bundled caption clips (8 frames each), built the way users build one: the
processor on B prompts with `padding_side="left"`. Every answer is exactly --max-new-tokens long (no eos), greedy.
Per batch size, every method runs once as warm-up (it pays torch.compile), then --repeats times with the order
rotated each repeat. Reported: generated tokens/s (B x tokens / wall), median with the min-max range over repeats,
and speedups against HF eager and HF compiled static on the same batch (medians of the per-repeat ratios, range).
Every row of ours is checked against `target.generate` on that row alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specvlm import SpeculativeGenerator

from common import hf_static_config, record, table

SETTING = dict(tree="static")  # generate's default for a draft model


def batch_inputs(target_dir, rows: int) -> dict:
    """B prompts cycling over the bundled caption clips, through the processor as one left-padded batch."""
    from specvlm.inputs import load_processor, load_video, render_prompt, sampler
    from specvlm.testbed.assets import sample_clips

    processor = load_processor(target_dir)
    clips = sample_clips(kind="caption")
    videos = [
        load_video(c["video"], sample_indices_fn=sampler(8, sample_frames=processor.video_processor.sample_frames))
        for c in clips
    ]
    pick = [i % len(clips) for i in range(rows)]
    out = processor(
        text=[render_prompt(processor, clips[i]["question"], 0, 1) for i in pick],
        videos=[videos[i].frames for i in pick],
        video_metadata=[videos[i].metadata for i in pick],
        do_sample_frames=False,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    return dict(out)


def rows_of(out) -> list[list[int]]:
    """Per-row token lists of a SpecOutput (a batch of one has a flat list)."""
    return out.token_ids if out.sequences.shape[0] > 1 else [out.token_ids]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    ap.add_argument("--batches", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default=None, help="comma-separated subset (HF eager always runs: the reference)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled methods (a quick run)")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",")]
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # fp16 checkpoints upcast to fp32 produce denormals that crawl on CPU
    from bench_fast import load_pair
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # eos_token_id=-1 (every answer full length) makes HF warn at every call

    target_dir, _, target, draft, tokenizer = load_pair(args.family, args.threads)
    opts = dict(do_sample=False, max_new_tokens=args.max_new_tokens, eos_token_id=-1)
    static = dict(cache_implementation="static", compile_config=hf_static_config(target.device))
    ours = SpeculativeGenerator(target, draft, tokenizer=tokenizer, **SETTING)
    compiled = SpeculativeGenerator(target, draft, tokenizer=tokenizer, compile=True, **SETTING)

    def hf(extra):
        def run(batch):
            n = batch["input_ids"].shape[1]
            return target.generate(**batch, **opts, **extra)[:, n:].tolist()

        return run

    def one_at_a_time(batch):
        return [ours.generate(**row, **opts).token_ids for row in target_rows(batch)]

    def target_rows(batch):
        from specvlm.adapters import adapter_for
        from specvlm.engine.request import left_padding, strip_left_padding

        rows = adapter_for(target).split_batch(batch)
        return [strip_left_padding(row, left_padding(row["attention_mask"])) for row in rows]

    methods = {
        "HF eager": hf({}),
        "HF static compiled": hf(static),
        "ours, one row at a time": one_at_a_time,
        "ours batched": lambda batch: rows_of(ours.generate(**batch, **opts)),
        "ours batched compiled": lambda batch: rows_of(compiled.generate(**batch, **opts)),
    }
    if args.methods:
        wanted = {m.strip() for m in args.methods.split(",")} | {"HF eager"}
        methods = {k: v for k, v in methods.items() if k in wanted}
    if args.no_compile:
        methods = {k: v for k, v in methods.items() if "compiled" not in k}
    names = list(methods)
    rows, started = [], time.perf_counter()
    for size in sizes:
        batch = batch_inputs(target_dir, size)
        alone = {}
        for row in target_rows(batch):  # the reference: each row alone
            key = tuple(row["input_ids"][0].tolist())
            if key not in alone:
                alone[key] = target.generate(**row, **opts)[0, row["input_ids"].shape[1] :].tolist()
        want = [alone[tuple(row["input_ids"][0].tolist())] for row in target_rows(batch)]
        for run in methods.values():  # warm-up, pays compilation
            run(batch)
        times = {name: [] for name in names}
        lossless = dict.fromkeys(names, True)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t = time.perf_counter()
                out = methods[name](batch)
                times[name].append(time.perf_counter() - t)
                lossless[name] &= out == want
        tokens = size * args.max_new_tokens
        for name in names:
            rates = sorted(tokens / t for t in times[name])
            cells = [name, size, f"{statistics.median(rates):.1f} ({rates[0]:.1f}–{rates[-1]:.1f})"]
            for base in ("HF eager", "HF static compiled"):
                if base not in times:
                    cells.append("–")
                    continue
                ratios = sorted(b / t for b, t in zip(times[base], times[name]))
                cells.append(f"{statistics.median(ratios):.2f}× ({ratios[0]:.2f}–{ratios[-1]:.2f})")
            rows.append(cells + ["yes" if lossless[name] else "NO"])
        print(f"batch {size} done ({time.perf_counter() - started:.0f}s)", flush=True)
    headers = [
        "method",
        "batch",
        "tokens/s (median, min–max)",
        "vs HF eager",
        "vs HF static compiled",
        "rows = target.generate alone",
    ]
    body = table(headers, rows)
    print(body)
    if args.record:
        record(
            f"batch-{args.family}",
            f"Batched generate on the bundled {args.family} pair (CPU)",
            f"""
Batches of {args.batches} prompts cycling over the bundled caption clips (8 frames, left-padded by the processor),
{args.max_new_tokens} new tokens per row (no eos), greedy; ours: {SETTING}, the fast engine. Each method once as
warm-up per batch size (pays torch.compile), then {args.repeats} repeats with the order rotated each repeat.
Speedups: per-repeat ratios of wall time, median (min–max). "One row at a time": our generator called per row.

{body}
""",
        )
    return rows


if __name__ == "__main__":
    main()
