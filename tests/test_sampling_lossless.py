"""Speculative sampling emits exactly the target's distribution: χ² tests of the first generated tokens against the
target's exact distribution, computed by enumerating continuations with plain HF forwards (small vocabulary so the
histograms are dense). The draft is the target with a perturbed LM head: close enough that multi-token blocks are
accepted, different enough that rejections and residual draws happen every few rounds."""

import copy
import functools

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from conftest import chi2_pvalue, model
from specvlm import SpeculativeGenerator
from specvlm.adapters import cache_keyword
from specvlm.tiny import make_inputs

VOCAB = 16
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@functools.lru_cache(maxsize=None)
def pair(family):
    target = model(family, vocab=VOCAB, init=0.5, hidden=32, layers=1)
    draft = copy.deepcopy(target)
    torch.manual_seed(7)
    draft.lm_head.weight.add_(torch.randn_like(draft.lm_head.weight) * 0.6)
    return target, draft


def warped(logits, temperature, top_p):
    scores = logits.float()[None]
    if temperature != 1.0:
        scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)[0]


class Oracle:
    """The target's exact next-token distributions after any short continuation, by plain HF forwards: one
    prefill, then one cached decode step per branch (as `generate` itself steps)."""

    def __init__(self, target, inputs, temperature, top_p):
        self.target, self.warp = target, lambda logits: warped(logits, temperature, top_p)
        self.cache_keyword = cache_keyword(target)   # `past_key_values` before transformers 5.24
        out = target(**inputs, use_cache=True)
        self.cache, self.first = out[self.cache_keyword], out.logits[0, -1]

    def after(self, cache, token):
        cache = copy.deepcopy(cache)
        out = self.target(input_ids=torch.tensor([[token]]), use_cache=True, **{self.cache_keyword: cache})
        return cache, out.logits[0, -1]

    def distributions(self):
        """p1 (V,), the joint of the first two tokens (V*V,), and the marginal of the third (V,)."""
        p1 = self.warp(self.first)
        rows2, rows3 = [], []
        for a in range(VOCAB):
            cache_a, logits_a = self.after(self.cache, a)
            rows2.append(self.warp(logits_a))
            rows3 += [self.warp(self.after(cache_a, b)[1]) for b in range(VOCAB)]
        joint12 = (p1[:, None] * torch.stack(rows2)).flatten()
        return p1, joint12, (joint12[:, None] * torch.stack(rows3)).sum(0)


@pytest.mark.parametrize("family,kind,tree,temperature,top_p", [
    ("qwen2_5_vl", "image", "chain", 1.0, 1.0),
    ("qwen2_5_vl", "video", "static", 1.0, 1.0),
    ("qwen2_5_vl", "image", "dynamic", 1.0, 1.0),
    ("llava_onevision", "video", "chain", 0.7, 0.9),
    ("llava_onevision", "image", "dynamic", 1.0, 1.0),
])
def test_first_tokens_follow_target_distribution(family, kind, tree, temperature, top_p):
    target, draft = pair(family)
    assert_first_tokens_follow_target(target, draft, make_inputs(family, kind, vocab=VOCAB), tree, temperature,
                                      top_p, runs=2000)


def speculative_samples(target, draft, inputs, tree, temperature, top_p, runs, **options):
    """`runs` speculative samples of the first 3 tokens with a small tree, and totals over them: draft tokens
    accepted and drafted, rounds, and rounds that rejected every proposal (their token came from the residual). The
    first token comes from the prefill, so every run has at least one round."""
    gen = SpeculativeGenerator(target, draft, tree=tree, num_draft_tokens=3, tree_top_k=3, tree_depth=3,
                               tree_total_tokens=8, **options)
    torch.manual_seed(0)
    samples, totals = [], dict(accepted=0, drafted=0, rounds=0, all_rejected=0)
    for _ in range(runs):
        out = gen.generate(**inputs, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                           max_new_tokens=3, eos_token_id=-1)
        samples.append(out.token_ids)
        for key, value in (("accepted", out.stats.accepted_tokens), ("drafted", out.stats.drafted_tokens),
                           ("rounds", out.stats.rounds), ("all_rejected", out.stats.accept_histogram[0])):
            totals[key] += value
    return samples, totals


def chi2_pvalues(target, inputs, temperature, top_p, samples) -> tuple[float, float]:
    """χ² p-values of the samples against the target's exact joint law of tokens 1-2 and marginal of token 3."""
    _, joint12, marginal3 = Oracle(target, inputs, temperature, top_p).distributions()
    return (chi2_pvalue([a * VOCAB + b for a, b, _ in samples], joint12),
            chi2_pvalue([c for _, _, c in samples], marginal3))


def assert_first_tokens_follow_target(target, draft, inputs, tree, temperature, top_p, runs, **options) -> dict:
    """The drafts must really be accepted, and χ² must not reject the target's own joint law of tokens 1-2 nor
    its marginal of token 3. Returns the totals of `speculative_samples`."""
    samples, totals = speculative_samples(target, draft, inputs, tree, temperature, top_p, runs, **options)
    assert totals["accepted"] > 300   # the draft's proposals really were accepted, not only corrected
    assert min(chi2_pvalues(target, inputs, temperature, top_p, samples)) > 1e-3
    return totals


def test_chain_with_confidence_threshold_follows_target_distribution():
    """A chain that stops after a draft token of q(x) < 0.3: the stop depends on the draft's own draws only."""
    target, draft = pair("qwen2_5_vl")
    totals = assert_first_tokens_follow_target(target, draft, make_inputs("qwen2_5_vl", "video", vocab=VOCAB),
                                               "chain", 1.0, 1.0, runs=2000, confidence_threshold=0.3)
    # chains were cut early in many rounds, and ran on in many others
    assert totals["rounds"] < totals["drafted"] < 2 * totals["rounds"]


def test_chi2_has_power_against_the_draft_distribution():
    """Samples drawn from the draft alone must fail the same test: the test can tell the two models apart."""
    target, draft = pair("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image", vocab=VOCAB)
    torch.manual_seed(0)
    draft_samples = draft.generate(**inputs, do_sample=True, top_k=0, max_new_tokens=2, eos_token_id=-1,
                                   num_return_sequences=2000)[:, -2:].tolist()
    _, joint12, _ = Oracle(target, inputs, 1.0, 1.0).distributions()
    assert chi2_pvalue([a * VOCAB + b for a, b in draft_samples], joint12) < 1e-6
