"""The GPU preset: speculative decoding at real model shapes without real weights, against HF eager `generate` and
HF's compiled static-cache `generate`, in one run on one GPU (≤ 6 minutes for --shape 7b on an H200).

    python benchmarks/bench_gpu_preset.py --shape 7b [--tau 3.5] [--batches 1,4,16] [--record]   # on a GPU
    python benchmarks/bench_gpu_preset.py --shape tiny        # anywhere (the test suite runs it)

The pair is a *calibrated-agreement pair*. Target: a Qwen2.5-VL with the language model at the named shape and
random weights (a small vision tower: it only adds to the prefill). Draft: the target's own first `--draft-layers`
decoder layers with its embeddings, final norm, LM head and vision tower (shared, not copied: the draft's step
costs k/L of the layers plus the LM head). The target's later layers are scaled toward identity (their attention
and MLP output projections times α), so its final hidden state approaches the draft's; α is found by bisection so
that the draft's greedy chain of γ tokens is accepted `--tau` tokens per round on a calibration prompt. Random
weights give no meaning, but the exact costs of the real shapes and a controlled acceptance rate: the two things
speed depends on.

Rows (interleaved repeats, median and range): HF eager `target.generate`, HF `generate(cache_implementation=
"static")` (compiled by HF on CUDA), ours on the eager engine, ours on the fast engine compiled (CUDA graphs on
CUDA). Per row: decode ms/token, wall, speedup against both HF rows, τ, and for ours the engine efficiency (share
of decode time inside model forwards, from a separate run with per-forward timing), and each output against HF
eager's: identical, or a near-tie or a bug where it first differs (`specvlm.numerics.diagnose`: in bf16 even HF's
own static cache can differ from HF eager). One-time costs (compilation) are reported apart. `--batches` adds
batches of that many prompts (each its own video, same length): HF's batched eager and static-cache `generate` on
the whole batch against our batched fast engine, generated tokens/s; without 1 in it, the batches alone.
`--json OUT` writes everything; `--record` puts the tables in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import hf_static_config, machine, record, table

# Qwen2.5-VL language-model shapes (config.json of the released checkpoints); "tiny" runs anywhere in seconds,
# "cpu" (~50M parameters) is what the CPU machines can time in minutes.
SHAPES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
    ),
    "cpu": dict(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=16384,
    ),
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
    "72b": dict(  # Qwen2-VL-72B's (and LLaVA-OneVision-72B's Qwen2-72B): more than one GPU holds, for
        # bench_tensor_parallel.py
        hidden_size=8192,
        intermediate_size=29568,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=152064,
    ),
    "32b": dict(
        hidden_size=5120,
        intermediate_size=27648,
        num_hidden_layers=64,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
    ),
}


def pair_config(shape: str, layers: int | None = None):
    """The Qwen2.5-VL config of the preset's target at `shape` (with `layers` decoder layers: the draft's count)."""
    from transformers import Qwen2_5_VLConfig

    text = dict(
        SHAPES[shape],
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        bos_token_id=None,
        eos_token_id=None,
    )  # Qwen's ids lie outside the small shapes' vocabularies
    if layers is not None:
        text["num_hidden_layers"] = layers
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    s = 3 * (head_dim // 2) // 8
    text["rope_parameters"]["mrope_section"] = [head_dim // 2 - 2 * s, s, s]
    vocab = text["vocab_size"]
    ids = dict(
        image_token_id=vocab - 6,
        video_token_id=vocab - 5,
        vision_start_token_id=vocab - 4,
        vision_end_token_id=vocab - 3,
    )
    vision = dict(
        depth=1,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        out_hidden_size=text["hidden_size"],
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[0],
        tokens_per_second=2,
    )
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    config._attn_implementation = "sdpa"
    return config


def build_pair(shape: str, draft_layers: int, device: str, dtype: torch.dtype, seed: int = 0):
    """(target, draft): the draft's modules are the target's (first `draft_layers` layers, embeddings, norm,
    LM head, vision tower)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            target = Qwen2_5_VLForConditionalGeneration(pair_config(shape)).eval()
    finally:
        torch.set_default_dtype(previous)
    return target, share_draft(target, draft_layers)


