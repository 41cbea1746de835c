"""One timed generation: the method's token ids, its wall / prefill / decode seconds, its acceptance counts and the
time spent inside each model's decoder forwards.

Every method reports the same `Measurement`, whoever runs it (HF `generate`, HF assisted generation or our
`SpeculativeGenerator`), so the report can compare them:

- wall time around the generate call (inputs already on the model; nothing else inside the timer);
- prefill / decode split: ours from `SpecStats` (prefill = target prefill, attention capture, selection and draft
  prefill; decode = the rest, first draft tree included: the video paper's convention); HF's from a streamer that
  notes when the first new token comes out (time to first token = prefill; for HF assisted generation that is
  after its first round, which verifies the first drafts together with the prompt);
- forward clocks, HF's methods: a forward pre/post hook on the decoder stack (the adapter's `decoder`)
  records every call's duration, keyed by the KV cache object passed in. The first cache seen on the target's
  decoder is the target; everything else is the draft (HF assisted generation). The LM head's time (a hook on the
  output embeddings) joins the decoder call just before it. Call 0 of each is its prefill, the rest its decode
  forwards.
- forward clocks, ours: every forward of a session (`session.observe_forwards`: decoder + LM head, compiled or
  not) while the drafter adds its row or proposes is the draft's, every other one the target's ("self" drafting in the
  target's own session included). Vision towers, sampling, tree building and cache bookkeeping are not in the
  clocks.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

import torch

from ..adapters import adapter_for
from ..adapters.generation import assistant_sees_its_pixels, recording_matches
from ..engine.streaming import AnswerStreamer


@dataclass
class Clock:
    """Decoder forward calls of one model in one generation (call 0 = prefill)."""

    calls: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0  # summed over calls 1..

    def add(self, seconds: float, prefill: bool | None = None) -> None:
        """`prefill`: whether this call is the prefill (None: the first call is)."""
        if prefill if prefill is not None else self.calls == 0:
            self.prefill_s += seconds
        else:
            self.decode_s += seconds
        self.calls += 1

    def extend_last(self, seconds: float) -> None:
        """Time that belongs to the latest call (its LM head)."""
        if self.calls == 1:
            self.prefill_s += seconds
        elif self.calls > 1:
            self.decode_s += seconds


@dataclass
class Measurement:
    token_ids: list[int]
    wall_s: float
    prefill_s: float
    decode_s: float
    rounds: int = 0  # verification rounds (0 for target-only)
    accepted: int = 0  # draft tokens accepted over all rounds (bonus tokens excluded)
    drafted: int = 0  # draft tokens proposed (tree nodes) over all rounds
    accept_histogram: list[int] = field(default_factory=list)  # [k] = rounds that accepted exactly k
    target_forwards: int = 0  # prefill included
    draft_forwards: int = 0  # prefill included
    target_clock: Clock = field(default_factory=Clock)
    draft_clock: Clock = field(default_factory=Clock)
    extra: dict = field(default_factory=dict)  # method-specific (prompt lengths, kept visual tokens, ...)

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["new_tokens"] = self.new_tokens
        return out


# ---- decoder forward clocks ----------------------------------------------------------------------------------------
class ForwardClocks:
    """`with ForwardClocks(target_module, draft_module, heads) as clocks:` ... then `clocks.target`, `clocks.draft`
    (`Clock`s). `draft_module` may be the target's own module ("self") or None. `heads`: LM-head modules, whose
    time joins the decoder call just before them (every forward runs its decoder, then its LM head)."""

    def __init__(self, target_module, draft_module=None, heads=()):
        self.modules = [m for m in (target_module, draft_module) if m is not None]
        self.heads = [m for m in dict.fromkeys(heads) if m is not None and m not in self.modules]
        self.target_module = target_module
        self.target, self.draft = Clock(), Clock()
        self.last: Clock | None = None
        self._target_cache = None
        self._started: dict[int, float] = {}

    def __enter__(self):
        self.handles = []
        for module in dict.fromkeys(self.modules):  # once per distinct module
            self.handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post, with_kwargs=True))
        for module in self.heads:
            self.handles.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
            self.handles.append(module.register_forward_hook(self._post_head, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def _pre(self, module, args, kwargs):
        _sync()
        self._started[id(module)] = time.perf_counter()

    def _elapsed(self, module) -> float:
        _sync()
        return time.perf_counter() - self._started.pop(id(module))

    def _post(self, module, args, kwargs, output):
        seconds = self._elapsed(module)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # named `cache` from transformers 5.24
        if module is self.target_module and self._target_cache is None:
            self._target_cache = id(cache)
        is_target = module is self.target_module and id(cache) == self._target_cache
        self.last = self.target if is_target else self.draft
        self.last.add(seconds)

    def _post_head(self, module, args, kwargs, output):
        seconds = self._elapsed(module)
        if self.last is not None:
            self.last.extend_last(seconds)


class FirstTokenTimer(AnswerStreamer):
    """A `generate(streamer=...)` that notes when the first new tokens arrive (`first_token_at`)."""

    @property
    def first_token_at(self) -> float | None:
        return self.first_at


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decoder_of(model):
    """The decoder stack whose forwards are timed (HF VLMs' language model)."""
    return adapter_for(model).decoder


# ---- target alone (HF generate) ------------------------------------------------------------------------------------
def measure_target(target, inputs: dict, gen_kwargs: dict) -> Measurement:
    """`target.generate(**inputs, **gen_kwargs)`: the reference output and the target's per-forward cost."""
    streamer = FirstTokenTimer()
    n_prompt = inputs["input_ids"].shape[1]
    with ForwardClocks(decoder_of(target), heads=[target.get_output_embeddings()]) as clocks:
        _sync()
        started = time.perf_counter()
        out = target.generate(**inputs, **gen_kwargs, streamer=streamer)
        _sync()
        ended = time.perf_counter()
    ids = out[0, n_prompt:].tolist()
    first = streamer.first_token_at or ended
    return Measurement(
        ids,
        ended - started,
        first - started,
        ended - first,
        target_forwards=clocks.target.calls,
        target_clock=clocks.target,
        extra={"target_prompt_tokens": n_prompt},
    )


# ---- HF assisted generation ----------------------------------------------------------------------------------------
@contextmanager
def assistant_settings(assistant, num_tokens: int | None):
    """`num_tokens`: a constant draft length with no confidence cut-off; None keeps HF's defaults."""
    if num_tokens is None:
        yield
        return
    config = assistant.generation_config
    saved = {
        k: getattr(config, k, None)
        for k in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    }
    config.num_assistant_tokens, config.num_assistant_tokens_schedule = num_tokens, "constant"
    config.assistant_confidence_threshold = 0.0
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


def measure_hf_assisted(
    target, draft, inputs: dict, draft_inputs: dict, gen_kwargs: dict, num_assistant_tokens: int | None = None
) -> Measurement:
    """`target.generate(**inputs, assistant_model=draft)` with the draft given its own vision features."""
    streamer, rounds = FirstTokenTimer(), []
    n_prompt = inputs["input_ids"].shape[1]
    with (
        assistant_sees_its_pixels(draft, draft_inputs) as sees,
        recording_matches(target, rounds),
        assistant_settings(draft, num_assistant_tokens),
        ForwardClocks(
            decoder_of(target), decoder_of(draft), heads=[target.get_output_embeddings(), draft.get_output_embeddings()]
        ) as clocks,
    ):
        _sync()
        started = time.perf_counter()
        out = target.generate(**inputs, **gen_kwargs, assistant_model=draft, streamer=streamer)
        _sync()
        ended = time.perf_counter()
    ids = out[0, n_prompt:].tolist()
    first = streamer.first_token_at or ended
    histogram = [0] * (max((a for _, a in rounds), default=0) + 1)
    for _, accepted in rounds:
        histogram[accepted] += 1
    return Measurement(
        ids,
        ended - started,
        first - started,
        ended - first,
        rounds=len(rounds),
        accepted=sum(a for _, a in rounds),
        drafted=sum(d for d, _ in rounds),
        accept_histogram=histogram if rounds else [],
        target_forwards=clocks.target.calls,
        draft_forwards=clocks.draft.calls,
        target_clock=clocks.target,
        draft_clock=clocks.draft,
        extra={"target_prompt_tokens": n_prompt, "assistant_given_pixels": sees},
    )


# ---- ours -----------------------------------------------------------------------------------------------------------
def measure_speculative(generator, target, inputs: dict, draft_inputs: dict | None, gen_kwargs: dict) -> Measurement:
    """`SpeculativeGenerator.generate`; forwards run while the drafter adds its row or proposes are the draft's."""
    from ..engine.session import observe_forwards

    drafter = generator.drafter
    kwargs = dict(gen_kwargs)
    if draft_inputs is not None:
        kwargs["draft_inputs"] = draft_inputs
    target_clock, draft_clock, drafting = Clock(), Clock(), [False]

    def heard(session, kind, seconds):
        (draft_clock if drafting[0] else target_clock).add(seconds, prefill=kind == "prefill")

    with ExitStack() as stack:
        for name in ("add_row", "propose"):
            stack.enter_context(_flagged(drafter, name, drafting))
        stack.enter_context(observe_forwards(heard))
        _sync()
        started = time.perf_counter()
        out = generator.generate(**inputs, **kwargs)
        _sync()
        ended = time.perf_counter()
    s = out.stats
    extra = {
        k: getattr(s, k)
        for k in (
            "target_prompt_tokens",
            "draft_prompt_tokens",
            "visual_tokens",
            "kept_visual_tokens",
            "scoring_s",
            "selection_s",
            "compile_s",
        )
    }
    return Measurement(
        list(out.token_ids),
        ended - started,
        s.prefill_s,
        s.decode_s,
        rounds=s.rounds,
        accepted=s.accepted_tokens,
        drafted=s.drafted_tokens,
        accept_histogram=list(s.accept_histogram),
        target_forwards=s.target_forwards,
        draft_forwards=s.draft_forwards,
        target_clock=target_clock,
        draft_clock=draft_clock,
        extra=extra,
    )


@contextmanager
def _flagged(obj, name: str, flag: list):
    """While `obj.name(...)` runs, flag[0] is True."""
    original = getattr(obj, name)

    def flagged(*args, **kwargs):
        flag[0] = True
        try:
            return original(*args, **kwargs)
        finally:
            flag[0] = False

    setattr(obj, name, flagged)
    try:
        yield
    finally:
        delattr(obj, name)
