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

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..adapters import adapter_for
from ..compressor import MODES, VisualCompressor
from ..drafters.eagle import CONFIG_NAME, WEIGHTS_NAME, EagleHead
from ..errors import SpecVLMError
from .config import TrainConfig
from .data import Example, as_example, greedy_examples, load_examples

STATE_NAME = "trainer_state.pt"
EMA = 0.9


# what a resumed run must share with the run it continues (the rest may change: steps, saving, progress)
RESUME_KEYS = ("lr", "batch_size", "grad_accum", "clip_grad", "feature_noise", "logit_weight", "feature_weight",
               "betas", "weight_decay", "seed", "shuffle")


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
        # loss_first / loss_last: the first and last steps' losses, as the progress bar showed them; the means of
        # 10 steps are steadier, but overlap (and read as no progress) in runs of fewer than 20 steps
        return dict(steps=self.steps, seconds=round(self.seconds, 2),
                    loss_first=self.losses[0] if self.losses else None,
                    loss_last=self.losses[-1] if self.losses else None, loss_first10=first(self.losses),
                    loss_last10=last(self.losses), accuracy_last10=last(self.accuracy), picks=self.picks,
                    parameters=self.head.trainable_parameters())


@dataclass
class LossParts:
    loss: torch.Tensor
    ce: float
    feature: float
    accuracy: float
    tokens: int


@torch.no_grad()
def target_forward(adapter, prompt, score_until: int | None = None):
    """((logits, hidden), scores) of the frozen target over the whole sequence. With `score_until` (the first
    response token), the prompt runs first under `AttentionCapture` (the verifier's text->visual attention of the
    question, as at inference, where the response does not exist yet) and the response after it on the same
    cache; else scores is None."""
    cache = adapter.new_cache()
    if score_until is None:
        return adapter.forward(prompt.embeds, prompt.positions, cache), None
    from ..adapters.capture import AttentionCapture

    visual = prompt.visual_mask.nonzero().flatten()
    with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
        head_logits, head_hidden = adapter.forward(prompt.embeds[:, :score_until],
                                                   prompt.positions[..., :score_until], cache)
    tail_logits, tail_hidden = adapter.forward(prompt.embeds[:, score_until:], prompt.positions[..., score_until:],
                                               cache)
    return (torch.cat([head_logits, tail_logits]), torch.cat([head_hidden, tail_hidden])), capture.scores


@dataclass
class TargetPass:
    """What the frozen target gives one example: its prompt (merged embeds, spans, positions), logits and final
    features over the whole sequence, the verifier's attention scores when a compressor branch reads them, and
    the response mask. Deterministic, so it can be kept and reused (`TrainConfig.cache_target`)."""
    prompt: object
    logits: torch.Tensor
    hidden: torch.Tensor
    scores: torch.Tensor | None
    response: torch.Tensor


@torch.no_grad()
def target_pass(head: EagleHead, example: Example) -> TargetPass:
    adapter = head.adapter
    first_response = int(example.response.nonzero()[0])
    prompt = adapter.prepare({k: v.to(adapter.device) if torch.is_tensor(v) else v for k, v in example.inputs.items()})
    wants_scores = head.compressor is not None and head.compressor.needs_scores and bool(prompt.spans)
    (logits, hidden), scores = target_forward(adapter, prompt, first_response if wants_scores else None)
    return TargetPass(prompt, logits, hidden, scores, example.response)


def _wants_scores(head: EagleHead, cached: TargetPass) -> bool:
    return head.compressor is not None and head.compressor.needs_scores and bool(cached.prompt.spans)


def distill_loss(head: EagleHead, example: Example | None, config: TrainConfig = TrainConfig(),
                 cached: TargetPass | None = None) -> LossParts:
    """The head's loss on one example; the target runs here, online, without gradients (or `cached` gives
    what it computed for this example before)."""
    target = cached if cached is not None else target_pass(head, example)
    prompt, logits_p, hidden, scores = target.prompt, target.logits, target.hidden, target.scores
    response = target.response.to(hidden.device)
    first_response = int(response.nonzero()[0])
    features = hidden
    if config.feature_noise:   # U(-a, a) on the head's input features only, never on its targets
        noise = torch.rand_like(hidden, dtype=torch.float32) * 2 - 1
        features = hidden + (noise * config.feature_noise).to(hidden.dtype)
    out, row_of = head(prompt.embeds[0], hidden, prompt.spans, first_response, features, scores=scores)
    use = (response[1:].to(row_of.device) & (row_of >= 0)).nonzero().flatten()
    pred = out[row_of[use]]
    f_p = hidden[1:][use.to(hidden.device)].to(pred.device, pred.dtype)
    z_q = head.logits(pred)
    z_p = logits_p[1:][use.to(logits_p.device)].to(z_q.device)
    ce = -(z_p.softmax(-1) * z_q.log_softmax(-1)).sum(-1).mean()
    feature = F.smooth_l1_loss(pred.float(), f_p.float())
    loss = config.logit_weight * ce + config.feature_weight * feature
    if head.compressor is not None and head.training:   # select mode: the gate's budget and credit terms
        distill = float(loss.detach())
        loss = loss + head.compressor.budget_loss.to(loss.device)
        loss = loss + head.compressor.credit_loss(distill).to(loss.device)
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

    def __next__(self) -> tuple[int | None, Callable[[], Example]]:
        """(key, load): the example's index in an indexable dataset (None otherwise) and a function returning the
        example (not called when the trainer already holds the target's outputs for that key)."""
        if self.indexable:
            n = len(self.data)
            epoch, index = divmod(self.position, n)
            if epoch != self._epoch:
                generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
                self._order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
                self._epoch = epoch
            key = self._order[index]
            self.position += 1
            return key, lambda: as_example(self.data[key])
        item = self._next_iterable()
        self.position += 1
        return None, lambda: as_example(item)


