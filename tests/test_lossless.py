"""Greedy speculative output is token-identical to `target.generate(do_sample=False)`, for every family, input
kind, drafter, tree shape and engine; with an identical draft nothing is rejected. The block-cut tests (EOS,
max_new_tokens) run on the default engine: the cut is the loop's, shared by both."""

import copy
import functools

import pytest
import torch
from transformers import GenerationConfig

from specvlm import SpeculativeGenerator
from specvlm.tiny import FAMILIES, make_inputs, special_ids

from helpers import model, reference

TREES = ("chain", "static", "dynamic")
ENGINES = ("fast", "eager")


@functools.cache
def identical_copy(family: str):
    return copy.deepcopy(model(family))


def drafts(family):
    return {"small": model(family, seed=1, hidden=32, layers=1), "copy": identical_copy(family), "self": "self"}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("draft", ["small", "copy", "self"])
@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_target_generate(family, kind, draft, tree, engine):
    target = model(family)
    gen = SpeculativeGenerator(target, drafts(family)[draft], tree=tree, num_draft_tokens=4, engine=engine)
    for seed, prompt_len, frames in ((0, 3, 4), (1, 11, 2)):
        inputs = make_inputs(family, kind, prompt_len=prompt_len, seed=seed, frames=frames)
        out = gen.generate(**inputs, do_sample=False, max_new_tokens=20)
        assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=20)
        assert out.stats.new_tokens == len(out.token_ids) > 10
        assert out.stats.target_prompt_tokens == inputs["input_ids"].shape[1]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("draft", ["small", "copy", "self"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chain_with_confidence_threshold_equals_target_generate(family, draft, engine):
    target = model(family, init=0.3)  # peaky: the draft is sure of some tokens and not of others
    gen = SpeculativeGenerator(
        target, drafts(family)[draft], tree="chain", num_draft_tokens=4, confidence_threshold=0.5, engine=engine
    )
    inputs = make_inputs(family, "video")
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=24, eos_token_id=-1)
    assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=24, eos_token_id=-1)
    assert out.stats.drafted_tokens <= 4 * out.stats.rounds


def first_child_depth(tree) -> int:
    """Length of the path that always takes a node's first child: the draft's own greedy continuation."""
    kids, row, depth = tree.children(), 0, 0
    while kids[row]:
        row, depth = kids[row][0] + 1, depth + 1
    return depth


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_identical_draft_is_never_rejected(family, tree, engine):
    target = model(family, init=0.3)  # peaky distributions: dynamic trees grow deep
    gen = SpeculativeGenerator(target, copy.deepcopy(target), tree=tree, num_draft_tokens=4, engine=engine)
    rounds = []
    commit = gen.drafter.commit
    gen.drafter.commit = lambda tree, accepted, *rest: (
        rounds.append((first_child_depth(tree), len(accepted[0].path))),
        commit(tree, accepted, *rest),
    )
    inputs = make_inputs(family, "video")
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=30)
    assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=30)
    assert rounds and all(drafted == accepted for drafted, accepted in rounds)
    if tree == "chain":  # τ equals the number of drafted tokens per round
        assert [d for d, _ in rounds[:-1]] == [4] * (len(rounds) - 1)
        assert out.stats.mean_accepted_tokens == out.stats.drafted_tokens / out.stats.rounds
    assert out.stats.target_forwards == out.stats.rounds + 1


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("draft", ["copy", "small", "self"])
@pytest.mark.parametrize("family", FAMILIES)
def test_max_new_tokens_inside_a_block(family, draft, tree):
    target = model(family)
    gen = SpeculativeGenerator(target, drafts(family)[draft], tree=tree, num_draft_tokens=4)
    inputs = make_inputs(family, "image")
    for max_new in (1, 2, 7, 13, 16):  # with an accepting draft, 2..16 end inside a round's block
        out = gen.generate(**inputs, do_sample=False, max_new_tokens=max_new, eos_token_id=-1)
        assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=max_new, eos_token_id=-1)
        assert len(out.token_ids) == max_new


