"""Logit processing must be HF's, bit for bit, or sampling would not be the target's distribution."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specvlm.engine.sampling import Sampling


def hf_chain(ids, logits, temperature, top_k, top_p, penalty):
    scores = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone()) if penalty != 1.0 else logits.clone()
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(ids, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(ids, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(ids, scores)
    return scores


@pytest.mark.parametrize(
    "temperature,top_k,top_p,penalty",
    [
        (1.0, 0, 1.0, 1.0),
        (0.7, 0, 1.0, 1.0),
        (1.3, 5, 1.0, 1.0),
        (0.9, 0, 0.8, 1.0),
        (0.5, 20, 0.9, 1.05),
        (1.0, 1, 0.001, 1.05),
    ],
)
def test_warp_matches_hf(temperature, top_k, top_p, penalty):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 100, generator=g) * 3
    ids = torch.randint(0, 100, (3, 12), generator=g)
    seen = torch.zeros(3, 100, dtype=torch.bool).scatter_(1, ids, True)
    s = Sampling(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty)
    ours = s.warp(s.scores(logits, seen))
    theirs = torch.cat(
        [hf_chain(ids[i : i + 1], logits[i : i + 1], temperature, top_k, top_p, penalty) for i in range(3)]
    )
    assert torch.equal(ours, theirs)


def test_greedy_is_argmax_of_penalized_scores():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    s = Sampling(repetition_penalty=1.1)
    assert s.pick(logits[0], seen[0]) == 1
    assert Sampling().pick(logits[0]) == 0
    assert torch.equal(s.probs(logits, seen), torch.tensor([[0.0, 1.0, 0.0]]))


def test_resolve_reads_generation_config_and_overrides():
    qwen_like = GenerationConfig(do_sample=True, temperature=0.1, top_p=0.001, top_k=1, repetition_penalty=1.05)
    s = Sampling.resolve(qwen_like)
    assert (s.do_sample, s.temperature, s.top_k, s.top_p, s.repetition_penalty) == (True, 0.1, 1, 0.001, 1.05)
    assert Sampling.resolve(qwen_like, do_sample=False).do_sample is False
    assert Sampling.resolve(GenerationConfig(), temperature=0.5).temperature == 0.5


@pytest.mark.parametrize("option", [dict(num_beams=2), dict(no_repeat_ngram_size=3), dict(min_new_tokens=4)])
def test_unsupported_generation_options_are_errors(option):
    with pytest.raises(ValueError, match="not supported"):
        Sampling.resolve(GenerationConfig(**option))


def test_invalid_values_are_errors():
    with pytest.raises(ValueError):
        Sampling.resolve(None, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError):
        Sampling.resolve(None, top_p=1.5)


def test_token_logprobs_are_the_raw_log_softmax_with_the_most_likely_tokens():
    """Row i of the logits chose tokens[i]: its log-probability, then the `top` best (ids and values), no warping."""
    from specvlm.engine.sampling import token_logprobs

    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    expected = torch.log_softmax(logits, -1)
    got = token_logprobs(logits, [1, 0], top=2)
    assert [g.token for g in got] == [1, 0]
    assert [g.logprob for g in got] == pytest.approx([expected[0, 1].item(), expected[1, 0].item()])
    assert [[i for i, _ in g.top] for g in got] == [[2, 1], [0, 1]]
    assert [lp for _, lp in got[0].top] == pytest.approx([expected[0, 2].item(), expected[0, 1].item()])
    assert all(g.top == () for g in token_logprobs(logits, [1, 0], top=0))