def share_draft(target, draft_layers: int):
    """A draft made of the target's own modules: its first `draft_layers` decoder layers, embeddings, final norm, LM
    head and vision tower (shared, not copied; split over the ranks where the target is)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = target.config.__class__.from_dict(target.config.to_dict())
    config.text_config.num_hidden_layers = draft_layers
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        draft = Qwen2_5_VLForConditionalGeneration(config).eval()
    t, d = target.model, draft.model
    d.visual, d.language_model.embed_tokens, d.language_model.norm = (
        t.visual,
        t.language_model.embed_tokens,
        t.language_model.norm,
    )
    d.language_model.rotary_emb = t.language_model.rotary_emb
    d.language_model.layers = torch.nn.ModuleList(t.language_model.layers[:draft_layers])
    draft.lm_head = target.lm_head
    pad = target.config.text_config.vocab_size - 1
    for model in (target, draft):  # random weights: no end of sequence, every run makes max_new_tokens
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = pad
    assert not any(p.is_meta for p in draft.parameters()) and not any(b.is_meta for b in draft.buffers())
    return draft


def scale_deep_layers(target, draft_layers: int, alpha: float, originals: dict) -> None:
    """The target's layers after the draft's: attention and MLP output projections = original * alpha."""
    for i, layer in enumerate(target.model.language_model.layers[draft_layers:]):
        for name, weight in (("o", layer.self_attn.o_proj.weight), ("down", layer.mlp.down_proj.weight)):
            key = (i, name)
            if key not in originals:
                originals[key] = weight.detach().clone()
            weight.data.copy_(originals[key] * alpha)


def video_inputs(target, prompt_tokens: int, device: str, seed: int = 0) -> dict:
    """A Qwen2.5-VL video prompt of about `prompt_tokens` tokens: a few text tokens around one video whose merged
    grid (t, h, w) holds the rest, shaped exactly like the processor's output."""
    config = target.config
    g = torch.Generator(device="cpu").manual_seed(seed)
    side = max(2, int(((prompt_tokens - 24) / 8) ** 0.5))  # 8 temporal groups of side x side tokens
    t, h, w = 8, 2 * side, 2 * side
    n = t * h * w // 4
    text = lambda k: torch.randint(0, config.text_config.vocab_size - 8, (k,), generator=g).tolist()
    seq = (
        text(8) + [config.vision_start_token_id] + [config.video_token_id] * n + [config.vision_end_token_id] + text(14)
    )
    input_ids = torch.tensor([seq], device="cpu")
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, generator=g, device="cpu")
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        mm_token_type_ids=(input_ids == config.video_token_id).int() * 2,
        pixel_values_videos=pixels,
        video_grid_thw=torch.tensor([[t, h, w]], device="cpu"),
        second_per_grid_ts=torch.tensor([1.0], device="cpu"),
    )
    return {k: v.to(device) for k, v in inputs.items()}


