"""Drafts of another family (issue 21, item 1): a LLaVA-OneVision draft for a Qwen-VL target and the reverse. The
draft reads the request through its own processor (`draft_inputs`: its own visual tokens, positions and
placeholders); only generated tokens cross. Lossless like every draft: greedy tokens equal `target.generate`'s,
sampled ones follow its distribution (χ²). The draft gets the target's text weights, so on a text prompt it agrees
with the target and its proposals are really accepted (a random draft would only exercise rejections)."""

import functools

import pytest

from specvlm import SpeculativeGenerator
from specvlm.errors import SpecVLMError
from specvlm.tiny import make_inputs, make_model

from helpers import VOCAB, assert_cross_family_sampling_is_the_targets, model, reference

PAIRS = [("qwen2_5_vl", "llava_onevision"), ("llava_onevision", "qwen2_5_vl"), ("qwen2_vl", "llava_onevision")]


def with_text_weights_of(target, family: str, **kw):
    """A tiny `family` model whose language model and LM head are the target's (the vision tower its own)."""
    draft = make_model(family, seed=1, **kw)
    draft.model.language_model.load_state_dict(target.model.language_model.state_dict())
    draft.lm_head.load_state_dict(target.lm_head.state_dict())
    return draft


@functools.cache
def pair(target_family: str, draft_family: str):
    target = model(target_family)
    return target, with_text_weights_of(target, draft_family)


# every pair x input kind, each with one of the (tree, engine) settings, so that every setting meets every pair and
# every kind without running the whole product
CASES = [
    (target_family, draft_family, kind, *[("chain", "eager"), ("static", "fast"), ("dynamic", "eager")][(i + j) % 3])
    for i, (target_family, draft_family) in enumerate(PAIRS)
    for j, kind in enumerate(["video", "image", "text"])
]


@pytest.mark.parametrize("target_family,draft_family,kind,tree,engine", CASES)
def test_greedy_output_equals_target_generate(target_family, draft_family, kind, tree, engine):
    target, draft = pair(target_family, draft_family)
    inputs, draft_inputs = make_inputs(target_family, kind), make_inputs(draft_family, kind)
    gen = SpeculativeGenerator(target, draft, tree=tree, engine=engine)
    out = gen.generate(**inputs, draft_inputs=draft_inputs, max_new_tokens=16, do_sample=False)
    assert out.sequences[0, inputs["input_ids"].shape[1] :].tolist() == reference(
        target, inputs, max_new_tokens=16, do_sample=False
    )
    if kind == "text":  # the same text weights at the same positions: the draft's guesses are the target's (a
        # random draft gets ~0 here; the dynamic tree's reach on these flat distributions is ~2 levels)
        assert out.stats.mean_accepted_tokens >= 2


def test_a_batch_reads_each_rows_own_draft_inputs():
    target, draft = pair("qwen2_5_vl", "llava_onevision")
    rows = [make_inputs("qwen2_5_vl", "video", seed=s) for s in (0, 1)]
    from specvlm.tiny import make_batch

    batch = make_batch(rows, "qwen2_5_vl", pad_id=target.generation_config.pad_token_id)
    draft_batch = make_batch(
        [make_inputs("llava_onevision", "video", seed=s) for s in (0, 1)],
        "llava_onevision",
        pad_id=draft.generation_config.pad_token_id,
    )
    out = SpeculativeGenerator(target, draft).generate(
        **batch, draft_inputs=draft_batch, max_new_tokens=10, do_sample=False
    )
    for b, row in enumerate(rows):
        new = out.sequences[b, batch["input_ids"].shape[1] :].tolist()[:10]
        assert new == reference(target, row, max_new_tokens=10, do_sample=False)


def test_what_cannot_be_served_is_refused_in_one_line():
    target, draft = pair("qwen2_5_vl", "llava_onevision")
    with pytest.raises(SpecVLMError, match="reads the request through its own processor.*draft_inputs="):
        SpeculativeGenerator(target, draft).generate(**make_inputs("qwen2_5_vl"), max_new_tokens=2)
    with pytest.raises(SpecVLMError, match="visual pruning hands the draft the target's visual tokens"):
        SpeculativeGenerator(target, draft, pruning="specvlm")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_sampling_follows_the_target_distribution():
    """χ² of the first three sampled tokens against the target's exact law, with a cross-family draft close enough
    to be accepted (the target's text weights, a perturbed LM head)."""
    target = model("qwen2_5_vl", vocab=VOCAB, init=0.5, hidden=32, layers=1)
    draft = with_text_weights_of(target, "llava_onevision", vocab=VOCAB, init=0.5, hidden=32, layers=1)
    assert_cross_family_sampling_is_the_targets(target, draft)
