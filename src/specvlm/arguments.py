"""The command line's shared parts, one front door for every command (generate, serve, bench, train-head, demo):
the argument groups (models, device, decoding, pruning, engine), their checks, model resolution and generator
loading. `cli.py` only mounts the subcommands; each command module builds its parser from these groups.

Nothing here imports torch or transformers at import time (loading happens inside `load_generator`), so option
errors, --help and --version answer in a fraction of a second. Every default is the library's own
(`DecodeConfig`, `DEFAULT_KEEP_RATIO`, `DEFAULT_NUM_FRAMES`), written once."""

from __future__ import annotations

import argparse
from typing import NamedTuple

from .errors import SpecVLMError
from .inputs.arguments import DEFAULT_NUM_FRAMES
from .options import COMPILE_FLAG, DEFAULT_KEEP_RATIO, PRUNING_METHODS, DecodeConfig, parse_device

DEFAULTS = DecodeConfig()
NO_DRAFT_HINT = (
    "no --draft or --head given: decoding with the target alone, at its own speed. For a speedup, give --draft "
    "<a smaller model of the target's family> or --head <a trained EagleHead folder> (see README, 'What drafts')"
)


def add_device_arguments(g, what: str = "weights") -> None:
    """--device and --dtype (generate, serve, bench and train-head load models the same way)."""
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
        help=f"{what} dtype (auto: the checkpoint's on GPU, float32 on CPU)",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--target", required=True, help="target model folder (or hub id)")
    g.add_argument(
        "--draft",
        default=None,
        help="what drafts: a draft model folder (or hub id) of the same family; an EagleHead folder (as "
        "--head); 'self' (the target drafts for itself from a SpecVLM-pruned view of the images / video, "
        "see --pruning; pays only where the visual prompt dominates a step's cost); or 'none'. Without "
        "--draft or --head the target decodes alone (its own Hugging Face generate, the baseline to compare "
        "with, with the same summary line)",
    )
    g.add_argument(
        "--head",
        default=None,
        metavar="DIR",
        help="a draft head to draft with instead of a draft model: an EagleHead folder (specvlm train-head), or "
        "an EAGLE-3 head in SpecForge / SGLang's or vLLM speculators' layout (a folder or hub id); its tree "
        "defaults to EAGLE-2's dynamic tree",
    )
    add_device_arguments(g)
    g.add_argument(
        "--tensor-parallel",
        type=int,
        default=None,
        metavar="N",
        help="split the target over N GPUs (transformers' tensor-parallel plan, one process a GPU): specvlm starts "
        "the N processes itself; under torchrun (several machines) the flag may be left out. Default: one process",
    )


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
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
    add_num_draft_tokens_argument(g, "chain length γ")
    g.add_argument(
        "--confidence-threshold",
        type=float,
        default=DEFAULTS.confidence_threshold,
        help="chain: stop drafting after a token the draft gives probability below this (HF assisted "
        "generation uses 0.4; default 0 = always γ tokens)",
    )
    g.add_argument(
        "--tree-top-k",
        type=int,
        default=DEFAULTS.tree_top_k,
        help=f"dynamic tree: children per expanded node (default {DEFAULTS.tree_top_k})",
    )
    g.add_argument(
        "--tree-depth",
        type=int,
        default=DEFAULTS.tree_depth,
        help=f"dynamic tree: longest path in draft tokens (default {DEFAULTS.tree_depth})",
    )
    g.add_argument(
        "--tree-total-tokens",
        type=int,
        default=DEFAULTS.tree_total_tokens,
        help=f"dynamic tree: tokens verified per round, root included (default {DEFAULTS.tree_total_tokens})",
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
        help=f"fraction of visual tokens the draft keeps (default {DEFAULT_KEEP_RATIO:g} with --pruning)",
    )
    g.add_argument(
        "--stage1-mass",
        type=float,
        default=DEFAULTS.stage1_mass,
        help=f"specvlm Stage I attention mass λ (default {DEFAULTS.stage1_mass:g})",
    )
    add_draft_positions_argument(g)


def add_num_draft_tokens_argument(g, what: str) -> None:
    g.add_argument(
        "--num-draft-tokens",
        type=int,
        default=DEFAULTS.num_draft_tokens,
        help=f"{what} (default {DEFAULTS.num_draft_tokens})",
    )


def add_draft_positions_argument(g) -> None:
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
        default=DEFAULTS.engine,
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


def add_num_frames_argument(g) -> None:
    """--num-frames alone (bench, which samples a fixed count); `inputs.arguments.add_frame_arguments` adds it with
    --fps and --max-pixels."""
    g.add_argument(
        "--num-frames",
        type=int,
        default=DEFAULT_NUM_FRAMES,
        metavar="N",
        help=f"video frames per sample (default {DEFAULT_NUM_FRAMES})",
    )


def engine_options(args) -> dict:
    return dict(engine=args.engine, compile=COMPILE_FLAG[args.compile])


def check_decoding(args) -> DecodeConfig:
    """Every decoding and pruning option, checked before any heavy import (the same checks the library runs).
    Resolves the default --pruning (see `default_pruning`) and returns the DecodeConfig the options describe."""
    args.pruning = default_pruning(args)
    check_draft_view(args)
    if args.max_new_tokens < 1:
        raise SpecVLMError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:  # also refuses nan
        raise SpecVLMError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise SpecVLMError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        raise SpecVLMError(f"--top-k must be >= 0, got {args.top_k}")
    return DecodeConfig.from_args(args)  # errors name the flags


