"""`--draft none`: the target's own Hugging Face `generate`, behind the interface of `SpeculativeGenerator`
(`generate(**inputs, streamer=..., generator=...)` returning a `SpecOutput`, `.stats`), so that `specvlm generate`
and `specvlm serve` run, print and time the baseline exactly as they run speculation, and users can compare."""

from __future__ import annotations

import time

import torch

from .generator import SpecOutput
from .stats import SpecStats
from .streaming import AnswerStreamer


class TargetOnly:
    def __init__(self, target, tokenizer=None):
        self.model, self.tokenizer = target, tokenizer
        self.stats = SpecStats()

    def generate(
        self, input_ids=None, *, streamer=None, generator: torch.Generator | None = None, **kwargs
    ) -> SpecOutput:
        """`target.generate(input_ids, **kwargs)`, timed: prefill is the time to the first new token. HF's generate
        takes no torch.Generator, so a given `generator` seeds torch's global one (from one draw of it, so that
        the same seed gives the same answer)."""
        kwargs.pop("draft_inputs", None)  # the draft's own inputs: there is no draft
        if generator is not None and kwargs.get("do_sample"):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        clock = Clock(streamer)
        out = self.model.generate(input_ids=input_ids, streamer=clock, **kwargs)
        sequences = getattr(out, "sequences", out)
        prompt = input_ids.shape[1]
        tokens = sequences[0, prompt:].tolist()
        first = clock.first_at or clock.started
        self.stats = SpecStats(
            mode="target-only",
            new_tokens=len(tokens),
            target_forwards=len(tokens),
            target_prompt_tokens=prompt,
            visual_tokens=self._visual_tokens(input_ids),
            prefill_s=first - clock.started,
            decode_s=time.perf_counter() - first,
        )
        text = None if self.tokenizer is None else self.tokenizer.decode(tokens, skip_special_tokens=True)
        return SpecOutput(tokens, text, self.stats, sequences)

    def _visual_tokens(self, input_ids) -> int:
        """Image and video placeholder tokens in the prompt (counted as the speculative stats count them)."""
        config = self.model.config
        ids = [
            i
            for i in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
            if i is not None
        ]
        return int(torch.isin(input_ids[0].cpu(), torch.tensor(ids, dtype=torch.long)).sum()) if ids else 0


class Clock(AnswerStreamer):
    """Notes when the first new token arrives (`first_at`) and passes every `put` / `end` on to `inner`."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def put(self, ids) -> None:
        super().put(ids)
        if self.inner is not None:
            self.inner.put(ids)

    def on_end(self) -> None:
        if self.inner is not None:
            self.inner.end()
