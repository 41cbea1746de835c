"""Speculative sampling emits exactly the target's distribution: χ² tests of the first generated tokens against the
target's exact distribution, computed by enumerating continuations with plain HF forwards (small vocabulary so the
histograms are dense). The draft is the target with a perturbed LM head: close enough that multi-token blocks are
accepted, different enough that rejections and residual draws happen every few rounds."""

import pytest
import torch

from specvlm.tiny import make_inputs

from helpers import VOCAB, Oracle, chi2_pvalue, chi2_pvalues, perturbed_pair, speculative_samples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.mark.parametrize(
    "family,kind,tree,temperature,top_p",
    [
        ("qwen2_5_vl", "image", "chain", 1.0, 1.0),
        ("qwen2_5_vl", "video", "static", 1.0, 1.0),
        ("qwen2_5_vl", "image", "dynamic", 1.0, 1.0),
        ("llava_onevision", "video", "chain", 0.7, 0.9),
        ("llava_onevision", "image", "dynamic", 1.0, 1.0),
    ],
)
def test_first_tokens_follow_target_distribution(family, kind, tree, temperature, top_p):
    target, draft = perturbed_pair(family)
    assert_first_tokens_follow_target(
        target, draft, make_inputs(family, kind, vocab=VOCAB), tree, temperature, top_p, runs=2000
    )


def assert_first_tokens_follow_target(target, draft, inputs, tree, temperature, top_p, runs, **options) -> dict:
    """The drafts must really be accepted, and χ² must not reject the target's own joint law of tokens 1-2 nor
    its marginal of token 3. Returns the totals of `speculative_samples`."""
    samples, totals = speculative_samples(target, draft, inputs, tree, temperature, top_p, runs, **options)
    assert totals["accepted"] > 300  # the draft's proposals really were accepted, not only corrected
    assert min(chi2_pvalues(target, inputs, temperature, top_p, samples)) > 1e-3
    return totals


def test_chain_with_confidence_threshold_follows_target_distribution():
    """A chain that stops after a draft token of q(x) < 0.3: the stop depends on the draft's own draws only."""
    target, draft = perturbed_pair("qwen2_5_vl")
    totals = assert_first_tokens_follow_target(
        target,
        draft,
        make_inputs("qwen2_5_vl", "video", vocab=VOCAB),
        "chain",
        1.0,
        1.0,
        runs=2000,
        confidence_threshold=0.3,
    )
    # chains were cut early in many rounds, and ran on in many others
    assert totals["rounds"] < totals["drafted"] < 2 * totals["rounds"]


def test_chi2_has_power_against_the_draft_distribution():
    """Samples drawn from the draft alone must fail the same test: the test can tell the two models apart."""
    target, draft = perturbed_pair("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image", vocab=VOCAB)
    torch.manual_seed(0)
    draft_samples = draft.generate(
        **inputs, do_sample=True, top_k=0, max_new_tokens=2, eos_token_id=-1, num_return_sequences=2000
    )[:, -2:].tolist()
    _, joint12, _ = Oracle(target, inputs, 1.0, 1.0).distributions()
    assert chi2_pvalue([a * VOCAB + b for a, b in draft_samples], joint12) < 1e-6
