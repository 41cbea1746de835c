"""`specvlm generate` and `specvlm demo`: their parsers (torch-free, from the shared groups in arguments.py) and
handlers. Mounted by cli.py beside train-head, bench, serve and testbed build."""

from __future__ import annotations

import json
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


def add_generate_parser(sub) -> None:
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


def add_demo_parser(sub) -> None:
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


def cmd_generate(args) -> int:
    check_decoding(args)  # before the heavy imports: a bad option is one line at once
    from .launcher import launched_here

    code = launched_here(args)  # --tensor-parallel N: the job of N ranks this process launched has ended
    if code is not None:
        return code
    import torch

    from .engine.streaming import PrintStreamer
    from .inputs import inputs_from_args
    from .launcher import is_leader

    leader = is_leader()  # under torchrun every rank decodes; rank 0 alone speaks
    say = (lambda msg: None) if args.json or not leader else (lambda msg: print(msg, file=sys.stderr, flush=True))
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
    streamer = None if args.json or not leader else PrintStreamer(gen.tokenizer)
    with torch.no_grad():
        out = gen.generate(**inputs, **decoding_options(args), streamer=streamer, generator=rng)
    if args.json and leader:
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