def _latest(out_dir: Path) -> tuple[Path, dict] | None:
    """The saved state with the most steps: a periodic checkpoint or the final save in `out_dir` itself."""
    found = [p for p in (out_dir, *out_dir.glob("checkpoint-*")) if (p / STATE_NAME).is_file()]
    states = [(p, torch.load(p / STATE_NAME, weights_only=False)) for p in found]
    return max(states, key=lambda item: item[1]["step"], default=None)


def _saved_run(out_dir: Path) -> Path:
    """The folder of the newest saved state in `out_dir`, for --resume; a one-line error when there is none."""
    latest = _latest(out_dir) if out_dir.is_dir() else None
    if latest is None:
        raise SpecVLMError(f"nothing to resume in {out_dir}: no {STATE_NAME} there or in its checkpoint-* folders")
    return latest[0]


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool, dry_run: bool = False) -> None:
    """A new run never writes over a previous one silently: `out_dir` must be new or empty, or hold a run to
    `resume`, or `overwrite` says to replace it (only the files a run writes are removed; others are refused)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecVLMError(f"--out {out_dir} is a file, not a folder")
    if resume:
        _saved_run(out_dir)
        return
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    ours = {CONFIG_NAME, WEIGHTS_NAME, STATE_NAME}
    entries = list(out_dir.iterdir())
    foreign = [e.name for e in entries
               if not (e.name in ours or (e.is_dir() and e.name.startswith("checkpoint-")))]
    if not overwrite:
        raise SpecVLMError(f"--out {out_dir} already holds files ({', '.join(sorted(e.name for e in entries)[:3])}"
                           f"{', ...' if len(entries) > 3 else ''}); pass --resume to continue that run, "
                           "--overwrite to replace it, or another --out")
    if foreign:
        raise SpecVLMError(f"--overwrite: {out_dir} holds files that are not a training run's "
                           f"({', '.join(sorted(foreign)[:3])}); refusing to delete them")
    if dry_run:
        return
    import shutil

    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _save(head: EagleHead, optimizer, result: TrainResult, where: Path, examples_seen: int, ema,
          config: TrainConfig) -> None:
    head.save_pretrained(where)
    device = head.fc.weight.device
    torch.save(dict(step=result.steps, examples_seen=examples_seen, optimizer=optimizer.state_dict(),
                    config={k: getattr(config, k) for k in RESUME_KEYS},
                    credit=(head.compressor.loss_mean, head.compressor.loss_count) if head.compressor else None,
                    rng=torch.get_rng_state(), losses=result.losses, accuracy=result.accuracy, ema=ema,
                    picks=result.picks, cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None),
               where / STATE_NAME)


def train_head(target, data, head: EagleHead | None = None, config: TrainConfig | None = None,
               target_cache: dict | None = None, **overrides) -> TrainResult:
    """Distil `head` (default: a fresh `EagleHead.init_for(target)`) from the frozen `target` over `data` (an
    iterable of examples, see `specvlm.train.data`). Keyword overrides set `TrainConfig` fields. With
    `cache_target`, `target_cache` (a dict) may be passed to share the target's outputs between calls on the same
    `data` (e.g. heads of several compressor modes, or a run continued with `resume`)."""
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
        return _train(head, data, config, target_cache)


def _train(head: EagleHead, data, config: TrainConfig, target_cache: dict | None = None) -> TrainResult:
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    result, examples_seen, ema = TrainResult(head), 0, None
    out_dir = Path(config.out_dir) if config.out_dir else None
    if config.resume and out_dir is None:
        raise SpecVLMError("resume needs the output folder that holds the checkpoints")
    if out_dir is not None:
        check_out_dir(out_dir, config.resume, config.overwrite)
    if config.resume:
        latest = _latest(out_dir)
        if latest is not None:
            where, state = latest
            saved = state.get("config", {})
            differ = [f"{k} {saved[k]} vs {getattr(config, k)}" for k in RESUME_KEYS
                      if k in saved and _norm(saved[k]) != _norm(getattr(config, k))]
            if differ:
                raise SpecVLMError(f"cannot resume {where} with other settings ({'; '.join(differ)}): the result "
                                   "would not be the run it continues")
            loaded = EagleHead.from_pretrained(where, head.adapter.model, dtype=head.dtype)   # checks the target
            have = head.compressor.config() if head.compressor is not None else None
            want = loaded.compressor.config() if loaded.compressor is not None else None
            if have != want:
                raise SpecVLMError(f"cannot resume {where}: it was trained with compressor {want}, this head has "
                                   f"{have}")
            head.load_state_dict(loaded.state_dict())
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], head.fc.weight.device)
            result.steps, examples_seen, ema = state["step"], state["examples_seen"], state["ema"]
            result.losses, result.accuracy, result.picks = state["losses"], state["accuracy"], state["picks"]
            if head.compressor is not None and state.get("credit") is not None:
                head.compressor.loss_mean, head.compressor.loss_count = state["credit"]
    stream = _Stream(data, config.seed, config.shuffle, examples_seen)
    passes: dict[int, TargetPass] = {} if target_cache is None else target_cache   # per example index
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
                key, load = next(stream)
                if config.cache_target and key is not None:
                    if key not in passes or (passes[key].scores is None and _wants_scores(head, passes[key])):
                        passes[key] = target_pass(head, load())
                    parts = distill_loss(head, None, config, cached=passes[key])
                else:
                    parts = distill_loss(head, load(), config)
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
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}", acc=f"{ema:.2f}",
                            tau=f"{sum(ema ** k for k in range(1, 7)):.2f}")
            if out_dir is not None and config.checkpoint_every and result.steps % config.checkpoint_every == 0:
                _save(head, optimizer, result, out_dir / f"checkpoint-{result.steps:07d}", examples_seen, ema,
                      config)
    finally:
        bar.close()
        head.eval()
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        _save(head, optimizer, result, out_dir, examples_seen, ema, config)
    return result


def _norm(value):
    return list(value) if isinstance(value, tuple) else value


def _progress(config: TrainConfig, start: int):
    from ..progress import progress_bar

    return progress_bar(config.steps, "train-head", "step", config.progress, initial=start)


# ---- command line --------------------------------------------------------------------------------------------------
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


def compressor_config(spec: str, branches: str | None = None, ratio: int = 3, budget_weight: float = 0.0,
                      heads: int = 1) -> dict | None:
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
        VisualCompressor.from_config(8 * heads, config)   # validates branch names and ratios
    except ValueError as err:
        raise SpecVLMError(f"--compressor: {err}") from None
    return config


def _positive(**values) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise SpecVLMError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def run_from_args(args) -> int:
    _positive(steps=args.steps, batch=args.batch_size, grad_accum=args.grad_accum, limit=args.limit)
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
        resolve(args.target)   # a missing model folder is reported before the data is read
        examples = load_examples(args.data, args.target, split=args.split, num_frames=args.num_frames,
                                 fps=args.fps, max_pixels=args.max_pixels, limit=args.limit)
        target = load_model(args.target, dtype=args.dtype, device=args.device)
        if hasattr(examples, "check_against"):
            examples.check_against(target.config)
    if args.limit is not None and isinstance(examples, list):
        examples = examples[:args.limit]
    heads = int(adapter_for(target).text_config.num_attention_heads)
    saved = _saved_run(Path(args.out)) if args.resume else None
    if args.init or saved is not None:
        source = args.init or saved
        if args.compressor != "none" and not args.init:
            wanted = compressor_config(args.compressor, args.compressor_branches, args.compressor_ratio,
                                       args.budget_weight, heads)
            have = json.loads((Path(source) / "config.json").read_text()).get("compressor")
            if have is None or {**have, **wanted} != have:
                raise SpecVLMError(f"--resume: the run in {args.out} was started with compressor {have}, not "
                                   f"--compressor {args.compressor}; leave the option out to continue it")
        head = EagleHead.from_pretrained(source, target, dtype=torch.float32)
    else:
        compressor = compressor_config(args.compressor, args.compressor_branches, args.compressor_ratio,
                                       args.budget_weight, heads)
        head = EagleHead.init_for(target, compressor=compressor, seed=args.seed, dtype=torch.float32)
    config = TrainConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         clip_grad=args.clip_grad or None, feature_noise=args.feature_noise,
                         logit_weight=args.logit_weight, feature_weight=args.feature_weight, seed=args.seed,
                         out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=args.resume,
                         overwrite=args.overwrite, cache_target=args.cache_target,
                         progress=not args.no_progress and not args.json)
    result = train_head(target, examples, head, config)
    summary = dict(result.as_dict(), out=args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        picks = f", gate picks {result.picks}" if result.picks else ""
        print(f"trained {summary['parameters']:,} head parameters for {result.steps} steps in {result.seconds:.1f}s: "
              f"{_loss_change(summary)}, top-1 agreement {summary['accuracy_last10']:.2f} (last 10 steps){picks}; "
              f"saved to {args.out}")
    return 0
