"""How logits become a next-token choice, applied identically to target and draft.

The order matches Hugging Face `generate`: repetition penalty, then temperature, top-k, top-p (warpers run only
when sampling). Every function works on float32 logits of shape (rows, vocab), one row per position, so a whole
draft tree is processed at once; `seen` says, per row, which token ids the repetition penalty applies to
(prompt + generated + the row's own ancestors in the tree).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from ..adapters.generation import generation_defaults
from ..errors import SpecVLMError

# generate() options that change the distribution but that the speculative loop does not implement. Passing one
# with a non-default value is an error rather than a silent difference from `target.generate`.
_UNSUPPORTED = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "penalty_alpha": None,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "min_p": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "diversity_penalty": 0.0,
    "guidance_scale": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "exponential_decay_length_penalty": None,
    "num_return_sequences": 1,
    "top_h": None,
}


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def resolve(cls, generation_config=None, **overrides) -> Sampling:
        """Settings as `generate` would use them: explicit arguments over the given config over HF's defaults."""
        config = generation_config if generation_config is not None else GenerationConfig()
        defaults = generation_defaults()
        values = {}
        for name in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty"):
            value = overrides.get(name)
            if value is None:
                value = getattr(config, name, None)
            if value is None:
                value = defaults.get(name)
            if value is not None:
                values[name] = value
        for name, default in _UNSUPPORTED.items():
            value = getattr(config, name, None)
            if value not in (default, defaults.get(name), None):
                raise SpecVLMError(f"generation option {name}={value!r} is not supported by speculative decoding")
        s = cls(**values)
        if s.do_sample and not s.temperature > 0:  # `not >`: NaN is refused too, as HF refuses it
            raise SpecVLMError(f"temperature must be > 0 when sampling, got {s.temperature}")
        if not 0 < s.top_p <= 1:
            raise SpecVLMError(f"top_p must be in (0, 1], got {s.top_p}")
        if s.top_k < 0 or not s.repetition_penalty > 0:
            raise SpecVLMError(
                f"top_k must be >= 0 and repetition_penalty > 0, got {s.top_k} and {s.repetition_penalty}"
            )
        return s

    @property
    def uses_history(self) -> bool:
        return self.repetition_penalty != 1.0

    def scores(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Processed scores (what greedy argmaxes): logits with the repetition penalty on `seen` ids."""
        scores = logits.float()
        if self.uses_history and seen is not None:
            seen = seen[..., : scores.shape[-1]].to(scores.device)
            penalized = torch.where(scores < 0, scores * self.repetition_penalty, scores / self.repetition_penalty)
            scores = torch.where(seen, penalized, scores)
        return scores

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p as HF's warpers do it (filtered entries become -inf)."""
        if not self.do_sample:
            return scores
        if self.temperature != 1.0:
            scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop_sorted = cumulative <= (1 - self.top_p)
            drop_sorted[..., -1:] = False
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        return scores

    def processed(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """What HF's logits processors make of the logits (its `output_scores`): penalty, then the warpers when
        sampling. Greedy takes its argmax, sampling its softmax."""
        scores = self.scores(logits, seen)
        return self.warp(scores) if self.do_sample else scores

    def probs(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """The distribution a token is drawn from (one-hot at the argmax when greedy)."""
        scores = self.processed(logits, seen)
        if not self.do_sample:
            return torch.nn.functional.one_hot(scores.argmax(-1), scores.shape[-1]).float()
        return scores.softmax(dim=-1)

    def logprobs(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Draft-side log-probabilities used to rank tree candidates (unfiltered after temperature)."""
        scores = self.scores(logits, seen)
        if self.do_sample and self.temperature != 1.0:
            scores = scores / self.temperature
        return scores.log_softmax(dim=-1)

    def pick(self, logits: torch.Tensor, seen: torch.Tensor | None = None, random=None) -> torch.Tensor:
        """One token per row, (...) long on the logits' device, from logits (..., V); `random`: a `RowRandom`."""
        if not self.do_sample:
            return self.scores(logits, seen).argmax(-1)
        return sample_from(self.probs(logits, seen), random)


@dataclass(frozen=True)
class TokenLogprob:
    """A new token's log-probability under the target, and the most likely tokens at its position (best first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, log-probability)


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """Per new token: log-softmax of the target's raw logits (n, V) at the position that produced it (row i produced
    tokens[i]), before any penalty, temperature, top-k or top-p (what HF's `output_logits` hold, and vLLM's default
    "raw" logprobs), with the `top` most likely tokens. Two host transfers for the n tokens."""
    logp = logits.float().log_softmax(-1)  # (n, V)
    ids = torch.tensor(tokens, dtype=torch.long, device="cpu").to(logp.device)
    chosen = logp.gather(1, ids[:, None])  # (n, 1)
    best = logp.topk(top, dim=-1)  # values, indices: (n, top) each
    numbers = torch.cat([chosen, best.values], 1).cpu().tolist()  # (n, 1 + top)
    ranked = best.indices.cpu().tolist()
    return [TokenLogprob(token, row[0], tuple(zip(ids_, row[1:]))) for token, row, ids_ in zip(tokens, numbers, ranked)]


class RowSampling:
    """The sampling settings of a batch's rows (one `Sampling` each, e.g. per server request), applied to tensors
    whose first dimension is the row: (B, ..., V). Rows that share settings are processed together by the settings'
    own methods, so every row's scores are exactly what its `Sampling` (and HF's processors) give; a batch with one
    setting (a library call) is one call."""

    def __init__(self, rows):
        self.rows = tuple(rows)
        self.groups: dict[Sampling, list[int]] = {}
        for row, sampling in enumerate(self.rows):
            self.groups.setdefault(sampling, []).append(row)
        self._index: dict = {}

    @property
    def single(self) -> Sampling | None:
        return self.rows[0] if len(self.groups) == 1 else None

    @property
    def any_sample(self) -> bool:
        return any(s.do_sample for s in self.groups)

    @property
    def uses_history(self) -> bool:
        return any(s.uses_history for s in self.groups)

    def do_sample(self, device) -> torch.Tensor:
        """(B,) bool on `device`: which rows sample."""
        return torch.tensor([s.do_sample for s in self.rows], dtype=torch.bool, device=device)

    def _group_index(self, device):
        if device not in self._index:
            self._index[device] = [
                (s, torch.tensor(rows, dtype=torch.long, device=device)) for s, rows in self.groups.items()
            ]
        return self._index[device]

    def map(self, fn, x: torch.Tensor, seen: torch.Tensor | None = None, random=None) -> torch.Tensor:
        """`fn(sampling, x, seen, random)` applied to each group of rows sharing a `Sampling` (one call when all
        do), results put back in row order; `seen` and `random` are cut to the group's rows."""
        if self.single is not None:
            return fn(self.single, x, seen, random)
        out = None
        for sampling, index in self._group_index(x.device):
            part = fn(
                sampling,
                x[index],
                None if seen is None else seen[index],
                None if random is None else random.subset(self.groups[sampling]),
            )
            if out is None:
                out = part.new_empty((x.shape[0], *part.shape[1:]))
            out[index] = part
        assert out is not None  # at least one group
        return out

    def scores(self, logits, seen=None):
        return self.map(lambda s, x, h, r: s.scores(x, h), logits, seen)

    def processed(self, logits, seen=None):
        return self.map(lambda s, x, h, r: s.processed(x, h), logits, seen)

    def probs(self, logits, seen=None):
        return self.map(lambda s, x, h, r: s.probs(x, h), logits, seen)

    def pick(self, logits: torch.Tensor, seen: torch.Tensor | None = None, random=None) -> torch.Tensor:
        """One token per row, (B, ...) long, from logits (B, ..., V), each row by its own rule."""
        return self.map(lambda s, x, h, r: s.pick(x, h, r), logits, seen, random)


class RowRandom:
    """Random draws for a batch whose rows may each have their own `torch.Generator` (a server request's seed) or
    none (torch's global generator). Rows sharing a generator draw together, in one call; a library batch has one
    generator, so it is one call, and a batch of one draws exactly what an unbatched draw of its shape would."""

    def __init__(self, generators):
        self.generators = list(generators)
        self.groups: dict[int, tuple[torch.Generator | None, list[int]]] = {}
        for row, generator in enumerate(self.generators):
            self.groups.setdefault(id(generator), (generator, []))[1].append(row)

    def subset(self, rows: list[int]) -> RowRandom:
        return RowRandom([self.generators[i] for i in rows])

    def fill(self, shape, device, dtype, method: str) -> torch.Tensor:
        """A (B, ...) tensor of i.i.d. draws (`method`: "exponential_" or "uniform_"), each row's from its generator."""
        if len(self.groups) == 1:
            return getattr(torch.empty(shape, dtype=dtype, device=device), method)(generator=self.generators[0])
        out = torch.empty(shape, dtype=dtype, device=device)
        for generator, rows in self.groups.values():
            part = torch.empty((len(rows), *shape[1:]), dtype=dtype, device=device)
            out[torch.tensor(rows, dtype=torch.long, device=device)] = getattr(part, method)(generator=generator)
        return out


def sample_from(probs: torch.Tensor, random: RowRandom | None = None) -> torch.Tensor:
    """One draw per row of `probs` (..., V) -> (...) long, on their device, without a host round trip: the
    exponential trick, argmax p / E with E ~ Exp(1) i.i.d. (P(argmax = i) = p_i / Σ p; gpt-fast samples so).
    `random`: a `RowRandom` (dimension 0 of `probs` is its row) whose generators live on the probabilities' device
    (`device_generator` makes them), or None for torch's global generator."""
    shape, device = probs.shape, probs.device
    noise = (
        torch.empty(shape, dtype=torch.float32, device=device).exponential_()
        if random is None
        else random.fill(shape, device, torch.float32, "exponential_")
    )
    return (probs.float() / noise).argmax(-1)


def uniform(shape, device, dtype, random: RowRandom | None = None) -> torch.Tensor:
    """U[0, 1) draws of `shape` (dimension 0: the row), from the rows' generators or torch's global one."""
    if random is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return random.fill(shape, device, dtype, "uniform_")


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on `device` that continues `generator` deterministically (seeded from one draw of it), so
    that a user's CPU generator still makes sampling on a GPU reproducible; None stays None (global RNG)."""
    if generator is None or generator.device == torch.device(device):
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


class TokenHistory:
    """Per batch row, the ids the repetition penalty applies to (its prompt and every committed token): a
    (max_rows, V) bool tensor on the device, made when the first row that needs one joins."""

    def __init__(self, max_rows: int, vocab: int, device: torch.device):
        self.max_rows, self.vocab, self.device = max_rows, vocab, device
        self.seen: torch.Tensor | None = None

    def start_row(self, row: int, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Row `row` starts from its prompt's ids (L,); returns the row's (V,) view."""
        if self.seen is None:
            self.seen = torch.zeros(self.max_rows, self.vocab, dtype=torch.bool, device=self.device)
        self.seen[row] = False
        self.seen[row, prompt_ids.clamp_max(self.vocab - 1).to(self.device)] = True
        return self.seen[row]

    def rows(self, count: int) -> torch.Tensor | None:
        """(count, V) for rows 0..count-1; None while no row has needed a history."""
        return None if self.seen is None else self.seen[:count]

    def add(self, rows: list[int], tokens: list[int]) -> None:
        """Marks tokens[i] in row rows[i] (one host-to-device copy)."""
        if not rows:
            return
        assert self.seen is not None  # made when the first row with a repetition penalty joined
        host = torch.tensor([rows, tokens], dtype=torch.long, device="cpu").to(self.device)
        self.seen[host[0], host[1].clamp_max(self.vocab - 1)] = True

    def move_row(self, src: int, dst: int) -> None:
        if self.seen is not None:
            self.seen[dst] = self.seen[src]


def history_rows(seen: torch.Tensor | None, path_tokens: torch.Tensor) -> torch.Tensor | None:
    """Per tree row, the ids the repetition penalty applies to: everything its batch row committed (`seen`, (B, V)
    bool) plus the tree row's own draft path, `path_tokens` (B, r, d) long with -1 where a path is shorter.
    Returns (B, r, V) bool."""
    if seen is None:
        return None
    vocab = seen.shape[-1]
    rows = torch.zeros(*path_tokens.shape[:-1], vocab + 1, dtype=torch.bool, device=seen.device)
    rows.scatter_(-1, torch.where(path_tokens >= 0, path_tokens, vocab).to(seen.device), True)
    return rows[..., :vocab] | seen[:, None, :]


def effective_config(
    model_config: GenerationConfig | None, given: GenerationConfig | None, **kwargs
) -> GenerationConfig:
    """HF's precedence: keyword arguments > the `generation_config` passed in > the model's generation_config >
    library defaults (applied later, per field, by `Sampling.resolve` and `max_new_tokens`)."""
    config = copy.deepcopy(given) if given is not None else GenerationConfig()
    if model_config is not None:
        config.update(**model_config.to_dict(), defaults_only=True, allow_custom_entries=True)
    config.update(**{k: v for k, v in kwargs.items() if v is not None})
    return config


def max_new_tokens(config: GenerationConfig, prompt_len: int) -> int:
    """HF's rule: max_new_tokens if set, else max_length minus the prompt if anyone set it, else 20 new tokens."""
    value = config.max_new_tokens
    if value is None:
        value = generation_defaults()["max_length"] if config.max_length is None else config.max_length - prompt_len
    if value < 1:
        raise SpecVLMError(f"max_new_tokens must be >= 1, got {value}")
    return int(value)
