"""EagleVLM on the testbed target: τ and speedup over target-only decoding vs training steps, per visual-compressor
mode (the paper's training-time scaling), plus the head's size and its per-round draft cost against one target step.
Mode `eagle3` trains an EAGLE-3 head instead (issue 22: the target's low / middle / high layers, the training-time
test over --ttt-steps), at the same steps, learning rate and data, to compare the two architectures.

    python benchmarks/bench_eagle.py [--target DIR] [--world DIR] [--steps 0,100,300,1000]
        [--modes none,select,select-budget,weighted,concat,pool,conv,resampler,verifier] [--eval 4]
        [--max-new-tokens 48] [--budget-weight 0.5] [--record]
    python benchmarks/bench_eagle.py --tiny qwen2_5_vl ...     # a RANDOM tiny target: τ means nothing

Use --threads 1 on the shared 2-core CPU machines: with two intra-op threads, training steps ran ~25x slower
(denormals in AdamW's moments; the flush flag does not seem to reach worker threads) and timings swung wildly.

Per mode, one head is trained (online distillation on the world's train split, `specvlm.train.train_head`) and
evaluated after each step count in --steps (the run is resumed between them, which equals one uninterrupted run).
Evaluation: greedy `SpeculativeGenerator(target, head, tree="dynamic")` on the first --eval test-split prompts,
checked token for token against `target.generate`, and timed side by side (same process) with a plain target-only
greedy loop on the same engine (HF `generate` is timed too, for reference). τ = draft tokens accepted per
verification round (bonus excluded); speedup = target-only loop seconds / speculative seconds (decode only: same
prefill in both, summed over prompts; end-to-end also shown). "draft/step" = the head's time
per round (catch-up + tree expansion) divided by one target decode step; "verify/step" = the rest of a round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.drafters.eagle import EagleHead
from specvlm.drafters.eagle3 import Eagle3Head
from specvlm.train import train_head
from specvlm.train.data import ConversationData

from common import record, table

ROOT = Path(__file__).resolve().parent.parent
BUDGET_WEIGHT = 0.5  # select-budget's default: the kept fraction is at most 1/3 (conv 3x), so the term is at
#                       most ~0.17, comparable to the testbed head's distillation loss late in training (~0.25)
MODES = {  # compressor config per mode (the paper's defaults: prune/pool 20x, conv 3x, 2 resampler queries)
    "none": None,
    "prune": dict(mode="concat", branches=["prune:20"]),
    "pool": dict(mode="concat", branches=["pool:20"]),
    "conv": dict(mode="concat", branches=["conv:3"]),
    "resampler": dict(mode="concat", branches=["resampler:2"]),
    # the paper's three combinations, with compressor.py's default branches: (a) a gate mixes prune/pool/conv at
    # one ratio (3x), (b) prune 20x + pool 20x + conv 3x + resampler 2 concatenated, (c) a gate picks one of
    # those four or text-only per input; select-budget adds our compute-budget term (--budget-weight)
    "weighted": dict(mode="weighted", ratio=3),
    "concat": dict(mode="concat"),
    "select": dict(mode="select"),
    "select-budget": dict(mode="select", budget_weight=BUDGET_WEIGHT),
    # the first paper's verifier-guided selection as a fixed branch (10%: that paper's keep ratio); the generator
    # hands the head the scores captured in its own target prefill, so inference pays no second prefill
    "verifier": dict(mode="concat", branches=["verifier:10"]),
    "eagle3": None,  # not a compressor: an EAGLE-3 head (drafters/eagle3.py), no compressor
}


def compressor_of(mode: str, budget_weight: float) -> dict | None:
    config = MODES[mode]
    return dict(config, budget_weight=budget_weight) if mode == "select-budget" else config


def describe(compressor) -> str:
    """The compressor as run: its combination mode, branches and (select) budget weight."""
    if compressor is None:
        return "-"
    budget = f", budget {compressor.budget_weight}" if compressor.mode == "select" else ""
    return f"{compressor.mode}: {' + '.join(compressor.names)}{budget}"


def find_target(family: str | None) -> Path | None:
    base = ROOT / "src" / "specvlm" / "testbed" / "models"
    families = [family] if family else ["qwen2_5_vl", "llava_onevision", "qwen2_vl"]
    for f in families:
        if (base / f / "target" / "config.json").is_file():
            return base / f / "target"
    return None


def tiny_setup(family: str, root: Path) -> Path:
    from specvlm.inputs.testing import save_tiny_processor
    from specvlm.tiny import make_model

    folder = root / f"tiny-{family}"
    model = make_model(family, init=0.3, hidden=128, layers=4)
    model.save_pretrained(folder)
    save_tiny_processor(folder, family, model)
    return folder


def prompt_of(data: ConversationData, index: int) -> tuple[dict, int]:
    """Inputs of a record's first user turn with its media (its answer cut off) and the answer's length."""
    example = data[index]
    length = int(example.response.nonzero()[0])
    cut = {
        k: (v[:, :length] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
        for k, v in example.inputs.items()
    }
    return cut, int(example.response.sum())


def timed_target(target, prompt, max_new: int) -> tuple[list[int], float, float]:
    """(tokens, end-to-end s, decode s) of target-only greedy decoding; prefill timed separately to split it."""
    n = prompt["input_ids"].shape[1]
    start = time.perf_counter()
    target.generate(**prompt, do_sample=False, max_new_tokens=1)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    ids = target.generate(**prompt, do_sample=False, max_new_tokens=max_new)[0, n:].tolist()
    total = time.perf_counter() - start
    return ids, total, max(total - prefill, 1e-9)


def timed_loop(target, prompt, max_new: int) -> tuple[list[int], float, float]:
    """(tokens, end-to-end s, decode s) of a plain target-only greedy loop on the same engine (adapter prefill, then
    one 1-token forward per new token): the speculative loop minus speculation."""
    from specvlm.engine.session import ModelSession

    adapter = adapter_for(target)
    eos = target.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    start = time.perf_counter()
    session = ModelSession(adapter)
    logits, _ = session.prefill(0, adapter.prepare(prompt))
    prefill = time.perf_counter() - start
    ids = [int(logits[-1].argmax())]
    while len(ids) < max_new and ids[-1] not in eos:
        logits, _ = session.extend(torch.tensor([ids[-1:]]), torch.tensor([session.next_positions]))
        ids.append(int(logits[0, -1].argmax()))
    total = time.perf_counter() - start
    return ids, total, total - prefill


def evaluate(target, head, prompts, references, options, max_new: int) -> dict:
    draft_s = [0.0]
    propose = head.propose

    def timed_propose(*a, **k):
        start = time.perf_counter()
        try:
            return propose(*a, **k)
        finally:
            draft_s[0] += time.perf_counter() - start

    head.propose = timed_propose
    if head.compressor is not None:
        head.compressor.picks.clear()
    out = dict(accepted=0, rounds=0, total_s=0.0, decode_s=0.0, tokens=0, equal=True, head_prompt=0, prompt=0)
    try:
        for prompt, ref in zip(prompts, references):
            gen = SpeculativeGenerator(target, head, **options)
            start = time.perf_counter()
            res = gen.generate(**prompt, do_sample=False, max_new_tokens=max_new)
            out["total_s"] += time.perf_counter() - start
            s = res.stats
            out["decode_s"] += s.decode_s
            out["accepted"] += s.accepted_tokens
            out["rounds"] += s.rounds
            out["tokens"] += s.new_tokens
            out["head_prompt"] += s.draft_prompt_tokens
            out["prompt"] += s.target_prompt_tokens
            out["equal"] &= res.token_ids == ref
    finally:
        del head.propose
    out["draft_s"] = draft_s[0]
    out["picks"] = (
        dict(head.compressor.picks) if head.compressor is not None and head.compressor.mode == "select" else None
    )
    return out


def target_step_seconds(target, prompt, repeats: int = 5) -> float:
    """One target decode step (1 token over a cache holding the prompt), median of `repeats`."""
    from specvlm.engine.session import ModelSession

    adapter = adapter_for(target)
    times = []
    for _ in range(repeats):
        session = ModelSession(adapter)
        logits, _ = session.prefill(0, adapter.prepare(prompt))
        token = logits[-1:].argmax(-1).cpu()[None]  # (1, 1)
        start = time.perf_counter()
        session.extend(token, torch.tensor([session.next_positions]))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="target folder (default: the testbed target under src/specvlm/testbed/models)")
    ap.add_argument("--family", help="testbed family to look for (default: the first found)")
    ap.add_argument("--tiny", metavar="FAMILY", help="use a random tiny target instead (τ is meaningless)")
    ap.add_argument("--world", help="world folder (train/test JSONL + videos); default: generate --clips clips")
    ap.add_argument(
        "--clips",
        type=int,
        default=40,
        help="clips of a generated world (default 40; seed 0, the testbed build's world starts with the same clips)",
    )
    ap.add_argument("--steps", default="0,100,300,1000", help="training steps at which to evaluate")
    ap.add_argument(
        "--full-modes",
        default="none,select,select-budget",
        help="modes trained to the largest --steps; the others stop at --short-max (CPU budget)",
    )
    ap.add_argument("--short-max", type=int, default=300)
    ap.add_argument(
        "--all-zero", action="store_true", help="evaluate the untrained head of every mode, not only the first mode's"
    )
    ap.add_argument("--modes", default="none,pool,conv,resampler,select", help=f"of {', '.join(MODES)}")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3: small targets)")
    ap.add_argument("--ttt-steps", type=int, default=7, help="eagle3: drafting steps unrolled in training (default 7)")
    ap.add_argument("--noise", type=float, default=0.0, help="feature noise a of U(-a, a)")
    ap.add_argument(
        "--budget-weight",
        type=float,
        default=BUDGET_WEIGHT,
        help=f"select-budget mode: weight of the gate's budget term (default {BUDGET_WEIGHT})",
    )
    ap.add_argument("--eval", type=int, default=4, help="test prompts per evaluation (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--tree-total-tokens", type=int, default=60)
    ap.add_argument("--tree-depth", type=int, default=6)
    ap.add_argument(
        "--small-tree",
        default="16,4,4",
        metavar="TOTAL,DEPTH,TOPK",
        help="a second, smaller dynamic tree evaluated at each mode's last step count ('' = none): on "
        "CPU a 60-token verification costs several decode steps",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--record", action="store_true", help="write the tables into docs/BENCHMARKS.md")
    ap.add_argument(
        "--label", default="", help="records into its own section (eagle-LABEL) instead of replacing the main one"
    )
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)  # random or barely trained weights can produce denormals, which CPUs crawl on
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = sorted({int(s) for s in args.steps.split(",")})
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    scratch = Path(tempfile.mkdtemp(prefix="bench_eagle_"))
    started = time.perf_counter()

    if args.tiny:
        target_dir, caveat = tiny_setup(args.tiny, scratch), True
    else:
        found = Path(args.target) if args.target else find_target(args.family)
        if found is None:
            ap.error("no testbed target under src/specvlm/testbed/models/<family>/target; pass --target or --tiny")
        target_dir, caveat = found, False
    world = Path(args.world) if args.world else scratch / "world"
    if not args.world:
        from specvlm.testbed import generate_world
        from specvlm.testbed.assets import trained_texture

        generate_world(world, args.clips, seed=0, workers=2, texture=trained_texture(target_dir))
    from specvlm.loading import load_model

    target = load_model(str(target_dir), dtype="float32", device="cpu")
    train = ConversationData(
        world / "train.jsonl", target_dir, num_frames=args.num_frames, model_config=target.config, cache=10**6
    )  # every clip decoded once
    test = ConversationData(world / "test.jsonl", target_dir, num_frames=args.num_frames)
    kinds = [json.loads(line).get("kind") for line in (world / "test.jsonl").read_text().splitlines() if line]
    order = [i for i, k in enumerate(kinds) if k == "caption"] + [i for i, k in enumerate(kinds) if k != "caption"]
    picked = [prompt_of(test, i) for i in order[: args.eval]]  # captions first: long answers
    prompts = [p for p, _ in picked]
    options = dict(tree="dynamic", tree_top_k=10, tree_total_tokens=args.tree_total_tokens, tree_depth=args.tree_depth)

    with torch.no_grad():
        for p in prompts[:1]:  # warm-up (allocator, kernels)
            timed_target(target, p, 4)
        hf = [timed_target(target, p, args.max_new_tokens) for p in prompts]
        references = [ids for ids, _, _ in hf]
        timed_loop(target, prompts[0], 4)
        baseline = [timed_loop(target, p, args.max_new_tokens) for p in prompts]
        if [ids for ids, _, _ in baseline] != references:
            raise SystemExit("the plain target loop does not reproduce target.generate")
        hf_total, hf_decode = sum(t for _, t, _ in hf), sum(d for _, _, d in hf)
        base_total, base_decode = sum(t for _, t, _ in baseline), sum(d for _, _, d in baseline)
        base_tokens = sum(len(ids) for ids in references)
        step_s = statistics.median(target_step_seconds(target, p) for p in prompts)
    adapter = adapter_for(target)
    target_params = sum(p.numel() for p in target.parameters())
    lm_params = sum(p.numel() for p in adapter.decoder.parameters())
    print(
        f"target {target_dir}: {target_params:,} parameters ({lm_params:,} language model); "
        f"target-only loop {base_tokens} tokens in {base_total:.2f}s (decode {base_decode:.2f}s; target.generate "
        f"{hf_total:.2f}s / {hf_decode:.2f}s), one step "
        f"{step_s * 1e3:.1f} ms",
        flush=True,
    )

    def row(mode, n, seconds, ev, label):
        rounds = max(ev["rounds"], 1)
        return [
            mode,
            n,
            round(seconds, 1),
            label,
            ev["accepted"] / rounds,
            ev["tokens"] / rounds,
            base_decode / ev["decode_s"],
            base_total / ev["total_s"],
            ev["draft_s"] / rounds / step_s,
            (ev["decode_s"] - ev["draft_s"]) / rounds / step_s,
            f"{ev['head_prompt']}/{ev['prompt']}",
            "yes" if ev["equal"] else "NO",
            json.dumps(ev["picks"]) if ev["picks"] else "-",
        ]

    big_label = f"{args.tree_total_tokens}/{args.tree_depth}/10"
    small, small_label = None, None
    if args.small_tree:
        total, depth, top_k = (int(v) for v in args.small_tree.split(","))
        small = dict(tree="dynamic", tree_top_k=top_k, tree_total_tokens=total, tree_depth=depth)
        small_label = f"{total}/{depth}/{top_k}"
    rows, size_rows, train_log = [], [], {}
    passes: dict = {}  # the frozen target's outputs per training example, shared by every EAGLE-2 mode's run
    for mode in modes:
        if mode == "eagle3":
            head = Eagle3Head.init_for(target, seed=0, dtype=torch.float32)
        else:
            head = EagleHead.init_for(
                target, compressor=compressor_of(mode, args.budget_weight), seed=0, dtype=torch.float32
            )
        out_dir = scratch / f"head-{mode}"
        done, seconds = 0, 0.0
        full = mode in {m.strip() for m in args.full_modes.split(",")}
        for n in steps:
            if (not full and n > args.short_max) or (n == 0 and mode != modes[0] and not args.all_zero):
                continue  # an untrained head is evaluated once (the first mode): it is costly and uninformative
            if n > done:
                result = train_head(
                    target,
                    train,
                    head,
                    steps=n,
                    lr=args.lr,
                    feature_noise=args.noise,
                    seed=0,
                    out_dir=str(out_dir),
                    resume=done > 0,
                    progress=False,
                    cache_target=True,
                    target_cache=passes.setdefault(mode == "eagle3", {}),  # the two read other target features
                    ttt_steps=args.ttt_steps,
                )
                done, seconds = n, seconds + result.seconds
                train_log[mode] = dict(
                    steps=n,
                    seconds=round(seconds, 1),
                    loss_last10=result.as_dict()["loss_last10"],
                    train_picks=result.picks or None,
                )
            with torch.no_grad():
                ev = evaluate(target, head, prompts, references, options, args.max_new_tokens)
            rows.append(row(mode, n, seconds, ev, big_label))
            print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
        if small:
            with torch.no_grad():
                ev = evaluate(target, head, prompts, references, small, args.max_new_tokens)
            rows.append(row(mode, done, seconds, ev, small_label))
            print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
        size_rows.append(
            [
                mode,
                describe(head.compressor),
                head.trainable_parameters(),
                sum(p.numel() for p in head.compressor.parameters()) if head.compressor else 0,
                head.trainable_parameters() / lm_params,
            ]
        )

    elapsed = time.perf_counter() - started
    shown_target = target_dir.relative_to(ROOT) if target_dir.is_relative_to(ROOT) else target_dir.name
    body = "\n\n".join(
        [
            (
                "**Caveat: a RANDOM tiny target** (`--tiny`): its outputs are noise, so τ and speedups say nothing "
                "about EagleVLM; this only exercises the pipeline.\n"
                if caveat
                else ""
            )
            + f"Target `{shown_target}` "
            f"({target_params:,} parameters, {lm_params:,} in the language model), fp32 on CPU. Training: the world's "
            f"train split ({len(train)} conversations), lr {args.lr}, batch 1, AdamW β=(0.9, 0.95), clip 0.5, noise "
            f"{args.noise}, seed 0, the target's outputs cached per example (identical results); one run per mode, "
            f"evaluated after each step count (modes other than {args.full_modes} stop at "
            f"{args.short_max} steps). Evaluation: the first "
            f"{len(prompts)} test-split prompts (captions first; {args.num_frames} frames), greedy, "
            f"{args.max_new_tokens} new tokens, "
            f"dynamic trees as listed. Target-only baseline (same process, outputs identical): a plain greedy loop on "
            f"the same engine (adapter prefill, then one 1-token forward per token): {base_tokens} tokens, "
            f"{base_total:.2f} s end to end, decode {base_decode:.2f} s; HF `target.generate` on the same prompts: "
            f"{hf_total:.2f} s, decode {hf_decode:.2f} s (its prefill is slower, so speedups against it would be "
            f"larger). One target decode step {step_s * 1e3:.1f} ms.",
            table(HEADERS, rows),
            "tree: dynamic tree tokens verified per round / depth / top-k. τ: draft tokens accepted per round (bonus "
            "excluded); tok/round = new tokens per verification round; "
            "speedups are target-only loop / speculative time (decode; end to end incl. the same prefill); "
            "draft/step and verify/step: per-round head time and the rest of the round, in target decode steps; head "
            "prompt: the head's prompt rows / the target's prompt tokens (compression); lossless: every output equal "
            "to `target.generate`; gate picks: branches the select gate chose at inference (one per prompt). train s: "
            "cumulative training seconds of that mode; the target's outputs per example are computed once and shared "
            "by all modes, so the first mode's time includes them.",
            table(["mode", "compressor", "head parameters", "of which compressor", "head / language model"], size_rows),
            "Training log (last step count): " + json.dumps(train_log),
            f"Total wall time {elapsed / 60:.1f} min on 2 shared CPU cores.",
        ]
    )
    print(body)
    if args.record:
        record(
            f"eagle-{args.label}" if args.label else "eagle",
            "EagleVLM: τ and speedup vs training steps, per visual-compressor mode"
            + (f" ({args.label})" if args.label else ""),
            body,
        )


HEADERS = [
    "mode",
    "steps",
    "train s",
    "tree",
    "τ",
    "tok/round",
    "speedup (decode)",
    "speedup (e2e)",
    "draft/step",
    "verify/step",
    "head prompt",
    "lossless",
    "gate picks",
]

if __name__ == "__main__":
    main()
