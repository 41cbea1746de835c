"""Online logit distillation of an EagleVLM head (SpecVLM §3.5): the frozen target runs inside every step.

Per example (teacher forcing over prompt + response):
    target (no grad): merged embeds e, final post-norm features f, logits z_p
    head:             f̂_{i+1} = head(e_{i+1}, f_i)     (visual span compressed when the head has a compressor)
    loss = 0.1 · softCE(z_q = lm_head(f̂), z_p) + 1.0 · SmoothL1(f̂, f) [+ compressor budget term]
masked to pairs whose input token is a response token (pair i predicts the token after token i+1: what the head
does at inference, where the first response token always comes from the target).

AdamW β=(0.9, 0.95), weight decay 0, no warmup (the paper); EAGLE-1's gradient clipping by value 0.5 and optional
uniform feature noise U(-a, a) on the head's input features. Deterministic for a seed; periodic checkpoints
(head files + optimizer and RNG state) and resume. The progress bar shows the loss and a running acceptance
estimate: top-1 agreement α of head and target on response tokens, and τ≈Σ_{k≤6} α^k, what a chain of 6 would
accept if positions were independent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ..adapters import adapter_for
from ..drafters.eagle import EagleHead
from ..errors import SpecVLMError
from .data import Example, as_example, greedy_examples, load_examples

STATE_NAME = "trainer_state.pt"
EMA = 0.9


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 8e-5                 # the paper's 7B value (5e-5 for 13B); tiny targets want ~1e-3
    batch_size: int = 1              # examples per micro-step (sequences are processed one at a time)
    grad_accum: int = 1              # micro-steps per optimizer step: effective batch = batch_size * grad_accum
    clip_grad: float | None = 0.5    # clip by value (EAGLE-1); None = off
    feature_noise: float = 0.0       # a in U(-a, a) added to the head's input features (EAGLE uses 0.1)
    logit_weight: float = 0.1
    feature_weight: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    seed: int = 0
    shuffle: bool = True
    out_dir: str | None = None
    checkpoint_every: int = 0        # steps between checkpoints (0: only the final save)
    resume: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    head: EagleHead
    losses: list[float] = field(default_factory=list)      # per optimizer step, mean over its examples
    accuracy: list[float] = field(default_factory=list)    # per step: top-1 agreement on response tokens
    steps: int = 0
    seconds: float = 0.0
    picks: dict = field(default_factory=dict)              # compressor branches chosen while training

    def as_dict(self) -> dict:
        first = lambda xs: sum(xs[:10]) / max(len(xs[:10]), 1)
        last = lambda xs: sum(xs[-10:]) / max(len(xs[-10:]), 1)
        return dict(steps=self.steps, seconds=round(self.seconds, 2), loss_first10=first(self.losses),
                    loss_last10=last(self.losses), accuracy_last10=last(self.accuracy), picks=self.picks,
                    parameters=self.head.trainable_parameters())


@dataclass
class LossParts:
    loss: torch.Tensor
    ce: float
    feature: float
    accuracy: float
    tokens: int


def distill_loss(head: EagleHead, example: Example, config: TrainConfig = TrainConfig(),
                 target_outputs=None) -> LossParts:
    """The head's loss on one example; the target runs here, online, without gradients."""
    adapter = head.adapter
    with torch.no_grad():
        prompt = adapter.prepare({k: v.to(adapter.device) if torch.is_tensor(v) else v
                                  for k, v in example.inputs.items()})
        if target_outputs is None:
            target_outputs = adapter.forward(prompt.embeds, prompt.positions, adapter.new_cache())
    logits_p, hidden = target_outputs
    response = example.response.to(hidden.device)
    first_response = int(response.nonzero()[0])
    features = hidden
    if config.feature_noise:   # U(-a, a) on the head's input features only, never on its targets
        noise = torch.rand_like(hidden, dtype=torch.float32) * 2 - 1
        features = hidden + (noise * config.feature_noise).to(hidden.dtype)
    out, row_of = head(prompt.embeds[0], hidden, prompt.spans, first_response, features)
    use = (response[1:].to(row_of.device) & (row_of >= 0)).nonzero().flatten()
    pred = out[row_of[use]]
    f_p = hidden[1:][use.to(hidden.device)].to(pred.device, pred.dtype)
    z_q = head.logits(pred)
    z_p = logits_p[1:][use.to(logits_p.device)].to(z_q.device)
    ce = -(z_p.softmax(-1) * z_q.log_softmax(-1)).sum(-1).mean()
    feature = F.smooth_l1_loss(pred.float(), f_p.float())
    loss = config.logit_weight * ce + config.feature_weight * feature
    if head.compressor is not None:
        loss = loss + head.compressor.budget_loss.to(loss.device)
    accuracy = float((z_q.argmax(-1) == z_p.argmax(-1)).float().mean())
    return LossParts(loss, float(ce.detach()), float(feature.detach()), accuracy, int(use.numel()))