def dest(flag: str) -> str:
    """argparse's attribute for a long option: "--draft-num-frames" -> "draft_num_frames"."""
    return flag.removeprefix("--").replace("-", "_")


def check_draft_view(args) -> None:
    """--draft-num-frames / --draft-fps / --draft-max-pixels give a draft model its own, cheaper view of the media:
    they need a draft model (a head or the target drafting for itself reads the target's view) and exclude pruning
    (which hands the draft the target's visual tokens)."""
    given = [
        flag
        for flag in ("--draft-num-frames", "--draft-fps", "--draft-max-pixels")
        if getattr(args, dest(flag), None) is not None
    ]
    if not given:
        return
    if args.head or args.draft in (None, "none", "self"):
        raise SpecVLMError(f"{given[0]} gives a draft model its own view of the media: add --draft DIR (a model)")
    if args.pruning not in (None, "none"):
        raise SpecVLMError(
            f"{given[0]} and --pruning both choose what the draft sees: pruning keeps the target's visual tokens, "
            "a draft view is its own; use one"
        )


def drafts(args) -> bool:
    """Whether the options ask for speculation: a --head, or a --draft other than 'none'."""
    return bool(args.head) or args.draft not in (None, "none")


def default_pruning(args) -> str:
    """--pruning as given; unset, "specvlm" when the target drafts for itself, else "none". An unpruned self-draft
    accepts every token, but each draft step costs a full target step, so it can never beat the target alone;
    drafting from a pruned view (SpecVLM, keep 0.1 by default) is what makes self-speculation pay. `--pruning none`
    still asks for the unpruned self-draft. Without a draft there is nothing to prune."""
    if not drafts(args):
        if args.pruning not in (None, "none"):
            raise SpecVLMError(
                "--pruning prunes the draft's view, and no draft is given: add --draft (e.g. --draft self) or --head"
            )
        return "none"
    if args.pruning is not None:
        return args.pruning
    return "specvlm" if args.draft == "self" and not args.head else "none"


def decoding_options(args) -> dict:
    """The `generate` keywords of --max-new-tokens / --temperature / --top-p / --top-k."""
    sample = args.temperature > 0
    return dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=sample,
        **(dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k) if sample else {}),
    )


class ModelDirs(NamedTuple):
    target_dir: str
    target_config: object
    head: str | None  # an EagleHead folder (--head, or a --draft that holds one)
    draft_dir: str | None  # a draft model folder; None for "self", "none", no draft and heads
    draft_config: object


def resolve_models(args) -> ModelDirs:
    """The --target / --draft / --head folders checked and their configs read; no weights load."""
    from .drafters.loading import is_eagle_head
    from .loading import load_config, resolve

    target_dir = resolve(args.target)
    target_config = load_config(target_dir)
    if args.head and args.draft is not None:
        raise SpecVLMError("give --draft or --head, not both: an EagleHead is the drafter")
    head = args.head or (args.draft if args.draft is not None and is_eagle_head(args.draft) else None)
    draft_dir = draft_config = None
    if args.draft not in (None, "self", "none") and head is None:
        draft_dir = resolve(args.draft)
        draft_config = load_config(draft_dir)
    return ModelDirs(target_dir, target_config, head, draft_dir, draft_config)


def load_generator(args, models: ModelDirs, say, batched: bool = False):
    """Loads the target, its tokenizer and the drafter, and returns the SpeculativeGenerator the decoding, pruning and
    engine options describe; without a draft, the target alone behind the same interface: HF's own `generate`
    (TargetOnly), or with `batched` (the server) a generator that drafts nothing, so that it batches like
    speculation. Without --draft and --head, says how to get a speedup (`NO_DRAFT_HINT`)."""
    from .drafters.loading import load_drafter
    from .engine.generator import SpeculativeGenerator
    from .engine.target_only import TargetOnly
    from .launcher import launched_ranks
    from .loading import load_model, load_tokenizer

    alone = not drafts(args)
    say(f"loading target {args.target}{' (no draft: target-only decoding)' if alone else ''} ...")
    if args.draft is None and not args.head:
        say(NO_DRAFT_HINT)
    split = launched_ranks() > 1  # under torchrun: the target split over the ranks (tensor parallel)
    target = load_model(models.target_dir, args.dtype, args.device, tensor_parallel=split)
    tokenizer = load_tokenizer(models.target_dir)
    spec, kind = ("none" if alone else args.draft), None  # "self" or "none"
    if models.head is not None:
        say(f"loading EagleHead {models.head} ...")
        spec, kind = models.head, "head"
    elif models.draft_dir is not None:
        say(f"loading draft {args.draft} ...")
        spec, kind = models.draft_dir, "model"
    draft_tokenizer = load_tokenizer(models.draft_dir) if models.draft_dir is not None and kind == "model" else None
    draft = load_drafter(
        spec, target, args.dtype, args.device, kind=kind, tokenizer=tokenizer, draft_tokenizer=draft_tokenizer
    )
    if draft is None and not batched:
        return TargetOnly(target, tokenizer)
    config = DecodeConfig.from_args(args)
    gen = SpeculativeGenerator(target, draft, tokenizer=tokenizer, draft_tokenizer=draft_tokenizer, config=config)
    bridge = getattr(gen.drafter, "bridge", None)
    if bridge is not None:
        say(
            f"the draft has its own vocabulary: {len(bridge)} of its tokens spell one of the target's, the others "
            "never reach the target; what the target commits reaches the draft through text"
        )
    return gen
