"""Plain helpers shared by several test files: tiny models, the target-only reference, χ² goodness of fit, the
target's exact distribution of its first tokens, and the briefly trained EAGLE heads. Fixtures and session settings
stay in conftest.py; test files import these by name (`from helpers import ...`, tests/ is on sys.path under
pytest's default import mode)."""

import copy
import functools

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from specvlm import SpeculativeGenerator
from specvlm.adapters import cache_keyword
from specvlm.drafters.eagle import EagleHead
from specvlm.tiny import make_inputs, make_model
from specvlm.train import greedy_examples, train_head

VOCAB = 16  # the sampling tests' vocabulary: small enough that histograms of the first tokens are dense
TRAIN_STEPS = 200


@functools.cache
def model(family: str, seed: int = 0, **kw):
    """Tiny models are cached per process: building one costs more than a whole short generation."""
    return make_model(family, seed=seed, **kw)


def reference(target, inputs: dict, **kw) -> list[int]:
    """Target-only HF generate, new tokens only."""
    out = target.generate(**inputs, **kw)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def chi2_pvalue(samples: list[int], probs) -> float:
    """Goodness of fit of integer samples to `probs`; cells expected to hold fewer than 5 samples are pooled."""
    import numpy as np
    from scipy.stats import chisquare

    probs = np.asarray(probs, dtype=float)
    probs = probs / probs.sum()
    counts = np.bincount(samples, minlength=len(probs)).astype(float)
    if counts[probs == 0].sum() > 0:
        return 0.0  # a token the distribution cannot produce
    expected = probs * len(samples)
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp).pvalue)


# ---- the target's exact law of its first tokens (sampling tests) -----------------------------------------------
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
        self.cache_keyword = cache_keyword(target)  # `past_key_values` before transformers 5.24
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


@functools.cache
def perturbed_pair(family):
    """A small-vocabulary target and its draft: the target with a perturbed LM head, close enough that multi-token
    blocks are accepted, different enough that rejections and residual draws happen every few rounds."""
    target = model(family, vocab=VOCAB, init=0.5, hidden=32, layers=1)
    draft = copy.deepcopy(target)
    torch.manual_seed(7)
    draft.lm_head.weight.add_(torch.randn_like(draft.lm_head.weight) * 0.6)
    return target, draft


def speculative_samples(target, draft, inputs, tree, temperature, top_p, runs, **options):
    """`runs` speculative samples of the first 3 tokens with a small tree, and totals over them: draft tokens
    accepted and drafted, rounds, and rounds that rejected every proposal (their token came from the residual). The
    first token comes from the prefill, so every run has at least one round."""
    gen = SpeculativeGenerator(
        target, draft, tree=tree, num_draft_tokens=3, tree_top_k=3, tree_depth=3, tree_total_tokens=8, **options
    )
    torch.manual_seed(0)
    samples, totals = [], dict(accepted=0, drafted=0, rounds=0, all_rejected=0)
    for _ in range(runs):
        out = gen.generate(
            **inputs, do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=3, eos_token_id=-1
        )
        samples.append(out.token_ids)
        for key, value in (
            ("accepted", out.stats.accepted_tokens),
            ("drafted", out.stats.drafted_tokens),
            ("rounds", out.stats.rounds),
            ("all_rejected", out.stats.accept_histogram[0]),
        ):
            totals[key] += value
    return samples, totals


def chi2_pvalues(target, inputs, temperature, top_p, samples) -> tuple[float, float]:
    """χ² p-values of the samples against the target's exact joint law of tokens 1-2 and marginal of token 3."""
    _, joint12, marginal3 = Oracle(target, inputs, temperature, top_p).distributions()
    return (
        chi2_pvalue([a * VOCAB + b for a, b, _ in samples], joint12),
        chi2_pvalue([c for _, _, c in samples], marginal3),
    )


# ---- EAGLE heads distilled on a peaky tiny target ----------------------------------------------------------------
def peaky(family):
    return model(family, init=0.3)  # peaky next-token distributions: learnable, long accepted paths


@functools.cache
def training_prompts(family):
    return [make_inputs(family, ("image", "video")[i % 2], prompt_len=3 + i % 5, seed=i) for i in range(8)]


@functools.cache
def training_data(family):
    return greedy_examples(peaky(family), training_prompts(family), max_new_tokens=24)


@functools.cache
def trained(family):
    """A head distilled for 200 steps on the peaky target's own greedy answers (shared with test_train_head)."""
    target = peaky(family)
    head = EagleHead.init_for(target, seed=0)
    return train_head(target, training_data(family), head, steps=TRAIN_STEPS, lr=3e-3, seed=0, progress=False)


def assert_cross_family_sampling_is_the_targets(target, draft, **options):
    """χ² of the first three sampled tokens against the target's exact law, for a LLaVA-OneVision `draft` of a
    Qwen2.5-VL `target` (VOCAB-sized, video inputs of each family), with a perturbed copy of the draft's LM head:
    close enough to be accepted, never identical. `options` go to the generator (tokenizers, for a bridge)."""
    draft = copy.deepcopy(draft)
    torch.manual_seed(7)
    with torch.no_grad():
        draft.lm_head.weight.add_(torch.randn_like(draft.lm_head.weight) * 0.6)
    inputs = make_inputs("qwen2_5_vl", "video", vocab=VOCAB)
    draft_inputs = make_inputs("llava_onevision", "video", vocab=VOCAB)
    samples, totals = speculative_samples(
        target, draft, {**inputs, "draft_inputs": draft_inputs}, "chain", 1.0, 1.0, runs=1000, **options
    )
    assert totals["accepted"] > 50  # its proposals were really accepted (~100 per 1000 runs), not only corrected
    assert min(chi2_pvalues(target, inputs, 1.0, 1.0, samples)) > 1e-3