class _Stream:
    """Examples in a deterministic order: a sequence is visited in a seeded permutation per epoch (so position k
    is known without replaying, which makes resume exact); other iterables are replayed and skipped."""

    def __init__(self, data, seed: int, shuffle: bool, start: int):
        self.data, self.seed, self.shuffle, self.position = data, seed, shuffle, start
        self.indexable = hasattr(data, "__len__") and hasattr(data, "__getitem__")
        if self.indexable:
            if len(data) == 0:
                raise SpecVLMError("no training examples")
            self._epoch, self._order = -1, None
        else:
            self._iter = iter(data)
            for _ in range(start):
                self._next_iterable()

    def _next_iterable(self):
        try:
            return next(self._iter)
        except StopIteration:
            self._iter = iter(self.data)
            if self._iter is self.data:
                raise SpecVLMError("the training data ran out (a one-shot iterator); pass a list or fewer --steps")
            try:
                return next(self._iter)
            except StopIteration:
                raise SpecVLMError("no training examples") from None

    def __next__(self) -> Example:
        if self.indexable:
            n = len(self.data)
            epoch, index = divmod(self.position, n)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                self._order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
                self._epoch = epoch
            item = self.data[self._order[index]]
        else:
            item = self._next_iterable()
        self.position += 1
        return as_example(item)


def _latest(out_dir: Path) -> tuple[Path, dict] | None:
    """The saved state with the most steps: a periodic checkpoint or the final save in `out_dir` itself."""
    found = [p for p in (out_dir, *out_dir.glob("checkpoint-*")) if (p / STATE_NAME).is_file()]
    states = [(p, torch.load(p / STATE_NAME, weights_only=False)) for p in found]
    return max(states, key=lambda item: item[1]["step"], default=None)


def _save(head: EagleHead, optimizer, result: TrainResult, where: Path, examples_seen: int, ema) -> None:
    head.save_pretrained(where)
    device = head.fc.weight.device
    torch.save(dict(step=result.steps, examples_seen=examples_seen, optimizer=optimizer.state_dict(),
                    rng=torch.get_rng_state(), losses=result.losses, accuracy=result.accuracy, ema=ema,
                    picks=result.picks, cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None),
               where / STATE_NAME)


def train_head(target, data, head: EagleHead | None = None, config: TrainConfig | None = None,
               **overrides) -> TrainResult:
    """Distil `head` (default: a fresh `EagleHead.init_for(target)`) from the frozen `target` over `data` (an
    iterable of examples, see `specvlm.train.data`). Keyword overrides set `TrainConfig` fields."""
    config = config or TrainConfig()
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"train_head() got unknown options {sorted(unknown)}")
    config = TrainConfig(**{**asdict(config), **overrides})
    if min(config.steps, config.batch_size, config.grad_accum) < 1 or config.lr <= 0:
        raise SpecVLMError("steps, batch size and gradient accumulation must be >= 1 and the learning rate > 0")
    adapter = adapter_for(target)
    devices = [adapter.device] if adapter.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(config.seed)
        head = head if head is not None else EagleHead.init_for(target, seed=config.seed)
        return _train(head, data, config)


def _train(head: EagleHead, data, config: TrainConfig) -> TrainResult:
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    result, examples_seen, ema = TrainResult(head), 0, None
    out_dir = Path(config.out_dir) if config.out_dir else None
    if config.resume:
        if out_dir is None:
            raise SpecVLMError("resume needs the output folder that holds the checkpoints")
        latest = _latest(out_dir) if out_dir.is_dir() else None
        if latest is not None:
            where, state = latest
            loaded = EagleHead.from_pretrained(where, head.adapter.model, dtype=head.dtype)   # checks the target
            head.load_state_dict(loaded.state_dict())
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], head.fc.weight.device)
            result.steps, examples_seen, ema = state["step"], state["examples_seen"], state["ema"]
            result.losses, result.accuracy, result.picks = state["losses"], state["accuracy"], state["picks"]
    stream = _Stream(data, config.seed, config.shuffle, examples_seen)
    picks_before = Counter(result.picks)
    if head.compressor is not None:
        head.compressor.picks.clear()   # count this run's choices only (plus what a resumed run had made)
    bar = _progress(config, result.steps)
    started = time.perf_counter()
    head.train()
    per_step = config.batch_size * config.grad_accum
    try:
        while result.steps < config.steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum = acc_sum = 0.0
            for _ in range(per_step):
                parts = distill_loss(head, next(stream), config)
                (parts.loss / per_step).backward()
                loss_sum, acc_sum = loss_sum + float(parts.loss.detach()), acc_sum + parts.accuracy
            if config.clip_grad:
                torch.nn.utils.clip_grad_value_(head.parameters(), config.clip_grad)
            optimizer.step()
            examples_seen += per_step
            result.steps += 1
            result.losses.append(loss_sum / per_step)
            result.accuracy.append(acc_sum / per_step)
            if head.compressor is not None:
                result.picks = dict(picks_before + head.compressor.picks)
            ema = result.accuracy[-1] if ema is None else EMA * ema + (1 - EMA) * result.accuracy[-1]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}", acc=f"{ema:.2f}",
                                tau=f"{sum(ema ** k for k in range(1, 7)):.2f}")
            if out_dir is not None and config.checkpoint_every and result.steps % config.checkpoint_every == 0:
                _save(head, optimizer, result, out_dir / f"checkpoint-{result.steps:07d}", examples_seen, ema)
    finally:
        if bar is not None:
            bar.close()
        head.eval()
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        _save(head, optimizer, result, out_dir, examples_seen, ema)
    return result


