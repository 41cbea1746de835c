"""What pruning buys the draft at decode time: the cost of ONE draft decode step (language model + LM head, one new
token) when its KV cache holds every visual token vs the 10% that SpecVLM pruning keeps, at realistic widths and
8k-16k visual tokens (the pruning issue's GPU measurement).

    python benchmarks/bench_draft_kv.py [--presets 0.5b] [--visual 8192 16384] [--keep 1.0 0.1] [--record]

Random weights and a cache filled with random K/V: a decode step's cost depends on the shapes only, so no prefill
of 16k tokens is needed. On a GPU the default presets are the Qwen2.5-VL-3B and -7B language models in bf16 (the
papers' drafts and targets); on a CPU, where a 3B model's step takes seconds, the Qwen2.5-0.5B width in fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import record, table

# Qwen2.5(-VL) language-model sizes: hidden, layers, attention heads, KV heads, FFN, vocabulary
PRESETS = {
    "0.5b": (896, 24, 14, 2, 4864, 151936),  # Qwen2.5-0.5B
    "3b": (2048, 36, 16, 2, 11008, 151936),  # Qwen2.5-VL-3B-Instruct
    "7b": (3584, 28, 28, 4, 18944, 152064),  # Qwen2.5-VL-7B-Instruct
}
TEXT_TOKENS = 100  # system prompt, question and template around the video


def language_model(preset: str, device: str, dtype: torch.dtype):
    """A random Qwen2.5-VL text decoder (the model's own HF class, M-RoPE and all) and an LM head."""
    from transformers import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel

    hidden, layers, heads, kv_heads, ffn, vocab = PRESETS[preset]
    scale = hidden // heads // 128  # the released models' (t, h, w) rotary split [16, 24, 24] is for head_dim 128
    section = [16 * scale, 24 * scale, 24 * scale] if scale else [8, 12, 12]
    config = Qwen2_5_VLTextConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        max_position_embeddings=32768,
        rope_scaling={"type": "mrope", "mrope_section": section},
    )
    config._attn_implementation = "sdpa"
    with torch.device(device):
        decoder = Qwen2_5_VLTextModel(config).to(dtype).eval()
        lm_head = torch.nn.Linear(hidden, vocab, bias=False, dtype=dtype)
    return decoder, lm_head, config


def filled_cache(config, length: int, device: str, dtype: torch.dtype):
    """A DynamicCache holding `length` random entries per layer, as after a prefill of that many tokens."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    head_dim = config.hidden_size // config.num_attention_heads
    for layer in range(config.num_hidden_layers):
        shape = (1, config.num_key_value_heads, length, head_dim)
        cache.update(
            torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype), layer
        )
    return cache


def step_ms(decoder, lm_head, cache, length: int, steps: int) -> float:
    """Median milliseconds of one decode step (one token appended at position `length`, then cut back)."""
    from specvlm.adapters import cache_keyword, keep_cache_entries

    device = lm_head.weight.device
    embeds = torch.randn(1, 1, decoder.config.hidden_size, device=device, dtype=lm_head.weight.dtype)
    positions = torch.full((3, 1, 1), length, device=device)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        _sync()
        started = time.perf_counter()
        out = decoder(inputs_embeds=embeds, position_ids=positions, use_cache=True, **{cache_keyword(decoder): cache})
        lm_head(out.last_hidden_state[:, -1])
        _sync()
        if i >= 2:
            times.append(time.perf_counter() - started)
        keep_cache_entries(cache, length, [])
    return 1e3 * statistics.median(times)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main():
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", choices=sorted(PRESETS), default=["3b", "7b"] if gpu else ["0.5b"])
    ap.add_argument("--visual", nargs="+", type=int, default=[8192, 16384], help="visual tokens of the full prompt")
    ap.add_argument("--keep", nargs="+", type=float, default=[1.0, 0.1], help="fractions of them the draft keeps")
    ap.add_argument("--steps", type=int, default=10, help="timed decode steps per setting (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    rows = []
    for preset in args.presets:
        decoder, lm_head, config = language_model(preset, device, dtype)
        params = sum(p.numel() for p in decoder.parameters()) + lm_head.weight.numel()
        for n_visual in args.visual:
            full = None
            for keep in sorted(args.keep, reverse=True):
                length = int(n_visual * keep) + TEXT_TOKENS
                cache = filled_cache(config, length, device, dtype)
                ms = step_ms(decoder, lm_head, cache, length, args.steps)
                full = full or ms
                kv_mib = (
                    2
                    * config.num_hidden_layers
                    * length
                    * config.num_key_value_heads
                    * (config.hidden_size // config.num_attention_heads)
                    * dtype.itemsize
                    / 2**20
                )
                rows.append([preset, f"{params / 1e9:.2f}B", n_visual, keep, length, round(kv_mib), ms, full / ms])
                print(rows[-1], flush=True)
                del cache
        del decoder, lm_head
    body = table(
        [
            "language model",
            "params",
            "visual tokens",
            "keep",
            "cache tokens",
            "KV MiB",
            "step ms",
            "speedup vs keep 1.0",
        ],
        rows,
    )
    print(body)
    if args.record:
        where = "bf16 on the GPU" if gpu else "fp32 on the CPU"
        record(
            "draft-kv",
            "Pruning issue: draft decode step with 100% vs 10% of the visual KV",
            body
            + f"""

One decode step (decoder + LM head, one token) of a random-weight Qwen2.5-VL language model, {where}, with its KV cache
holding the visual tokens kept plus {TEXT_TOKENS} text tokens; median of {args.steps} steps after 2 warm-ups. Random
K/V fill the cache (a step's cost depends on shapes only).""",
        )


if __name__ == "__main__":
    main()
