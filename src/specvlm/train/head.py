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

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..adapters import adapter_for
from ..drafters.eagle import CONFIG_NAME, WEIGHTS_NAME, EagleHead
from ..errors import SpecVLMError
from .config import TrainConfig
from .data import Example, as_example
from .loss import TargetPass, distill_loss, target_pass, wants_scores

STATE_NAME = "trainer_state.pt"
EMA = 0.9


# what a resumed run must share with the run it continues (the rest may change: steps, saving, progress)
RESUME_KEYS = (
    "lr",
    "batch_size",
    "grad_accum",
    "clip_grad",
    "feature_noise",
    "logit_weight",
    "feature_weight",
    "betas",
    "weight_decay",
    "seed",
    "shuffle",
    "ttt_steps",
)


@dataclass
class TrainResult:
    head: EagleHead
    losses: list[float] = field(default_factory=list)  # per optimizer step, mean over its examples
    accuracy: list[float] = field(default_factory=list)  # per step: top-1 agreement on response tokens
    steps: int = 0
    seconds: float = 0.0
    picks: dict = field(default_factory=dict)  # compressor branches chosen while training

    def as_dict(self) -> dict:
        first = lambda xs: sum(xs[:10]) / max(len(xs[:10]), 1)
        last = lambda xs: sum(xs[-10:]) / max(len(xs[-10:]), 1)
        # loss_first / loss_last: the first and last steps' losses, as the progress bar showed them; the means of
        # 10 steps are steadier, but overlap (and read as no progress) in runs of fewer than 20 steps
        return dict(
            steps=self.steps,
            seconds=round(self.seconds, 2),
            loss_first=self.losses[0] if self.losses else None,
            loss_last=self.losses[-1] if self.losses else None,
            loss_first10=first(self.losses),
            loss_last10=last(self.losses),
            accuracy_last10=last(self.accuracy),
            picks=self.picks,
            parameters=self.head.trainable_parameters(),
        )


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
                message = "the training data ran out (a one-shot iterator); pass a list or fewer --steps"
                raise SpecVLMError(message) from None
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
    foreign = [e.name for e in entries if not (e.name in ours or (e.is_dir() and e.name.startswith("checkpoint-")))]
    if not overwrite:
        raise SpecVLMError(
            f"--out {out_dir} already holds files ({', '.join(sorted(e.name for e in entries)[:3])}"
            f"{', ...' if len(entries) > 3 else ''}); pass --resume to continue that run, "
            "--overwrite to replace it, or another --out"
        )
    if foreign:
        raise SpecVLMError(
            f"--overwrite: {out_dir} holds files that are not a training run's "
            f"({', '.join(sorted(foreign)[:3])}); refusing to delete them"
        )
    if dry_run:
        return
    import shutil

    for entry in entries:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _save(
    head: EagleHead, optimizer, result: TrainResult, where: Path, examples_seen: int, ema, config: TrainConfig
) -> None:
    head.save_pretrained(where)
    device = head.fc.weight.device
    torch.save(
        dict(
            step=result.steps,
            examples_seen=examples_seen,
            optimizer=optimizer.state_dict(),
            config={k: getattr(config, k) for k in RESUME_KEYS},
            credit=(head.compressor.loss_mean, head.compressor.loss_count) if head.compressor else None,
            rng=torch.get_rng_state(),
            losses=result.losses,
            accuracy=result.accuracy,
            ema=ema,
            picks=result.picks,
            cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        ),
        where / STATE_NAME,
    )


def train_head(
    target,
    data,
    head: EagleHead | None = None,
    config: TrainConfig | None = None,
    target_cache: dict | None = None,
    **overrides,
) -> TrainResult:
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
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
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
            differ = [
                f"{k} {saved[k]} vs {getattr(config, k)}"
                for k in RESUME_KEYS
                if k in saved and _norm(saved[k]) != _norm(getattr(config, k))
            ]
            if differ:
                raise SpecVLMError(
                    f"cannot resume {where} with other settings ({'; '.join(differ)}): the result "
                    "would not be the run it continues"
                )
            loaded = type(head).from_pretrained(where, head.adapter.model, dtype=head.dtype)  # checks the target
            have = head.compressor.config() if head.compressor is not None else None
            want = loaded.compressor.config() if loaded.compressor is not None else None
            if have != want:
                raise SpecVLMError(
                    f"cannot resume {where}: it was trained with compressor {want}, this head has {have}"
                )
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
    passes: dict[int, TargetPass] = {} if target_cache is None else target_cache  # per example index
    picks_before = Counter(result.picks)
    if head.compressor is not None:
        head.compressor.picks.clear()  # count this run's choices only (plus what a resumed run had made)
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
                    if key not in passes or (passes[key].scores is None and wants_scores(head, passes[key].prompt)):
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
            bar.set_postfix(
                loss=f"{result.losses[-1]:.4f}", acc=f"{ema:.2f}", tau=f"{sum(ema**k for k in range(1, 7)):.2f}"
            )
            if out_dir is not None and config.checkpoint_every and result.steps % config.checkpoint_every == 0:
                _save(head, optimizer, result, out_dir / f"checkpoint-{result.steps:07d}", examples_seen, ema, config)
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