def _progress(config: TrainConfig, start: int):
    if not config.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=start, desc="train-head", unit="step", file=sys.stderr,
                dynamic_ncols=True)


# ---- command line --------------------------------------------------------------------------------------------------
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `specvlm train-head`; pair with `parser.set_defaults(func=run_from_args)`."""
    g = parser.add_argument_group("models and data")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--target", help="target model folder (or hub id)")
    src.add_argument("--tiny", metavar="FAMILY",
                     help="smoke run: a tiny random target of FAMILY (peaky weights) and its own greedy answers")
    g.add_argument("--data", help=".pt list of examples (JSONL conversations once the input pipeline is wired)")
    g.add_argument("--tiny-examples", type=int, default=64, help="--tiny: prompts to self-distil (default 64)")
    g.add_argument("--out", required=True, help="folder for the trained head and its checkpoints")
    g.add_argument("--init", help="start from a saved head instead of a fresh one")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    c = parser.add_argument_group("compressor")
    c.add_argument("--compressor", choices=("none", "select", "weighted", "concat"), default="none",
                   help="elastic visual compressor over the head's visual span (default none)")
    c.add_argument("--compressor-branches", help="comma-separated branches, e.g. prune:20,pool:20,conv:3,text")
    c.add_argument("--compressor-ratio", type=int, default=3, help="weighted mode: the shared ratio (default 3)")
    c.add_argument("--budget-weight", type=float, default=0.0,
                   help="select mode: weight of the expected kept-token fraction in the loss (default 0)")
    t = parser.add_argument_group("optimisation")
    d = TrainConfig()
    t.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    t.add_argument("--lr", type=float, default=d.lr, help=f"AdamW learning rate (default {d.lr})")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument("--grad-accum", type=int, default=d.grad_accum)
    t.add_argument("--clip-grad", type=float, default=d.clip_grad, help="clip gradients by value (0: off)")
    t.add_argument("--feature-noise", type=float, default=d.feature_noise, help="U(-a,a) noise on input features")
    t.add_argument("--logit-weight", type=float, default=d.logit_weight)
    t.add_argument("--feature-weight", type=float, default=d.feature_weight)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: final only)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print one JSON summary")


def _tiny_setup(family: str, n: int):
    from ..tiny import FAMILIES, make_inputs, make_model

    if family not in FAMILIES:
        raise SpecVLMError(f"--tiny {family}: choose from {', '.join(FAMILIES)}")
    target = make_model(family, init=0.3)
    prompts = [make_inputs(family, ("image", "video")[i % 2], prompt_len=3 + i % 5, seed=i) for i in range(n)]
    return target, greedy_examples(target, prompts, max_new_tokens=24)


def run_from_args(args) -> int:
    if args.tiny:
        target, examples = _tiny_setup(args.tiny, args.tiny_examples)
        if args.data:
            examples = load_examples(args.data)
    else:
        from ..loading import load_model

        if not args.data:
            raise SpecVLMError("--target needs --data")
        target = load_model(args.target, dtype=args.dtype, device=args.device)
        examples = load_examples(args.data)
    if args.init:
        head = EagleHead.from_pretrained(args.init, target)
    else:
        compressor = None
        if args.compressor != "none":
            compressor = dict(mode=args.compressor, ratio=args.compressor_ratio, budget_weight=args.budget_weight,
                              heads=int(adapter_for(target).text_config.num_attention_heads))
            if args.compressor_branches:
                compressor["branches"] = [b.strip() for b in args.compressor_branches.split(",") if b.strip()]
        try:
            head = EagleHead.init_for(target, compressor=compressor, seed=args.seed,
                                      dtype=torch.float32 if args.dtype == "auto" else None)
        except ValueError as err:
            raise SpecVLMError(str(err)) from None
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         clip_grad=args.clip_grad or None, feature_noise=args.feature_noise,
                         logit_weight=args.logit_weight, feature_weight=args.feature_weight, seed=args.seed,
                         out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=args.resume,
                         progress=not args.no_progress and not args.json)
    result = train_head(target, examples, head, config)
    summary = dict(result.as_dict(), out=args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"trained {summary['parameters']:,} head parameters for {result.steps} steps in {result.seconds:.1f}s: "
              f"loss {summary['loss_first10']:.4f} -> {summary['loss_last10']:.4f}, top-1 agreement "
              f"{summary['accuracy_last10']:.2f}; saved to {args.out}")
    return 0
