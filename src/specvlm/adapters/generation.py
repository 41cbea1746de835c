"""The parts of Hugging Face `generate` that specvlm relies on but transformers does not publish: its defaults for
options nobody set, and the hooks the benchmark uses to give HF's assisted generation a fair run (its draft sees its
own pixels) and to count its accepted tokens. A transformers release that moves them is repaired here."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import GenerationConfig


def model_input_names(model) -> frozenset[str]:
    """The keywords HF's `generate` lets through to `model` (its `_validate_model_kwargs` rule): the parameters of
    `prepare_inputs_for_generation`, plus `forward`'s when that takes **kwargs, plus the model-agnostic
    TransformersKwargs. HF raises for any other model input ("model_kwargs are not used"), typos included."""
    import inspect

    from transformers.utils import TransformersKwargs

    names = set(inspect.signature(model.prepare_inputs_for_generation).parameters)
    if "kwargs" in names or "model_kwargs" in names:
        names |= set(inspect.signature(model.forward).parameters)
    return frozenset(names | set(TransformersKwargs.__optional_keys__) | {"debug_io", "mm_encoder_outputs"})


def generation_defaults() -> dict:
    """The values HF `generate` uses for options nobody set (transformers 5: top_k=50, max_length=20, ...)."""
    getter = getattr(GenerationConfig, "_get_default_generation_params", None)
    return (
        getter()
        if getter
        else {
            "max_length": 20,
            "top_k": 50,
            "temperature": 1.0,
            "top_p": 1.0,
            "repetition_penalty": 1.0,
            "do_sample": False,
        }
    )


@contextmanager
def assistant_sees_its_pixels(assistant, draft_inputs: dict):
    """transformers 5.x encodes the pixels once for the *target* (`mm_encoder_outputs`) and runs the assistant's
    own prefill as a non-first iteration, so the assistant drafts blind (its prefill drops every multimodal
    input). For a fair baseline we encode the pixels with the assistant's own vision tower (HF's own encoder
    entry point) and hand them to its first forward; restored on exit. Yields whether it did."""
    encoder = getattr(assistant, "_prepare_multimodal_encoder_kwargs_for_generation", None)
    supported = getattr(assistant, "_supports_mm_encoder_outputs", lambda: False)
    if encoder is None or not supported():  # an older path that still forwards the pixels themselves
        yield False
        return
    encoder_inputs = {k: v for k, v in draft_inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        own = encoder(encoder_inputs).get("mm_encoder_outputs")
    original = assistant.prepare_inputs_for_generation

    def prepare(input_ids, *args, is_first_iteration=False, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # named `cache` from transformers 5.24
        if own and (cache is None or cache.get_seq_length() == 0):
            kwargs["mm_encoder_outputs"], is_first_iteration = own, True
        return original(input_ids, *args, is_first_iteration=is_first_iteration, **kwargs)

    assistant.prepare_inputs_for_generation = prepare
    try:
        yield bool(own)
    finally:
        del assistant.prepare_inputs_for_generation  # back to the class's method


@contextmanager
def recording_matches(target, rounds: list[tuple[int, int]]):
    """Appends (drafted, accepted) per assisted-generation round to `rounds`, from HF's own
    `update_candidate_strategy(input_ids, scores, num_matches)` call (num_matches is recomputed by HF after a
    round is cut at EOS / max_new_tokens, so it counts the accepted draft tokens exactly as our τ does)."""
    original = target._get_candidate_generator

    def get(*args, **kwargs):
        generator = original(*args, **kwargs)
        update = generator.update_candidate_strategy

        def recorded(input_ids, scores, num_matches):
            rounds.append((int(scores.shape[1]) - 1, int(num_matches)))
            return update(input_ids, scores, num_matches)

        generator.update_candidate_strategy = recorded
        return generator

    target._get_candidate_generator = get
    try:
        yield
    finally:
        del target._get_candidate_generator
