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

from .arguments import (
    add_decoding_arguments,
    add_engine_arguments,
    add_model_arguments,
    check_decoding,
    decoding_options,
    engine_options,
    load_generator,
    resolve_models,
)
from .errors import SpecVLMError
from .inputs.arguments import add_input_arguments
from .options import DEFAULT_KEEP_RATIO


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
    add_model_arguments(gen)
    add_input_arguments(gen)
    add_decoding_arguments(gen)
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
        default=DEFAULT_KEEP_RATIO,
        help=f"fraction of the video tokens the draft keeps (default {DEFAULT_KEEP_RATIO:g})",
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


def cmd_generate(args) -> int:
    check_decoding(args)  # before the heavy imports: a bad option is one line at once
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
        out = gen.generate(**inputs, **decoding_options(args), streamer=streamer, generator=rng)
    if args.json:
        print(
            json.dumps({"text": out.text, "token_ids": out.token_ids, "stats": out.stats.as_dict(), "inputs": report})
        )
    else:
        say(out.stats.summary())
    return 0


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
