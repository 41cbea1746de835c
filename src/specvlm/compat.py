"""Can this draft speak for this target? Checked once, before any generation, with one-line reasons."""

from __future__ import annotations

from .adapters import VLMAdapter
from .errors import SpecVLMError

# Families whose processors produce the same inputs (Qwen2-VL and Qwen2.5-VL share tokenizer and placeholders).
_INPUT_GROUPS = {"qwen2_vl": "qwen", "qwen2_5_vl": "qwen"}


class IncompatibleDraft(SpecVLMError):
    pass


def reads_other_inputs(target: VLMAdapter, draft: VLMAdapter) -> bool:
    """Whether `draft` is of another input group than `target` (e.g. a LLaVA-OneVision draft for a Qwen2.5-VL
    target): it then reads the request through its own processor and chat template (`draft_inputs`), and only
    generated text tokens cross between the two models."""
    return other_input_group(target.family, draft.family)


def other_input_group(target_family: str, draft_family: str) -> bool:
    """`reads_other_inputs` by the families' names (a draft's config says it before its weights load)."""
    return _INPUT_GROUPS.get(target_family, target_family) != _INPUT_GROUPS.get(draft_family, draft_family)


def check_models(target: VLMAdapter, draft: VLMAdapter) -> None:
    """A draft of the target's input group must use its visual placeholder ids; one of another group reads its own
    inputs, so its placeholders are its own business (the vocabularies are checked by `check_tokenizers`)."""
    if reads_other_inputs(target, draft):
        return
    for what in ("image_token_id", "video_token_id"):
        t, d = getattr(target, what), getattr(draft, what)
        if t is not None and d is not None and t != d:
            raise IncompatibleDraft(f"draft {what} {d} differs from the target's {t}: not the same tokenizer")


def shares_vocabulary(target_tokenizer, draft_tokenizer) -> bool:
    """Every token both vocabularies contain has the same id, and they contain nearly the same tokens. Padded
    vocabulary sizes may differ (the draft's distribution is cut or padded to the target's ids)."""
    return _vocabulary_difference(target_tokenizer, draft_tokenizer) is None


def check_tokenizers(target_tokenizer, draft_tokenizer) -> None:
    """Refuses, in one line, two tokenizers that do not share one vocabulary (`shares_vocabulary`)."""
    if target_tokenizer is None or draft_tokenizer is None:
        return
    difference = _vocabulary_difference(target_tokenizer, draft_tokenizer)
    if difference is not None:
        raise IncompatibleDraft(f"draft tokenizer is incompatible with the target's: {difference}")


def _vocabulary_difference(target_tokenizer, draft_tokenizer) -> str | None:
    t_vocab, d_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    shared = t_vocab.keys() & d_vocab.keys()
    differing = [tok for tok in shared if t_vocab[tok] != d_vocab[tok]]
    small = min(len(t_vocab), len(d_vocab))
    if not differing and len(shared) >= 0.99 * small:
        return None
    example = f" (e.g. {differing[0]!r}: {t_vocab[differing[0]]} vs {d_vocab[differing[0]]})" if differing else ""
    return f"{len(shared)} shared tokens of {small}, {len(differing)} with different ids{example}"
