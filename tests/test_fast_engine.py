"""The fast engine's pieces: the slot cache, padded fixed-shape steps, reuse across generations, the shared
self-draft session, compiled steps (CPU inductor here; CUDA graphs on a GPU) and their one-time cost."""

import pytest
import torch

from helpers import model, reference
from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.session import BUCKETS, ModelSession, StaticSession, bucket
from specvlm.tiny import make_inputs
from specvlm.tree import ancestor_matrix


def test_buckets_pad_by_at_most_a_third():
    assert [bucket(n) for n in (1, 2, 3, 5, 7, 25, 26, 60, 65, 300)] == [1, 2, 3, 6, 8, 32, 32, 64, 96, 384]
    assert all(bucket(n) >= n and 3 * (bucket(n) - n) <= bucket(n) for n in range(1, 400))   # ≤ 1/3 padding
    assert list(BUCKETS) == sorted(BUCKETS)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_static_steps_equal_eager_steps(family):
    """Prefill, a causal feed, a tree (padded to its bucket) and keeping a path give the logits the eager
    session gives, up to float rounding (attention over the whole slot buffer sums in another order)."""
    adapter = adapter_for(model(family))
    prompt = adapter.prepare(make_inputs(family, "image"))
    eager, static = ModelSession(adapter), StaticSession(adapter)
    for session in (eager, static):
        session.prefill(prompt, reserve=64)
    assert static.cache.capacity >= len(prompt) + 64 and static.cache.capacity % 128 == 0
    outs = []
    tokens = torch.tensor([5, 11, 12, 13, 14, 15])
    parents = torch.tensor([-1, -1, 0, 2, 1])             # root, then two branches: 11-13-14 and 12-15
    for session in (eager, static):
        feed, _ = session.extend(torch.tensor([3, 4]), session.next_position + torch.arange(2))
        prefix = session.length
        depths = torch.tensor([0, 1, 1, 2, 3, 2])
        tree, _ = session.extend(tokens, session.next_position + depths, ancestor_matrix(parents), prefix)
        session.keep(prefix + 1, [prefix + 2, prefix + 5])   # root, 12, 15
        after, _ = session.extend(torch.tensor([16]), torch.tensor([session.next_position]))
        outs.append((feed, tree, after))
        assert session.length == prefix + 4
    for a, b in zip(*outs):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_static_cache_is_reused_and_grows():
    target = model("qwen2_5_vl")
    gen = SpeculativeGenerator(target, "self", tree="chain", num_draft_tokens=3)
    short, long = make_inputs("qwen2_5_vl", "image"), make_inputs("qwen2_5_vl", "video", frames=8)
    gen.generate(**short, do_sample=False, max_new_tokens=8)
    (session,) = gen._sessions                       # "self" without pruning drafts in the target's session
    buffers, capacity = session.cache.layers[0].keys, session.cache.capacity
    gen.generate(**short, do_sample=False, max_new_tokens=8)
    assert session.cache.layers[0].keys is buffers   # same slots, same addresses (what CUDA graphs need)
    out = gen.generate(**long, do_sample=False, max_new_tokens=200, eos_token_id=-1)
    assert session.cache.capacity > capacity and out.token_ids == reference(target, long, do_sample=False,
                                                                           max_new_tokens=200, eos_token_id=-1)


def test_self_drafting_shares_the_target_session_and_prefills_once():
    target = model("llava_onevision")
    inputs = make_inputs("llava_onevision", "video")
    prefills = []
    gen = SpeculativeGenerator(target, "self", tree="static")
    original = StaticSession.prefill

    def counted(self, prompt, reserve=0):
        prefills.append(len(prompt))
        return original(self, prompt, reserve)
    StaticSession.prefill = counted
    try:
        out = gen.generate(**inputs, do_sample=False, max_new_tokens=12)
    finally:
        StaticSession.prefill = original
    assert prefills == [inputs["input_ids"].shape[1]] and len(gen._sessions) == 1
    assert out.stats.draft_forwards >= out.stats.rounds and out.stats.target_forwards == out.stats.rounds + 1
    assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=12)
    # with pruning the draft has its own (shorter) prompt and session
    pruned = SpeculativeGenerator(target, "self", tree="static", pruning="uniform", visual_keep_ratio=0.5)
    assert pruned.generate(**inputs, do_sample=False, max_new_tokens=12).token_ids == out.token_ids
    assert len(pruned._sessions) == 2


def test_engine_and_compile_options():
    target = model("qwen2_5_vl")
    assert SpeculativeGenerator(target, "self").compile is False           # "auto": CUDA only
    assert SpeculativeGenerator(target, "self", engine="eager", compile=True).compile is False
    with pytest.raises(ValueError, match="engine"):
        SpeculativeGenerator(target, "self", engine="turbo")
    with pytest.raises(ValueError, match="compile"):
        SpeculativeGenerator(target, "self", compile="yes")


@pytest.mark.slow
def test_compiled_steps_are_lossless_and_report_their_one_time_cost():
    """torch.compile (inductor's C++ kernels on this CPU) over the fixed-shape steps: the same tokens as
    target.generate; the compile time is reported once, in the call that paid it."""
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "video")
    expected = reference(target, inputs, do_sample=False, max_new_tokens=16)
    gen = SpeculativeGenerator(target, "self", tree="chain", num_draft_tokens=3, compile=True)
    first = gen.generate(**inputs, do_sample=False, max_new_tokens=16)
    second = gen.generate(**inputs, do_sample=False, max_new_tokens=16)
    assert first.token_ids == second.token_ids == expected
    assert first.stats.compile_s > 0 and second.stats.compile_s == 0
    assert "one-time compile" in first.stats.summary() and "compile" not in second.stats.summary()
