"""`specvlm bench`: argument definitions and handler (registered by `specvlm.cli.build_parser`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..arguments import (
    add_device_arguments,
    add_draft_positions_argument,
    add_engine_arguments,
    add_num_draft_tokens_argument,
    add_num_frames_argument,
    engine_options,
)
from ..errors import SpecVLMError
from .datasets import LOADERS
from .methods import (
    BASE_METHODS,
    DEFAULT_KEEP_RATIOS,
    DEFAULT_PRUNING_METHODS,
    PRUNED_FAMILIES,
    parse_keep_ratios,
    parse_pruning_methods,
)

DESCRIPTION = """Run methods × settings over a dataset: every output is checked token for token against the
target's own greedy output, and every speedup is measured against the target-only run of the same invocation
(warm-up first, then --repeats rounds of every method, interleaved; speedups are medians with their min-max).
Writes results.jsonl, summary.json, summary.md and PNG plots to --out."""

EPILOG = f"""methods: {", ".join(BASE_METHODS)}, {", ".join(f"{f}:<pruning method>" for f in PRUNED_FAMILIES)}
(prune / self-prune / eagle-prune alone = every --pruning-methods entry; each runs at every --keep-ratios).
default --methods: target,hf-assisted,sd-chain,sd-static,sd-dynamic,prune with --draft, else target,self,self-prune;
eagle is added with --head.
datasets: testbed:WORLD_DIR_OR_JSONL, {", ".join(f"{n}:ROOT" for n in LOADERS if n != "testbed")}

example:
  specvlm bench --dataset testbed:data/world --split test --kinds caption --limit 4 --target models/target \\
      --draft models/draft --methods target,sd-static,prune:specvlm,prune:uniform --keep-ratios 1.0,0.25,0.1 \\
      --out runs/bench1"""


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="benchmark methods × settings over a dataset (speed, τ, losslessness)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        required=True,
        metavar="NAME:ROOT",
        help="testbed:PATH (a generate_world folder or one of its JSONL files) or a benchmark in its "
        "published local layout, e.g. mvbench:/data/MVBench",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="samples to run (per task / subject for MVBench, MLVU, MMMU; default: the paper's count)",
    )
    g.add_argument("--split", default=None, help="split where the dataset has several (testbed default: test)")
    g.add_argument(
        "--kinds",
        default=None,
        metavar="KIND,...",
        help="testbed only: keep records of these kinds (caption, color, direction, ...) before --limit "
        "counts; each clip has one caption, so --kinds caption --limit N measures N clips, while "
        "--limit alone takes the first clip's caption and questions",
    )
    g.add_argument(
        "--prompt-mode",
        default=None,
        choices=("paper", "original", "describe", "explain"),
        help="prompt sent per sample (default paper: what the papers ran)",
    )
    add_num_frames_argument(g)
    g.add_argument(
        "--draft-num-frames",
        type=int,
        default=None,
        metavar="N",
        help="the draft model reads its own view of each video, N frames (target and sd-* methods only; default: "
        "the target's frames)",
    )
    g = p.add_argument_group("models")
    g.add_argument("--target", required=True, help="target model folder")
    g.add_argument(
        "--draft",
        default=None,
        help="draft model folder for hf-assisted, sd-*, prune:* (the target's family, or another sharing its "
        "vocabulary for sd-*: it reads its own inputs)",
    )
    g.add_argument(
        "--head", default=None, help="a draft head folder for eagle / eagle-prune:* (an EAGLE-3 head: eagle only)"
    )
    add_device_arguments(g)
    g = p.add_argument_group("methods")
    g.add_argument("--methods", default=None, help="comma-separated methods (see below)")
    g.add_argument(
        "--keep-ratios",
        default=",".join(f"{r:g}" for r in DEFAULT_KEEP_RATIOS),
        help="visual keep ratios of the pruning methods (default %(default)s)",
    )
    g.add_argument(
        "--pruning-methods",
        default=",".join(DEFAULT_PRUNING_METHODS),
        help="what prune / self-prune / eagle-prune expand to (default %(default)s)",
    )
    g.add_argument(
        "--tree",
        choices=("chain", "static", "dynamic"),
        default="static",
        help="draft shape of prune:* / self / self-prune:* (default static: the video paper's tree)",
    )
    add_num_draft_tokens_argument(g, "chain length of sd-chain")
    add_draft_positions_argument(g)
    g.add_argument(
        "--hf-assistant-tokens",
        type=int,
        default=None,
        metavar="N",
        help="hf-assisted: a constant N draft tokens per round (default: HF's own defaults)",
    )
    add_engine_arguments(g)
    g = p.add_argument_group("measurement")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens per sample at most (default 128)")
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="always generate --max-new-tokens (the video paper's older code), for equal lengths",
    )
    g.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed rounds per sample after the warm-up, every method once per round, interleaved "
        "(default 3): speedups are the median of the per-sample, per-round ratios, with their "
        "min-max",
    )
    g.add_argument("--warmup", type=int, default=1, help="untimed passes of every method on the first sample")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; on a shared machine fewer threads can be faster)",
    )
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="folder for results.jsonl, summary.md/json and the plots")
    g.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    g.add_argument("--strict", action="store_true", help="exit 3 when any output differs from the target's")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args) -> int:
    from .runner import parse_kinds, run_bench

    keep_ratios = parse_keep_ratios(args.keep_ratios)
    kinds = parse_kinds(args.kinds)
    pruning_methods = parse_pruning_methods(args.pruning_methods)
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    _quiet_transformers()
    if args.threads is not None:
        if args.threads < 1:
            raise SpecVLMError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    summary = run_bench(
        args.dataset,
        args.target,
        args.out,
        draft=args.draft,
        head=args.head,
        methods=args.methods,
        keep_ratios=keep_ratios,
        pruning_methods=pruning_methods,
        max_new_tokens=args.max_new_tokens,
        num_frames=args.num_frames,
        draft_num_frames=args.draft_num_frames,
        limit=args.limit,
        split=args.split,
        prompt=args.prompt_mode,
        kinds=kinds,
        repeats=args.repeats,
        warmup=args.warmup,
        ignore_eos=args.ignore_eos,
        num_draft_tokens=args.num_draft_tokens,
        tree=args.tree,
        hf_assistant_tokens=args.hf_assistant_tokens,
        draft_positions=args.draft_positions,
        **engine_options(args),
        dtype=args.dtype,
        device=args.device,
        force=args.force,
        command=_command_line(),
        say=say,
        progress=not args.quiet,
    )
    from .report import LEGEND, markdown_table

    print(markdown_table(summary))
    print(LEGEND)
    say(f"wrote {args.out}/results.jsonl, summary.md, summary.json and plots")
    failed = [s["run"] for s in summary if s["lossless"] < s["samples"]]
    if failed:
        print(f"specvlm: warning: output differs from target-only greedy for {', '.join(failed)}", file=sys.stderr)
        if args.strict:
            return 3
    return 0


def _command_line() -> str | None:
    """The command as typed, when this process is the `specvlm` command (not a test calling `main([...])`)."""
    program = Path(sys.argv[0]) if sys.argv else Path()
    ours = program.name == "specvlm" or (program.name == "__main__.py" and program.parent.name == "specvlm")
    return "specvlm " + shlex.join(sys.argv[1:]) if ours else None


def _quiet_transformers() -> None:
    """HF warns on every assisted call about generation_config arguments and draws a bar per checkpoint load; the
    harness reports its own progress."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