def calibrate(
    target, draft, inputs, draft_layers: int, gamma: int, want_tau: float, tokens: int, steps: int = 10
) -> tuple[float, float]:
    """Bisection on alpha in [0, 1] for τ (draft tokens accepted per round of a γ-chain) ≈ want_tau."""
    from specvlm import SpeculativeGenerator

    originals: dict = {}
    low, high, best = 0.0, 1.0, (1.0, 0.0)
    for _ in range(steps):
        alpha = (low + high) / 2
        scale_deep_layers(target, draft_layers, alpha, originals)
        gen = SpeculativeGenerator(target, draft, tree="chain", num_draft_tokens=gamma, engine="fast", compile=False)
        tau = gen.generate(**inputs, do_sample=False, max_new_tokens=tokens).stats.mean_accepted_tokens
        if abs(tau - want_tau) < abs(best[1] - want_tau):
            best = (alpha, tau)
        if tau > want_tau:  # too easy: make the deep layers matter more
            low = alpha
        else:
            high = alpha
    scale_deep_layers(target, draft_layers, best[0], originals)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="7b", choices=sorted(SHAPES))
    ap.add_argument("--draft-layers", type=int, default=None, help="default: 4 (2 for tiny)")
    ap.add_argument("--tau", type=float, default=3.5, help="acceptance to calibrate for (draft tokens per round)")
    ap.add_argument("--gamma", type=int, default=5, help="chain length γ")
    ap.add_argument("--prompt-tokens", type=int, default=4096)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--batches",
        default="1,4,16",
        help="batch sizes, comma-separated (1: the single-prompt table; more: the batched one)",
    )
    ap.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float16", "float32"),
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    ap.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="compile our fast engine and HF's static cache (auto: on CUDA only)",
    )
    ap.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    compile = device == "cuda" if args.compile == "auto" else args.compile == "on"
    draft_layers = args.draft_layers or (2 if args.shape in ("tiny", "cpu") else 4)
    started = time.perf_counter()

    target, draft = build_pair(args.shape, draft_layers, device, dtype)
    inputs = video_inputs(target, args.prompt_tokens, device)
    n_prompt = int(inputs["input_ids"].shape[1])
    alpha, calibrated = calibrate(
        target,
        draft,
        video_inputs(target, min(args.prompt_tokens, 1024), device, seed=1),
        draft_layers,
        args.gamma,
        args.tau,
        tokens=48,
    )
    print(
        f"{args.shape}: prompt {n_prompt} tokens, draft = {draft_layers} of "
        f"{target.config.text_config.num_hidden_layers} layers, alpha {alpha:.4f} -> calibration τ "
        f"{calibrated:.2f} ({time.perf_counter() - started:.0f}s)",
        flush=True,
    )
    sizes = [int(b) for b in args.batches.split(",")]
    if 1 in sizes:
        results = measure(target, draft, inputs, args, compile, device)
        print(report(results), flush=True)  # before the batches: a run stopped by a time limit keeps this table
    else:  # batches alone (a GPU session short of time measures them in a call of their own)
        results = dict(rows={}, note=_note(args, n_prompt, prefill=None))
    batched = [b for b in sizes if b > 1]
    results["batches"] = measure_batches(target, draft, args, compile, device, batched) if batched else []
    results.update(
        shape=args.shape,
        alpha=alpha,
        calibration_tau=calibrated,
        prompt_tokens=n_prompt,
        draft_layers=draft_layers,
        dtype=str(dtype),
        device=machine(),
        total_s=time.perf_counter() - started,
    )
    tables = [report(results)] if results["rows"] else []
    tables += [batch_report(results["batches"])] if results["batches"] else []
    print(f"total {results['total_s']:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.record:
        record(
            f"gpu-preset-{args.shape}" + ("" if results["rows"] else "-batched"),
            f"GPU preset: calibrated-agreement pair at Qwen2.5-VL-{args.shape} shapes"
            + ("" if results["rows"] else ", batched"),
            "\n\n".join([results["note"], *tables]),
        )
    return results


def measure(target, draft, inputs, args, compile: bool, device: str) -> dict:
    from specvlm import SpeculativeGenerator
    from specvlm.engine.session import observe_forwards
    from specvlm.numerics import diagnose

    n_prompt = inputs["input_ids"].shape[1]
    opts = dict(do_sample=False, max_new_tokens=args.max_new_tokens)
    static = hf_static_config(torch.device(device))
    chain = dict(tree="chain", num_draft_tokens=args.gamma)

    def hf(**kw):
        return lambda: (target.generate(**inputs, **opts, **kw)[0, n_prompt:].tolist(), None)

    def ours(engine, compiled):
        gen = SpeculativeGenerator(target, draft, engine=engine, compile=compiled, **chain)
        return lambda: (lambda out: (out.token_ids, out.stats))(gen.generate(**inputs, **opts))

    methods = {"HF eager generate": hf()}
    if compile:
        methods["HF static-cache generate, compiled"] = hf(cache_implementation="static", compile_config=static)
    else:
        methods["HF static-cache generate"] = hf(cache_implementation="static", disable_compile=True)
    methods["ours, eager engine"] = ours("eager", False)
    methods["ours, fast engine" + (" compiled" if compile else "")] = ours("fast", compile)

    names, one_time, first = list(methods), {}, {}
    for name, run in methods.items():  # warm-up: compilation and CUDA graph capture happen here
        t = time.perf_counter()
        first[name], _ = run()
        _sync()
        one_time[name] = time.perf_counter() - t
    reference = first[names[0]]
    walls = {name: [] for name in methods}
    taus, repeatable = {}, {name: True for name in methods}
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _sync()
            t = time.perf_counter()
            ids, stats = methods[name]()
            _sync()
            walls[name].append(time.perf_counter() - t)
            repeatable[name] &= ids == first[name]
            if stats is not None:
                taus.setdefault(name, []).append(stats.mean_accepted_tokens)
    # each output against HF eager's: identical, or where it first differs a near-tie at the dtype's rounding or a bug
    verdicts = {
        name: diagnose(target, inputs, first[name], reference, max_new_tokens=args.max_new_tokens) for name in names
    }
    # prefill cost of the target alone (to split wall into prefill + decode for the HF rows)
    prefill = _median(lambda: target.generate(**inputs, do_sample=False, max_new_tokens=1), 3)
    rows = {}
    for name in methods:
        wall = statistics.median(walls[name])
        rows[name] = dict(
            wall_s=wall,
            wall_range=[min(walls[name]), max(walls[name])],
            decode_ms_per_token=(wall - prefill) / args.max_new_tokens * 1e3,
            one_time_s=max(one_time[name] - wall, 0.0),
            lossless=verdicts[name].kind,
            first_difference=verdicts[name].position,
            repeatable=repeatable[name],
            tau=statistics.mean(taus[name]) if name in taus else None,
        )
    for name, (engine, compiled) in (("ours, eager engine", ("eager", False)), (names[-1], ("fast", compile))):
        gen = SpeculativeGenerator(target, draft, engine=engine, compile=compiled, **chain)
        gen.generate(**inputs, **opts)
        seconds = []
        with observe_forwards(lambda session, kind, s, seconds=seconds: seconds.append((kind, s))):
            out = gen.generate(**inputs, **opts)
        rows[name]["efficiency"] = sum(s for kind, s in seconds if kind == "step") / out.stats.decode_s
    note = _note(args, inputs["input_ids"].shape[1], prefill)
    return dict(
        rows=rows,
        prefill_s=prefill,
        note=note,
        repeats=args.repeats,
        gamma=args.gamma,
        max_new_tokens=args.max_new_tokens,
    )


def batch_inputs(target, rows: int, prompt_tokens: int, device: str) -> dict:
    """`rows` video prompts of the same length (each its own pixels), collated as the processor batches them."""
    from specvlm.tiny import make_batch

    pad = target.generation_config.pad_token_id
    parts = [video_inputs(target, prompt_tokens, "cpu", seed=10 + b) for b in range(rows)]
    return {k: v.to(device) for k, v in make_batch(parts, "qwen2_5_vl", pad).items()}


def measure_batches(target, draft, args, compile: bool, device: str, sizes: list[int]) -> list[dict]:
    """Per batch size: HF eager and static-cache `generate` on the batch, ours batched (fast engine), generated
    tokens/s, interleaved repeats after a warm-up each; how many of our rows equal HF eager's batched rows."""
    from specvlm import SpeculativeGenerator

    opts = dict(do_sample=False, max_new_tokens=args.max_new_tokens)
    static = (
        dict(cache_implementation="static", compile_config=hf_static_config(torch.device(device)))
        if compile
        else dict(cache_implementation="static", disable_compile=True)
    )
    gen = SpeculativeGenerator(target, draft, engine="fast", compile=compile, tree="chain", num_draft_tokens=args.gamma)
    out = []
    for size in sizes:
        batch = batch_inputs(target, size, args.prompt_tokens, device)
        n = batch["input_ids"].shape[1]
        methods = {
            "HF eager generate": lambda batch=batch, n=n: target.generate(**batch, **opts)[:, n:].tolist(),
            "HF static-cache generate": lambda batch=batch, n=n: target.generate(**batch, **opts, **static)[
                :, n:
            ].tolist(),
            "ours, fast engine, batched": lambda batch=batch: gen.generate(**batch, **opts).token_ids,
        }
        answers = {name: run() for name, run in methods.items()}  # warm-up, compilation
        walls = {name: [] for name in methods}
        names = list(methods)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                _sync()
                t = time.perf_counter()
                methods[name]()
                _sync()
                walls[name].append(time.perf_counter() - t)
        same = sum(a == b for a, b in zip(answers["ours, fast engine, batched"], answers["HF eager generate"]))
        out.append(dict(batch=size, walls=walls, rows_equal_hf_eager=same, tokens=size * args.max_new_tokens))
        print(batch_report(out[-1:]), flush=True)
    return out


def batch_report(batches: list[dict]) -> str:
    rows = []
    for entry in batches:
        eager, static = (
            statistics.median(entry["walls"][k]) for k in ("HF eager generate", "HF static-cache generate")
        )
        for name, walls in entry["walls"].items():
            wall = statistics.median(walls)
            rows.append(
                [
                    name,
                    entry["batch"],
                    f"{entry['tokens'] / wall:.1f}",
                    f"{eager / wall:.2f}",
                    f"{static / wall:.2f}",
                    f"{entry['rows_equal_hf_eager']}/{entry['batch']}" if name.startswith("ours") else "-",
                ]
            )
    return table(["method", "batch", "tokens/s (median)", "× HF eager", "× HF static", "rows = HF eager's"], rows)


def report(results: dict) -> str:
    rows = results["rows"]
    names = list(rows)
    hf_eager, hf_static = rows[names[0]], rows[names[1]]
    out = []
    for name, row in rows.items():
        out.append(
            [
                name,
                f"{row['decode_ms_per_token']:.2f}",
                f"{row['wall_s']:.3f}",
                f"{row['wall_range'][0]:.3f}–{row['wall_range'][1]:.3f}",
                f"{hf_eager['wall_s'] / row['wall_s']:.2f}",
                f"{hf_static['wall_s'] / row['wall_s']:.2f}",
                "-" if row["tau"] is None else f"{row['tau']:.2f}",
                f"{row['efficiency']:.2f}" if "efficiency" in row else "-",
                f"{row['one_time_s']:.1f}",
                _verdict(row),
            ]
        )
    return table(
        [
            "method",
            "decode ms/token",
            "wall s (median)",
            "wall range",
            "× HF eager",
            "× HF static",
            "τ",
            "efficiency",
            "one-time s",
            "vs HF eager",
        ],
        out,
    )


def _note(args, prompt_tokens: int, prefill: float | None) -> str:
    split = (
        f"; prefill (target alone) {prefill:.3f}s, subtracted from every row's wall to get decode ms/token"
        if prefill is not None
        else ""
    )
    return (
        f"Qwen2.5-VL-{args.shape} language-model shapes, random weights, {prompt_tokens}-token video prompt, "
        f"{args.max_new_tokens} new tokens (no EOS), greedy; chain γ={args.gamma}; {args.repeats} interleaved "
        f"repeats after a warm-up{split}."
    )


def _verdict(row: dict) -> str:
    """identical / near-tie at N / BUG at N (`specvlm.numerics`), and whether the repeats gave the same tokens."""
    kind = row["lossless"] if row["lossless"] != "bug" else "BUG"
    where = f" at {row['first_difference']}" if row["first_difference"] >= 0 else ""
    return kind + where + ("" if row["repeatable"] else ", repeats differ")


def _median(fn, n: int) -> float:
    times = []
    for _ in range(n):
        _sync()
        t = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
