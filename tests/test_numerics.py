"""The half-precision diagnosis tells a near-tie (rounding decided the argmax) from a bug (a token the target would
not have chosen), on hand-made logits and on a planted case of each in a real model."""

import torch

from specvlm.numerics import Divergence, classify, diagnose, first_difference, ulp
from specvlm.tiny import make_inputs, make_model

from helpers import reference


def test_ulp_and_classification():
    assert ulp(1.0, torch.float32) == 2**-23 and ulp(3.0, torch.bfloat16) == 2**-6
    assert ulp(-20.0, torch.float16) == 2**-6
    tie = classify(torch.tensor([10.0, 10.0 - 2**-5, 3.0]), 7, torch.bfloat16)  # half an ulp apart
    assert tie.kind == "near-tie" and tie.position == 7
    assert classify(torch.tensor([10.0, 9.5, 3.0]), 7, torch.bfloat16).kind == "bug"
    assert classify(torch.tensor([10.0, 10.0 - 2**-5, 3.0]), 7, torch.float32).kind == "bug"  # fp32: far apart
    assert Divergence(-1).kind == "identical"
    assert first_difference([1, 2, 3], [1, 2, 3]) == -1 and first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_planted_near_tie_and_bug_are_told_apart():
    target = make_model("qwen2_5_vl", init=0.3)
    inputs = make_inputs("qwen2_5_vl", "image")
    options = dict(max_new_tokens=12, eos_token_id=-1)
    # a bug: a token the target ranks far below its choice, at position 4
    plain = reference(target, inputs, do_sample=False, **options)
    wrong = plain[:4] + [int(torch.topk(target.lm_head.weight @ torch.ones(64), 500).indices[-1])] + plain[5:]
    bug = diagnose(target, inputs, wrong, plain, **options)
    assert bug.position == 4 and bug.kind == "bug" and bug.gap > 100 * bug.tolerance
    # a near-tie: token y gets the same LM-head row as the target's first choice t, so the two always tie; the
    # target takes the lower id, a computation that rounded the other way takes the other one
    t = plain[0]
    y = t + 1 if t + 1 < 1018 else t - 1
    target.lm_head.weight.data[y] = target.lm_head.weight.data[t]
    tied = reference(target, inputs, do_sample=False, **options)
    p = next(i for i, token in enumerate(tied) if token in (t, y))
    other = y if tied[p] == t else t
    near = diagnose(target, inputs, tied[:p] + [other], tied[: p + 1], **options)
    assert near.position == p and near.kind == "near-tie" and near.gap == 0
    assert diagnose(target, inputs, tied, tied, **options).kind == "identical"


def test_denormals_are_flushed_within_the_block_and_the_callers_setting_comes_back():
    from specvlm.numerics import denormals_flushed, flush_denormal_enabled

    tiny = torch.tensor([1e-39], dtype=torch.float32)
    for before in (False, True):
        torch.set_flush_denormal(before)
        try:
            with denormals_flushed():
                assert flush_denormal_enabled() and float(tiny.mul(1.0)[0]) == 0.0
            assert flush_denormal_enabled() == before
        finally:
            torch.set_flush_denormal(False)
