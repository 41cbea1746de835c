"""`specvlm` command line: generate | demo | train-head | bench | serve | testbed build. Every command has --help; bad
input is one line on stderr and a non-zero exit (set SPECVLM_DEBUG=1 to see tracebacks of unexpected errors); Ctrl-C
is one line and exit 130. Parsing and checking the options imports neither torch nor transformers (package
`__init__`s export lazily), so option errors, --help and --version answer in a fraction of a second."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import NamedTuple

from .errors import SpecVLMError
from .inputs.arguments import add_input_arguments
from .options import COMPILE_FLAG, PRUNING_METHODS, DecodeConfig, parse_device


def _add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy (default); > 0 samples, losslessly, from the target's distribution",
    )
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0 = off)")
    g.add_argument(
        "--tree",
        choices=("chain", "static", "dynamic"),
        default=None,
        help="draft shape: chain of --num-draft-tokens, the EAGLE-1 static tree (default for draft "
        "models) or an EAGLE-2 dynamic tree (default for --head)",
    )
    g.add_argument("--num-draft-tokens", type=int, default=5, help="chain length γ (default 5)")
    g.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.0,
        help="chain: stop drafting after a token the draft gives probability below this (HF assisted "
        "generation uses 0.4; default 0 = always γ tokens)",
    )
    g.add_argument("--tree-top-k", type=int, default=10, help="dynamic tree: children per expanded node")
    g.add_argument("--tree-depth", type=int, default=6, help="dynamic tree: longest path in draft tokens")
    g.add_argument(
        "--tree-total-tokens", type=int, default=60, help="dynamic tree: tokens verified per round, root included"
    )
    add_engine_arguments(g)
    g = p.add_argument_group("visual pruning of the draft's prompt (the target always sees every token)")
    g.add_argument(
        "--pruning",
        default=None,
        choices=("none",) + PRUNING_METHODS,
        help="how the draft's visual tokens are chosen (specvlm: verifier attention + uniform fill). "
        "Default: specvlm with --draft self (an unpruned self-draft can never be faster than the "
        "target alone), else none",
    )
    g.add_argument(
        "--visual-keep-ratio",
        type=float,
        default=None,
        help="fraction of visual tokens the draft keeps (default 0.1 with --pruning)",
    )
    g.add_argument("--stage1-mass", type=float, default=0.4, help="specvlm Stage I attention mass λ (default 0.4)")
    g.add_argument(
        "--draft-positions",
        choices=("original", "contiguous"),
        default=None,
        help="position ids of the pruned draft prompt (default: original for Qwen M-RoPE, contiguous otherwise)",
    )


def add_engine_arguments(g) -> None:
    g.add_argument(
        "--engine",
        choices=("fast", "eager"),
        default="fast",
        help="fast (default): static KV cache, fixed-shape steps, one host sync per round; eager: HF's "
        "dynamic cache and eager forwards (the reference path). Same output either way",
    )
    g.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="torch.compile the fast engine's steps (CUDA graphs on CUDA). auto: on CUDA only; on CPU the "
        "one-time compile (seconds per step shape, more on big models) outlasts a single short answer",
    )


def engine_options(args) -> dict:
    return dict(engine=args.engine, compile=COMPILE_FLAG[args.compile])


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", required=True, help="target model folder (or hub id)")
    g.add_argument(
        "--draft",
        default="self",
        help="a draft model folder (or hub id) of the same family; an EagleHead folder (as --head); "
        "'self' (default: the target drafts for itself from a SpecVLM-pruned view of the images / "
        "video, see --pruning); or 'none' (no speculation: the target's own Hugging Face generate, "
        "the baseline to compare with, with the same summary line)",
    )
    g.add_argument(
        "--head",
        default=None,
        metavar="DIR",
        help="a trained EagleHead folder (specvlm train-head) to draft with instead of a draft model "
        "(its tree defaults to EAGLE-2's dynamic tree)",
    )
    g.add_argument(
        "--device",
        default="auto",
        type=parse_device,
        help="auto (default: CUDA if present, spread over all GPUs; else cpu), cpu, cuda, cuda:N or mps",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="weights dtype (auto: the checkpoint's on GPU, float32 on CPU)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage of `specvlm generate` alone is a screenful) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("specvlm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="specvlm", description="Lossless speculative decoding for VLMs.")
    parser.add_argument("--version", action="version", version=f"specvlm {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser(
        "generate",
        help="answer a prompt about images or a video, speculatively",
        description="Generate with speculative decoding; the output equals the target's own.",
    )
    _add_model_arguments(gen)
    add_input_arguments(gen)
    _add_decoding_arguments(gen)
    gen.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="with --temperature > 0: seed the sampling, so the same N gives the same answer",
    )
    gen.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, stats)")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo (no downloads)",
        description="Speculative decoding on small bundled models, checked against the target.",
    )
    demo.add_argument(
        "--family",
        choices=("qwen2_5_vl", "llava_onevision"),
        default="qwen2_5_vl",
        help="which bundled testbed pair to run (default qwen2_5_vl)",
    )
    demo.add_argument("--max-new-tokens", type=int, default=96, help="tokens to generate (default 96)")
    demo.add_argument(
        "--visual-keep-ratio",
        type=float,
        default=0.1,
        help="fraction of the video tokens the draft keeps (default 0.1)",
    )
    demo.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed rounds, target-only and speculative interleaved, after one warm-up (default 5)",
    )
    add_engine_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    from .train.command import add_train_head_parser

    add_train_head_parser(sub)

    from .bench.command import add_bench_parser

    add_bench_parser(sub)

    from .serve.command import add_serve_parser

    add_serve_parser(sub)

    testbed = sub.add_parser(
        "testbed",
        help="the synthetic testbed: build its tiny trained model pairs",
        description="Tools for the synthetic video testbed (see `specvlm testbed build --help`).",
    )
    from .testbed.build import add_build_command

    add_build_command(testbed)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args) or 0
    except SpecVLMError as err:
        print(f"specvlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C at any moment: importing, loading, generating
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the way out
        print("specvlm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("SPECVLM_DEBUG"):
            raise
        print(f"specvlm: error: {type(err).__name__}: {err} (set SPECVLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _check_decoding(args) -> None:
    """Every decoding and pruning option, checked before any heavy import (the same checks the library runs).
    Resolves the default --pruning (see `default_pruning`)."""
    args.pruning = default_pruning(args)
    if args.max_new_tokens < 1:
        raise SpecVLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise SpecVLMError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise SpecVLMError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise SpecVLMError(f"--top-k must be >= 0, got {args.top_k}")
    DecodeConfig.from_args(args)  # errors name the flags


def default_pruning(args) -> str:
    """--pruning as given; unset, "specvlm" when the target drafts for itself, else "none". An unpruned self-draft
    accepts every token, but each draft step costs a full target step, so it can never beat the target alone;
    drafting from a pruned view (SpecVLM, keep 0.1 by default) is what makes self-speculation pay. `--pruning none`
    still asks for the unpruned self-draft. `--draft none` has no draft to prune."""
    if args.draft == "none":
        if args.head or args.pruning not in (None, "none"):
            raise SpecVLMError("--draft none decodes with the target alone: drop --head / --pruning")
        return "none"
    if args.pruning is not None:
        return args.pruning
    return "specvlm" if args.draft == "self" and not args.head else "none"


def _decoding_options(args) -> dict:
    sample = args.temperature > 0
    return dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        **(dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k) if sample else {}),
    )


def cmd_generate(args) -> int:
    _check_decoding(args)  # before the heavy imports: a bad option is one line at once
    import torch

    from .inputs import inputs_from_args
    from .streaming import PrintStreamer

    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    # Everything the user can get wrong is checked before any weights load: folders, configs, files, frames.
    models = resolve_models(args)
    report: dict = {}
    inputs = inputs_from_args(
        args,
        models.target_dir,
        models.target_config,
        models.draft_dir,
        models.draft_config,
        progress=say,
        report=report,
    )
    gen = load_generator(args, models, say)
    rng = None if args.seed is None else torch.Generator().manual_seed(args.seed)
    streamer = None if args.json else PrintStreamer(gen.tokenizer)
    with torch.no_grad():
        out = gen.generate(**inputs, **_decoding_options(args), streamer=streamer, generator=rng)
    if args.json:
        print(
            json.dumps({"text": out.text, "token_ids": out.token_ids, "stats": out.stats.as_dict(), "inputs": report})
        )
    else:
        say(out.stats.summary())
    return 0


class ModelDirs(NamedTuple):
    target_dir: str
    target_config: object
    head: str | None  # an EagleHead folder (--head, or a --draft that holds one)
    draft_dir: str | None  # a draft model folder; None for "self", "none" and heads
    draft_config: object


def resolve_models(args) -> ModelDirs:
    """The --target / --draft / --head folders checked and their configs read; no weights load."""
    from .drafters.loading import is_eagle_head
    from .loading import load_config, resolve

    target_dir = resolve(args.target)
    target_config = load_config(target_dir)
    head = args.head or (args.draft if is_eagle_head(args.draft) else None)
    if args.head and args.draft != "self":
        raise SpecVLMError("give --draft or --head, not both: an EagleHead is the drafter")
    draft_dir = draft_config = None
    if args.draft not in ("self", "none") and head is None:
        draft_dir = resolve(args.draft)
        draft_config = load_config(draft_dir)
    return ModelDirs(target_dir, target_config, head, draft_dir, draft_config)


def load_generator(args, models: ModelDirs, say, batched: bool = False):
    """Loads the target, its tokenizer and the drafter, and returns the SpeculativeGenerator the decoding, pruning and
    engine options describe; for `--draft none`, the target alone behind the same interface: HF's own `generate`
    (TargetOnly), or with `batched` (the server) a generator that drafts nothing, so that it batches like
    speculation."""
    from .drafters.loading import load_drafter
    from .generator import SpeculativeGenerator
    from .loading import load_model, load_tokenizer
    from .target_only import TargetOnly

    say(f"loading target {args.target}{' (no draft: target-only decoding)' if args.draft == 'none' else ''} ...")
    target, tokenizer = load_model(models.target_dir, args.dtype, args.device), load_tokenizer(models.target_dir)
    spec, kind = args.draft, None  # "self" or "none"
    if models.head is not None:
        say(f"loading EagleHead {models.head} ...")
        spec, kind = models.head, "head"
    elif models.draft_dir is not None:
        say(f"loading draft {args.draft} ...")
        spec, kind = models.draft_dir, "model"
    draft = load_drafter(spec, target, args.dtype, args.device, kind=kind, tokenizer=tokenizer)
    if draft is None and not batched:
        return TargetOnly(target, tokenizer)
    return SpeculativeGenerator(target, draft, tokenizer=tokenizer, config=DecodeConfig.from_args(args))


def cmd_demo(args) -> int:
    from .demo import run_demo

    if args.max_new_tokens < 1:
        raise SpecVLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 0 < args.visual_keep_ratio <= 1:
        raise SpecVLMError(f"--visual-keep-ratio must be in (0, 1], got {args.visual_keep_ratio}")
    if args.repeats < 1:
        raise SpecVLMError(f"--repeats must be >= 1, got {args.repeats}")
    return run_demo(
        args.family,
        max_new_tokens=args.max_new_tokens,
        keep_ratio=args.visual_keep_ratio,
        repeats=args.repeats,
        **engine_options(args),
    )
