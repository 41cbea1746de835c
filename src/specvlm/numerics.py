"""Half precision, diagnosed: when a greedy speculative output differs from `target.generate`'s, was it rounding at
a near-tie or a bug?

Speculation verifies several tokens in one forward where `generate` runs one at a time; in float32 the two agree to
~1e-6 and greedy outputs are identical, but in bfloat16 / float16 the same logits can come out a few units in the
last place apart, and where the target's best two tokens are that close the argmax may flip. From there on the two
outputs are different texts, both faithful to the model. `diagnose` finds the first differing position and the
target's own top-1 minus top-2 logit gap there (in its own greedy run): a gap within the dtype's rounding at that
magnitude is a near-tie; a larger one means the speculative side chose a token the target would not have: a bug.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

TIE_ULPS = 4  # a near-tie: the top-2 gap is at most this many units in the last place of the top logit


@dataclass(frozen=True)
class Divergence:
    position: int  # first differing new token (-1: the outputs are identical)
    gap: float = 0.0  # target's top-1 minus top-2 logit there, in its own greedy run
    tolerance: float = 0.0  # TIE_ULPS units in the last place of the top logit, in the model's dtype

    @property
    def kind(self) -> str:
        if self.position < 0:
            return "identical"
        return "near-tie" if self.gap <= self.tolerance else "bug"


def ulp(value: float, dtype: torch.dtype) -> float:
    """The spacing of `dtype`'s numbers around |value| (its unit in the last place)."""
    magnitude = max(abs(value), torch.finfo(dtype).tiny)
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(magnitude))


def classify(logits: torch.Tensor, position: int, dtype: torch.dtype, ulps: int = TIE_ULPS) -> Divergence:
    """The divergence at `position`, from the target's logits (V,) for that position in its own run."""
    top = torch.topk(logits.float().reshape(-1), 2).values.tolist()
    return Divergence(position, top[0] - top[1], ulps * ulp(top[0], dtype))


def first_difference(ours: list[int], reference: list[int]) -> int:
    """Index of the first differing token, or -1 when identical (a prefix counts as differing at its end)."""
    for i, (a, b) in enumerate(zip(ours, reference)):
        if a != b:
            return i
    return -1 if len(ours) == len(reference) else min(len(ours), len(reference))


@torch.no_grad()
def diagnose(target, inputs: dict, ours: list[int], reference: list[int], **generate_kwargs) -> Divergence:
    """Why `ours` (new token ids) differs from `reference` (`target.generate`'s, greedy, same inputs and options):
    the target's processed logits at the first differing position, in its own run up to there."""
    position = first_difference(ours, reference)
    if position < 0:
        return Divergence(-1)
    kwargs = {
        **generate_kwargs,
        "do_sample": False,
        "max_new_tokens": position + 1,
        "return_dict_in_generate": True,
        "output_scores": True,
    }
    scores = target.generate(**inputs, **kwargs).scores[position][0]
    dtype = target.get_output_embeddings().weight.dtype
    return classify(scores, position, dtype)


def flush_denormal_enabled() -> bool:
    """Whether this thread flushes denormals to zero (`torch.set_flush_denormal`, which has no getter)."""
    return float(torch.tensor([1e-39], dtype=torch.float32, device="cpu").mul(1.0)[0]) == 0.0


@contextlib.contextmanager
def denormals_flushed():
    """Within the block (or the decorated function), float math on the CPU flushes denormals to zero: fp16
    checkpoints upcast to fp32, and random or barely trained weights, produce denormals, which CPUs crawl on. The
    caller's own setting comes back after, so a library call never changes the arithmetic of the code around it."""
    flushed = flush_denormal_enabled()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushed)
