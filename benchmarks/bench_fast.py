"""Fast path vs what users run today, on the bundled testbed pairs: wall time of `target.generate` (HF eager), HF's
compiled static-cache `generate`, and our generator on the eager and fast engines (compiled and not), side by side.

    python benchmarks/bench_fast.py [--family qwen2_5_vl] [--repeats 5] [--max-new-tokens 96] [--threads 2]
                                    [--methods ...] [--record]

Every clip's methods run interleaved (the order rotates each repeat) after one warm-up call each; the warm-up
pays every one-time cost (torch.compile: ours is reported from `SpecStats.compile_s`, HF's as the warm-up's extra
time). Per method and clip the median wall time over the repeats; the speedup is target.generate's median over
the method's, reported as the median over clips with the range over clips, and the range of single repeats'
ratios. Engine efficiency: with the target drafting for itself (every token accepted), the share of decode time
spent inside model forwards (timed per forward between device synchronisations), i.e. achieved ÷ ideal for the
measured step costs. Every output is checked against target.generate's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specvlm import SpeculativeGenerator
from specvlm.engine.session import observe_forwards

from common import hf_static_config, record, table

# name -> (engine, compile); the settings below are crossed with these
ENGINES = {"ours eager": ("eager", False), "ours fast": ("fast", False), "ours fast compiled": ("fast", True)}
SETTINGS = {
    "demo": dict(tree="static", pruning="specvlm", visual_keep_ratio=0.1),  # `make demo`
    "confidence chain": dict(tree="chain", num_draft_tokens=5, confidence_threshold=0.4),  # the CPU's best before
    "chain": dict(tree="chain", num_draft_tokens=3),
}


def load_pair(family: str, threads: int):
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from specvlm.testbed.assets import bundled_pair

    target_dir, draft_dir = bundled_pair(family)
    load = lambda d: AutoModelForImageTextToText.from_pretrained(d, dtype=torch.float32).eval()
    return target_dir, draft_dir, load(target_dir), load(draft_dir), AutoTokenizer.from_pretrained(target_dir)


def clip_inputs(target_dir, draft_dir, target, draft, limit: int) -> list[dict]:
    from specvlm.inputs import InputModels, MediaPrompt, prepare_inputs
    from specvlm.testbed.assets import sample_clips

    out = []
    for sample in sample_clips(kind="caption")[:limit]:
        models = InputModels(target_dir, target.config, draft_dir, draft.config)
        out.append(prepare_inputs(models, MediaPrompt(sample["question"], video=sample["video"]), max_new_tokens=1))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of the rows (default: all); e.g. 'target.generate,demo: ours fast'",
    )
    ap.add_argument("--no-compile", action="store_true", help="leave out every compiled row (a quick smoke run)")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # fp16 checkpoints upcast to fp32 produce denormals that crawl on CPU
    target_dir, draft_dir, target, draft, tokenizer = load_pair(args.family, args.threads)
    clips = clip_inputs(target_dir, draft_dir, target, draft, args.clips)
    opts = dict(do_sample=False, max_new_tokens=args.max_new_tokens)

    def hf(**kw):
        def run(inputs):
            plain = {k: v for k, v in inputs.items() if k != "draft_inputs"}
            n = plain["input_ids"].shape[1]
            return target.generate(**plain, **opts, **kw)[0, n:].tolist(), None

        return run

    def ours(setting: dict, engine: str, compile: bool):
        gen = SpeculativeGenerator(target, draft, tokenizer=tokenizer, engine=engine, compile=compile, **setting)

        def run(inputs):
            out = gen.generate(**inputs, **opts)
            return out.token_ids, out.stats

        return run

    methods = {
        "target.generate": hf(),
        "HF static compiled": hf(cache_implementation="static", compile_config=hf_static_config(target.device)),
    }
    for setting, options in SETTINGS.items():
        for engine, (kind, compile) in ENGINES.items():
            methods[f"{setting}: {engine}"] = ours(options, kind, compile)
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        methods = {k: v for k, v in methods.items() if k in wanted or k == "target.generate"}
    if args.no_compile:
        methods = {k: v for k, v in methods.items() if "compiled" not in k}

    started = time.perf_counter()
    reference, warmup, compile_s, stats = {}, {}, {}, {}
    for c, inputs in enumerate(clips):  # warm-up: one call each; pays compilation
        for name, run in methods.items():
            t = time.perf_counter()
            ids, s = run(inputs)
            warmup.setdefault(name, []).append(time.perf_counter() - t)
            if name == "target.generate":
                reference[c] = ids
            if s is not None:
                compile_s[name] = compile_s.get(name, 0.0) + s.compile_s
    times = {name: [[] for _ in clips] for name in methods}
    lossless = {name: True for name in methods}
    names = list(methods)
    for r in range(args.repeats):
        for c, inputs in enumerate(clips):
            for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order every repeat
                t = time.perf_counter()
                ids, s = methods[name](inputs)
                times[name][c].append(time.perf_counter() - t)
                lossless[name] &= ids == reference[c]
                if s is not None:
                    stats.setdefault(name, []).append(s)
        print(f"repeat {r + 1}/{args.repeats} done ({time.perf_counter() - started:.0f}s)", flush=True)

    rows = []
    base = [statistics.median(t) for t in times["target.generate"]]
    for name in methods:
        medians = [statistics.median(t) for t in times[name]]
        per_clip = [b / m for b, m in zip(base, medians)]
        singles = [
            times["target.generate"][c][i] / times[name][c][i] for c in range(len(clips)) for i in range(args.repeats)
        ]
        s = stats.get(name, [])
        tau = statistics.mean(x.mean_accepted_tokens for x in s) if s else None
        steady = statistics.median(medians)
        one_time = compile_s.get(name) if name in compile_s else max(statistics.median(warmup[name]) - steady, 0.0)
        rows.append(
            [
                name,
                f"{statistics.median(per_clip):.2f}",
                f"{min(per_clip):.2f}–{max(per_clip):.2f}",
                f"{min(singles):.2f}–{max(singles):.2f}",
                f"{steady:.3f}",
                "-" if tau is None else f"{tau:.2f}",
                f"{one_time:.1f}" if one_time > 0.05 else "-",
                "yes" if lossless[name] else "NO",
            ]
        )
    efficiency = engine_efficiency(target, tokenizer, clips, opts, compiled=not args.no_compile)
    headers = [
        "method",
        "speedup (median of clips)",
        "range over clips",
        "range of single runs",
        "wall s (median)",
        "τ",
        "one-time s",
        "lossless",
    ]
    body = table(headers, rows)
    eff = table(["engine", "τ (self, γ=4)", "forward s", "decode s", "efficiency (forwards / decode)"], efficiency)
    print(body)
    print()
    print(eff)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    if args.record:
        n_prompt = clips[0]["input_ids"].shape[1]
        record(
            f"fast-{args.family}",
            f"Fast path on the bundled {args.family} testbed pair (CPU)",
            f"""
{args.clips} bundled caption clips (prompt {n_prompt} tokens), {args.max_new_tokens} new tokens, greedy; every method
once per clip as warm-up, then {args.repeats} repeats with the order rotated each repeat. Settings: {SETTINGS}.

