"""A target split over N processes (tensor parallelism under torchrun, issue 26) against the same target on one: HF
eager `generate` and ours, each in both layouts, and what the collectives cost.

    python benchmarks/bench_tensor_parallel.py --shape cpu --ranks 1,2 --repeats 3 [--record]   # CPU processes
    python benchmarks/bench_tensor_parallel.py --shape 72b --ranks 8 --draft-layers 8           # 8 GPUs
    python benchmarks/bench_tensor_parallel.py --shape tiny --ranks 1,2 --repeats 1             # the test suite

The pair is bench_gpu_preset's calibrated-agreement pair, at any of its shapes (72b: Qwen2-VL-72B's language
model): the draft is the target's first `--draft-layers` layers, embeddings, norm and LM head, shared and therefore
split like the target (8 of 72b's 80 layers: a 7B's parameters), and the target's deeper layers are scaled toward
identity (α) until a γ-chain is accepted ≈ `--tau` tokens a round. Every run loads the target with
`from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))`, the user's path.
- Shapes up to `cpu` (`SAVED_SHAPES`): built and calibrated once here, saved with their weights, so every layout
  runs the same weights and the same α, and their tokens can be compared across layouts.
- Larger shapes cannot be written out (72b: 145 GB). A config-only checkpoint (an empty safetensors file) makes
  `from_pretrained` initialise every weight on its own rank (one seed on every rank: the replicated vision tower
  is the same on all of them), and each run calibrates its own α; layouts then hold different random weights.

Runs are interleaved (repeat 1: 1 rank, 2 ranks, ...; repeat 2: ...), each a fresh `torchrun --standalone` job. On
CPU a run of N ranks gives each rank cores/N threads, so every layout uses the same cores; on CUDA each rank has its
own GPU. Per run: ms per new token of HF eager `generate` and of ours (fast engine, chain γ), τ, and the cost of
one all-reduce of a verification's hidden states and of one of rank 0's broadcasts (a tree): a round makes 2 per
target layer and 2 per draft layer per draft step, plus 2 broadcasts. Ours must equal HF's tokens in every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_gpu_preset import SHAPES

from common import record, table

SAVED_SHAPES = ("tiny", "cpu")  # small enough to build, calibrate and write out once (cpu: ~200 MB)


def write_checkpoint(args, folder: Path) -> float | None:
    """The target every run loads: calibrated and with its weights for `SAVED_SHAPES` (returns its α); otherwise
    config-only, each rank initialising its own weights (returns None: each run calibrates)."""
    from bench_gpu_preset import build_pair, calibrate, pair_config, video_inputs
    from safetensors.torch import save_file

    if args.shape not in SAVED_SHAPES:
        pair_config(args.shape).save_pretrained(folder)
        save_file({}, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return None
    with torch.no_grad():
        target, draft = build_pair(args.shape, args.draft_layers, "cpu", torch.float32)
        prompt = video_inputs(target, min(args.prompt_tokens, 1024), "cpu", seed=1)
        alpha, _ = calibrate(target, draft, prompt, args.draft_layers, args.gamma, args.tau, tokens=32)
    target.save_pretrained(folder)
    return alpha


def run(args, ranks: int, folder: Path, out: Path) -> dict:
    """One fresh job of `ranks` processes; rank 0's results."""
    cores = os.cpu_count() or 1
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // ranks)))
    torchrun = Path(sys.executable).parent / "torchrun"
    forward = sys.argv[1:] if args.forward is None else args.forward  # this run's options, for every rank
    worker = [__file__, "--worker", str(folder), str(out), *forward]
    if args.alpha is not None:
        worker += ["--alpha", repr(args.alpha)]
    command = [str(torchrun), "--standalone", "--nproc-per-node", str(ranks), *worker]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{ranks} ranks failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def worker(folder: Path, out: Path, args) -> None:
    """One rank of a run: load the split target, calibrate, time HF and ours, measure the collectives."""
    import torch.distributed as dist
    from bench_gpu_preset import calibrate, share_draft, video_inputs
    from transformers import AutoModelForImageTextToText, DistributedConfig

    from specvlm import SpeculativeGenerator
    from specvlm.engine.distributed import from_leader

    torch.set_grad_enabled(False)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    split = dict(distributed_config=DistributedConfig(tp_plan="auto")) if ranks > 1 else {}
    torch.manual_seed(0)  # every rank initialises the replicated weights alike
    started = time.perf_counter()
    target = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, **split)
    if not split:
        target = target.to("cuda" if cuda else "cpu")
    target.eval()
    device = str(target.lm_head.weight.device)
    draft = share_draft(target, args.draft_layers)
    loaded = time.perf_counter() - started
    alpha = args.alpha
    if alpha is None:  # random weights of this run's own: calibrate them
        calibration = video_inputs(target, min(args.prompt_tokens, 1024), device, seed=1)
        alpha, _ = calibrate(target, draft, calibration, args.draft_layers, args.gamma, args.tau, tokens=32, steps=6)
    inputs = video_inputs(target, args.prompt_tokens, device)
    n_prompt = inputs["input_ids"].shape[1]
    opts = dict(do_sample=False, max_new_tokens=args.max_new_tokens)
    gen = SpeculativeGenerator(target, draft, tree="chain", num_draft_tokens=args.gamma, engine="fast", compile=False)
    times: dict = {"HF eager generate": [], "ours": []}
    tokens = {}
    for _ in range(args.inner):
        for name in times:
            sync(cuda)
            t0 = time.perf_counter()
            if name == "ours":
                out_ = gen.generate(**inputs, **opts)
                tokens[name], stats = out_.token_ids, out_.stats
            else:
                tokens[name] = target.generate(**inputs, **opts)[0, n_prompt:].tolist()
            sync(cuda)
            times[name].append(time.perf_counter() - t0)
    group = dist.group.WORLD if ranks > 1 else None
    hidden = target.config.text_config.hidden_size
    width = args.gamma + 1
    activation = torch.randn(1, width, hidden, device=device, dtype=dtype)
    tree = (torch.arange(width), torch.zeros(width, dtype=torch.long))
    results = dict(
        ranks=ranks,
        load_s=loaded,
        alpha=alpha,
        tau=stats.mean_accepted_tokens,
        tokens=tokens["ours"],
        identical=tokens["ours"] == tokens["HF eager generate"],
        ms_per_token={k: 1000 * statistics.median(v) / args.max_new_tokens for k, v in times.items()},
        all_reduce_ms=1000 * timed(lambda: dist.all_reduce(activation.clone(), group=group), cuda) if group else 0.0,
        broadcast_ms=1000 * timed(lambda: from_leader(group, tree), cuda) if group else 0.0,
        rounds=stats.rounds,
        prompt_tokens=int(n_prompt),
    )
    if ranks == 1 or dist.get_rank() == 0:
        out.write_text(json.dumps(results))