@pytest.mark.parametrize("draft", ["copy", "small", "self"])
@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("family", FAMILIES)
def test_eos_inside_an_accepted_block(family, tree, draft):
    target = model(family)
    # an EOS that first appears mid-generation (position 7 or later), i.e. inside the second or a later round; some
    # random tiny models loop on a few tokens, so take the first input seed whose output has one
    for seed in range(8):
        inputs = make_inputs(family, "video", seed=seed)
        free = reference(target, inputs, do_sample=False, max_new_tokens=24, eos_token_id=-1)
        stop = next((i for i in range(7, 24) if free[i] not in free[:i]), None)
        if stop is not None:
            break
    eos = free[stop]
    gen = SpeculativeGenerator(target, drafts(family)[draft], tree=tree, num_draft_tokens=4)
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=24, eos_token_id=eos)
    assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=24, eos_token_id=eos)
    assert out.token_ids == free[: stop + 1]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_shipped_qwen_generation_config(family):
    """Qwen2.5-VL-Instruct ships do_sample=True, top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.05:
    a user's plain `generate(**inputs)` is deterministic there, and ours must match it token for token."""
    target = model(family)
    config = GenerationConfig(
        do_sample=True,
        top_k=1,
        top_p=0.001,
        temperature=0.1,
        repetition_penalty=1.05,
        eos_token_id=special_ids(1024)["eos"],
        max_new_tokens=24,
    )
    inputs = make_inputs(family, "image")
    expected = reference(target, inputs, generation_config=config)
    for tree in TREES:
        for engine in ENGINES:
            gen = SpeculativeGenerator(target, identical_copy(family), tree=tree, engine=engine)
            assert gen.generate(**inputs, generation_config=config).token_ids == expected


def test_repetition_penalty_greedy():
    target = model("llava_onevision")
    inputs = make_inputs("llava_onevision", "video")
    expected = reference(target, inputs, do_sample=False, max_new_tokens=24, repetition_penalty=1.3)
    for draft in ("copy", "small", "self"):
        for tree in TREES:
            for engine in ENGINES:
                gen = SpeculativeGenerator(target, drafts("llava_onevision")[draft], tree=tree, engine=engine)
                out = gen.generate(**inputs, do_sample=False, max_new_tokens=24, repetition_penalty=1.3)
                assert out.token_ids == expected


@pytest.mark.parametrize("pad", [64, -1])
def test_padded_vocabularies(pad):
    """Draft and target of one tokenizer with different padded vocab sizes (like 151936 vs 152064)."""
    family = "qwen2_5_vl"
    target = model(family, vocab_pad=max(pad, 0))
    draft = model(family, seed=0, vocab_pad=max(-pad, 0) * 128)  # same weights for the shared rows
    inputs = make_inputs(family, "video")
    expected = reference(target, inputs, do_sample=False, max_new_tokens=16)
    for tree in TREES:
        for engine in ENGINES:
            gen = SpeculativeGenerator(target, draft, tree=tree, engine=engine)
            assert gen.generate(**inputs, do_sample=False, max_new_tokens=16).token_ids == expected


def test_default_max_new_tokens_is_hf_default():
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image")
    out = SpeculativeGenerator(target, "self", tree="chain").generate(**inputs, do_sample=False, eos_token_id=-1)
    assert len(out.token_ids) == 20 == len(reference(target, inputs, do_sample=False, eos_token_id=-1))


def test_stats_are_consistent():
    target = model("llava_onevision")
    gen = SpeculativeGenerator(target, identical_copy("llava_onevision"), tree="chain", num_draft_tokens=3)
    out = gen.generate(**make_inputs("llava_onevision", "video"), do_sample=False, max_new_tokens=17)
    s = out.stats
    assert s.rounds == sum(s.accept_histogram) and s.accepted_tokens == sum(
        k * n for k, n in enumerate(s.accept_histogram)
    )
    assert s.acceptance_by_position[0] >= s.acceptance_by_position[-1]
    assert s.prefill_s > 0 and s.decode_s > 0 and s.draft_prompt_tokens == s.target_prompt_tokens
    assert s.draft_forwards >= s.rounds and set(s.as_dict()) >= {"mean_accepted_tokens", "tokens_per_second"}


def test_bad_arguments():
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image")
    gen = SpeculativeGenerator(target, "self")
    with pytest.raises(ValueError, match="num_beams"):
        gen.generate(**inputs, num_beams=2)
    with pytest.raises(ValueError, match="cannot split"):  # two rows of ids, one row of placeholders' pixels
        gen.generate(
            **{
                **inputs,
                "input_ids": inputs["input_ids"].repeat(2, 1),
                "attention_mask": inputs["attention_mask"].repeat(2, 1),
            }
        )
    with pytest.raises(ValueError, match="supports"):
        SpeculativeGenerator(torch.nn.Linear(2, 2), "self")
    with pytest.raises(ValueError, match="draft must be"):
        SpeculativeGenerator(target, "tiny")