{body}

Engine efficiency: the target drafting for itself (`draft="self"`, chain γ=4, no pruning: every token accepted),
the share of decode time spent inside model forwards (timed one by one between synchronisations).

{eff}
""",
        )


def engine_efficiency(target, tokenizer, clips, opts, compiled: bool = True) -> list[list]:
    rows = []
    for engine, compile in (("eager", False), ("fast", False), ("fast", True))[: 3 if compiled else 2]:
        gen = SpeculativeGenerator(
            target, "self", tokenizer=tokenizer, tree="chain", num_draft_tokens=4, engine=engine, compile=compile
        )
        forward, decode, taus = 0.0, 0.0, []
        for inputs in clips:
            gen.generate(**inputs, **opts)  # warm-up / compile
            seconds = []
            with observe_forwards(lambda session, kind, s, seconds=seconds: seconds.append((kind, s))):
                out = gen.generate(**inputs, **opts)
            forward += sum(s for kind, s in seconds if kind == "step")
            decode += out.stats.decode_s
            taus.append(out.stats.mean_accepted_tokens)
        rows.append(
            [
                f"{engine}{' compiled' if compile else ''}",
                f"{statistics.mean(taus):.2f}",
                f"{forward:.3f}",
                f"{decode:.3f}",
                f"{forward / decode:.2f}",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
