"""`specvlm train-head`'s run: options checked, target and examples loaded, head made or resumed, trained, summed up
(the options themselves are in command.py, torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapters import adapter_for
from ..drafters.compressor import MODES, VisualCompressor
from ..drafters.eagle import EagleHead
from ..drafters.eagle3 import Eagle3Head
from ..errors import SpecVLMError
from .config import TrainConfig
from .data import frequent_tokens, greedy_examples, load_examples
from .head import _saved_run, check_out_dir, train_head


def _loss_change(summary: dict) -> str:
    """The first and last steps' losses (what the progress bar showed), and 10-step means once they do not
    overlap."""
    if summary["loss_first"] is None:
        return "no steps run"
    text = f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} (first -> last step"
    if summary["steps"] >= 20:
        text += f"; means of the first / last 10 steps {summary['loss_first10']:.4f} -> {summary['loss_last10']:.4f}"
    return text + ")"


def _tiny_setup(family: str, n: int):
    from ..tiny import FAMILIES, make_inputs, make_model

    if family not in FAMILIES:
        raise SpecVLMError(f"--tiny-smoke {family}: choose from {', '.join(FAMILIES)}")
    if n < 1:
        raise SpecVLMError(f"--tiny-examples must be >= 1, got {n}")
    target = make_model(family, init=0.3)
    prompts = [make_inputs(family, ("image", "video")[i % 2], prompt_len=3 + i % 5, seed=i) for i in range(n)]
    return target, greedy_examples(target, prompts, max_new_tokens=24)


def compressor_config(
    spec: str, branches: str | None = None, ratio: int = 3, budget_weight: float = 0.0, heads: int = 1
) -> dict | None:
    """`--compressor` as a `VisualCompressor` config: None, a mode (with its default or the given branches), or one
    fixed branch (a one-branch concat, no gate)."""
    if spec == "none":
        if branches:
            raise SpecVLMError("--compressor-branches needs --compressor select, weighted or concat")
        return None
    if spec in MODES:
        config = dict(mode=spec, ratio=ratio, budget_weight=budget_weight, heads=heads)
        if branches:
            config["branches"] = [b.strip() for b in branches.split(",") if b.strip()]
    else:
        if branches:
            raise SpecVLMError(f"--compressor {spec} is one branch; --compressor-branches goes with a mode")
        config = dict(mode="concat", branches=[spec], heads=heads)
    try:
        VisualCompressor.from_config(8 * heads, config)  # validates branch names and ratios
    except ValueError as err:
        raise SpecVLMError(f"--compressor: {err}") from None
    return config


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise SpecVLMError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def run_from_args(args) -> int:
    _positive(steps=args.steps, batch=args.batch_size, grad_accum=args.grad_accum, limit=args.limit)
    _positive(ttt_steps=args.ttt_steps)
    if args.arch == "eagle2" and args.draft_vocab is not None:
        raise SpecVLMError("--draft-vocab is an EAGLE-3 option: add --arch eagle3")
    if args.arch == "eagle3" and args.compressor != "none":
        raise SpecVLMError("--compressor shortens an EagleVLM (eagle2) head's visual span; an eagle3 head reads all")
    if not args.lr > 0:
        raise SpecVLMError(f"--lr must be > 0, got {args.lr}")
    if args.feature_noise < 0 or args.clip_grad < 0 or args.checkpoint_every < 0:
        raise SpecVLMError("--noise, --clip and --save-every must be >= 0")
    if args.resume and args.overwrite:
        raise SpecVLMError("--resume continues the run in --out and --overwrite replaces it: give one")
    check_out_dir(Path(args.out), args.resume, args.overwrite, dry_run=True)
    compressor_config(args.compressor, args.compressor_branches, args.compressor_ratio, args.budget_weight)
    if args.tiny_smoke:
        target, examples = _tiny_setup(args.tiny_smoke, args.tiny_examples)
        if args.data:
            examples = load_examples(args.data)
    else:
        from ..loading import load_model, resolve

        if not args.data:
            raise SpecVLMError("--target needs --data (a JSONL of conversations or a testbed world folder)")
        resolve(args.target)  # a missing model folder is reported before the data is read
        examples = load_examples(
            args.data,
            args.target,
            split=args.split,
            num_frames=args.num_frames,
            fps=args.fps,
            max_pixels=args.max_pixels,
            limit=args.limit,
        )
        target = load_model(args.target, dtype=args.dtype, device=args.device)
        if hasattr(examples, "check_against"):
            examples.check_against(target.config)
    if args.limit is not None and isinstance(examples, list):
        examples = examples[: args.limit]
    heads = int(adapter_for(target).text_config.num_attention_heads)
    saved = _saved_run(Path(args.out)) if args.resume else None
    if args.init or saved is not None:
        source = args.init or saved
        if args.compressor != "none" and not args.init:
            wanted = compressor_config(
                args.compressor, args.compressor_branches, args.compressor_ratio, args.budget_weight, heads
            )
            have = json.loads((Path(source) / "config.json").read_text()).get("compressor")
            if have is None or {**have, **wanted} != have:
                raise SpecVLMError(
                    f"--resume: the run in {args.out} was started with compressor {have}, not "
                    f"--compressor {args.compressor}; leave the option out to continue it"
                )
        kind = Eagle3Head if args.arch == "eagle3" else EagleHead
        head = kind.from_pretrained(source, target, dtype=torch.float32)
    elif args.arch == "eagle3":
        vocab = adapter_for(target).vocab_size
        draft_vocab = None if args.draft_vocab is None else frequent_tokens(examples, args.draft_vocab, vocab)
        head = Eagle3Head.init_for(target, draft_vocab, seed=args.seed, dtype=torch.float32)
    else:
        compressor = compressor_config(
            args.compressor, args.compressor_branches, args.compressor_ratio, args.budget_weight, heads
        )
        head = EagleHead.init_for(target, compressor=compressor, seed=args.seed, dtype=torch.float32)
    config = TrainConfig(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        clip_grad=args.clip_grad or None,
        feature_noise=args.feature_noise,
        logit_weight=args.logit_weight,
        feature_weight=args.feature_weight,
        seed=args.seed,
        out_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        overwrite=args.overwrite,
        cache_target=args.cache_target,
        progress=not args.no_progress and not args.json,
        ttt_steps=args.ttt_steps,
    )
    result = train_head(target, examples, head, config)
    summary = dict(result.as_dict(), out=args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        picks = f", gate picks {result.picks}" if result.picks else ""
        print(
            f"trained {summary['parameters']:,} head parameters for {result.steps} steps in {result.seconds:.1f}s: "
            f"{_loss_change(summary)}, top-1 agreement {summary['accuracy_last10']:.2f} (last 10 steps){picks}; "
            f"saved to {args.out}"
        )
    return 0