def timed(fn, cuda: bool, repeats: int = 20) -> float:
    fn()
    sync(cuda)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(cuda)
    return (time.perf_counter() - t0) / repeats


def sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def summary(runs: dict[int, list[dict]], args) -> str:
    single = runs.get(1)
    rows = []
    for ranks, done in runs.items():
        hf = [r["ms_per_token"]["HF eager generate"] for r in done]
        ours = [r["ms_per_token"]["ours"] for r in done]
        speed = lambda xs: f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"
        versus = "-"
        if single and ranks != 1:
            one = statistics.median(r["ms_per_token"]["ours"] for r in single)
            versus = f"{one / statistics.median(ours):.2f}x"
        rows.append(
            [
                ranks,
                speed(hf),
                speed(ours),
                f"{statistics.median(h / o for h, o in zip(hf, ours)):.2f}x",
                versus,
                f"{statistics.median(r['tau'] for r in done):.2f}",
                f"{statistics.median(r['all_reduce_ms'] for r in done):.3f}",
                f"{statistics.median(r['broadcast_ms'] for r in done):.3f}",
                "yes" if all(r["identical"] for r in done) else "NO",
                "-" if not single or not args.saved else ("yes" if same_tokens(done, single) else "no"),
            ]
        )
    headers = [
        "ranks",
        "HF eager ms/token",
        "ours ms/token",
        "ours vs HF",
        "ours vs ours on 1 rank",
        "τ",
        "all-reduce ms",
        "broadcast ms",
        "= HF tokens",
        "= 1 rank's tokens",
    ]
    return table(headers, rows)


def same_tokens(runs: list[dict], single: list[dict]) -> bool:
    """Whether every run made the 1-rank runs' tokens (same weights; a split sums in another order, so a near tie
    may break the other way)."""
    return all(run["tokens"] == single[0]["tokens"] for run in runs)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    ap.add_argument("--ranks", default="1,2", help="layouts to compare, comma-separated process counts")
    ap.add_argument("--draft-layers", type=int, default=None, help="default: 8 for 72b, else 2")
    ap.add_argument("--tau", type=float, default=3.5)
    ap.add_argument("--gamma", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of every layout")
    ap.add_argument("--inner", type=int, default=2, help="timed generations of each method within a run")
    ap.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    ap.add_argument("--worker", nargs=2, metavar=("CHECKPOINT", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--alpha", type=float, default=None, help=argparse.SUPPRESS)  # the saved target's, applied
    args = ap.parse_args(argv)
    args.draft_layers = args.draft_layers or (8 if args.shape == "72b" else 2)
    args.forward = None if argv is None else list(argv)
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]), args)
        from specvlm.cli import _end_a_rank

        _end_a_rank(0)  # as the CLI's ranks end: the group destroyed, no finalization (it could abort a rank in C++)
        return {}
    layouts = [int(r) for r in args.ranks.split(",")]
    runs: dict[int, list[dict]] = {r: [] for r in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "target"
        args.alpha = write_checkpoint(args, folder)
        args.saved = args.alpha is not None
        for repeat in range(args.repeats):
            for ranks in layouts:
                runs[ranks].append(run(args, ranks, folder, Path(tmp) / f"{ranks}-{repeat}.json"))
                shown = {k: v for k, v in runs[ranks][-1].items() if k != "tokens"}
                print(f"repeat {repeat + 1}, {ranks} rank(s): {shown}", flush=True)
    body = summary(runs, args)
    print(body)
    if args.record:
        note = (
            f"Qwen2.5-VL-shaped `{args.shape}` target (random weights, calibrated "
            f"agreement, τ ≈ {args.tau}), draft = its first {args.draft_layers} layers; video prompt of "
            f"{runs[layouts[0]][0]['prompt_tokens']} tokens, {args.max_new_tokens} new tokens, chain γ={args.gamma}, "
            f"greedy; {args.repeats} interleaved runs per layout, median (range) of each run's median of "
            f"{args.inner}. On CPU every layout uses all cores (cores / ranks threads a rank)."
        )
        record(
            f"tensor-parallel-{args.shape}",
            f"Tensor parallelism: {args.shape} target split over ranks",
            note + "\n\n" + body,
        )
    return runs


if __name__ == "__main__":
    main()
