"""The fast engine's pieces: the slot cache, padded fixed-shape steps, reuse across generations, the shared
self-draft session, compiled steps (CPU inductor here; CUDA graphs on a GPU) and their one-time cost."""

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.engine.session import BUCKETS, ModelSession, StaticSession, bucket
from specvlm.engine.tree import ancestor_matrix, node_depths
from specvlm.tiny import make_inputs

from helpers import model, reference


def test_buckets_pad_by_at_most_a_third():
    assert [bucket(n) for n in (1, 2, 3, 5, 7, 25, 26, 60, 65, 300)] == [1, 2, 3, 6, 8, 32, 32, 64, 96, 384]
    assert all(bucket(n) >= n and 3 * (bucket(n) - n) <= bucket(n) for n in range(1, 400))  # ≤ 1/3 padding
    assert list(BUCKETS) == sorted(BUCKETS)


FEEDS = ([3, 4, 7], [8, 0, 0])  # a ragged causal feed: 3 and 1 real tokens
COUNTS = (3, 1)
TOKENS = ([5, 11, 12, 13, 14, 15], [9, 21, 22, 23, 24, 25])
PARENTS = ([-1, -1, 0, 2, 1], [-1, 0, 1, 0, 3])  # row 0: 11-13-14 and 12-15; row 1: 21-22 and 21-24-25
KEPT = ([2, 5], [4])  # row 0 keeps root, 12, 15; row 1 root, 23


def _steps(session, prompts, which=(0, 1)):
    """Rows with prompts of different lengths (`which`: whose feed, tree and kept path each row gets) through:
    prefill, a ragged causal feed, a tree per row (different shapes, one mask per row), keeping a different path
    per row, and one more token. Returns each row's real outputs."""
    for row, prompt in enumerate(prompts):
        session.prefill(row, prompt, reserve=64)
    pick = lambda table: torch.tensor([table[w] for w in which])
    counts = [COUNTS[w] for w in which]
    fed, _ = session.extend(pick(FEEDS), torch.tensor(session.next_positions)[:, None] + torch.arange(3), counts=counts)
    prefix = list(session.lengths)
    parents = pick(PARENTS)
    depths = torch.cat([torch.zeros(len(which), 1, dtype=torch.long), node_depths(parents)], 1)
    tree, _ = session.extend(
        pick(TOKENS),
        torch.tensor(session.next_positions)[:, None] + depths,
        visible=ancestor_matrix(parents),
        prefix=prefix,
    )
    kept = [KEPT[w] for w in which]
    session.keep([p + 1 for p in prefix], [[p + k for k in row] for p, row in zip(prefix, kept)])
    after, _ = session.extend(
        torch.tensor([[16 + 10 * w] for w in which]), torch.tensor(session.next_positions)[:, None]
    )
    assert session.lengths == [p + 2 + len(row) for p, row in zip(prefix, kept)]
    return [(fed[b, : counts[b]], tree[b], after[b]) for b in range(len(which))]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_batched_static_steps_equal_eager_rows_and_single_rows(family):
    """The batched slot cache (one forward for both rows) gives each row the logits the eager session gives (a
    DynamicCache per row, run alone) and a one-row static session gives, up to float rounding (attention over the
    whole slot buffer sums in another order): per-row lengths, positions (Qwen's M-RoPE offsets), masks and kept
    paths do not leak between rows."""
    adapter = adapter_for(model(family))
    prompts = [adapter.prepare(make_inputs(family, "image")), adapter.prepare(make_inputs(family, "video", seed=3))]
    assert len(prompts[0]) != len(prompts[1])
    eager, static = _steps(ModelSession(adapter), prompts), _steps(StaticSession(adapter), prompts)
    alone = [_steps(StaticSession(adapter), [prompt], [row])[0] for row, prompt in enumerate(prompts)]
    for row in range(2):
        for ours, theirs, single in zip(static[row], eager[row], alone[row]):
            assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)
            assert torch.allclose(ours, single, atol=1e-5)


def test_slot_cache_grows_without_losing_rows():
    adapter = adapter_for(model("qwen2_5_vl"))
    session = StaticSession(adapter)
    short, long = (
        adapter.prepare(make_inputs("qwen2_5_vl", "image")),
        adapter.prepare(make_inputs("qwen2_5_vl", "video", frames=16)),
    )
    session.prefill(0, short, reserve=8)
    keys = session.cache.layers[0].keys[0, :, : len(short)].clone()
    session.prefill(1, long, reserve=300)  # a second, longer row: more rows and more slots
    assert session.cache.rows >= 2 and session.cache.capacity >= len(long) + 300
    assert torch.equal(session.cache.layers[0].keys[0, :, : len(short)], keys)
    session.move_row(1, 0)
    session.drop_rows(1)
    assert session.lengths == [len(long)]


def test_static_cache_is_reused_and_grows():
    target = model("qwen2_5_vl")
    gen = SpeculativeGenerator(target, "self", tree="chain", num_draft_tokens=3)
    short, long = make_inputs("qwen2_5_vl", "image"), make_inputs("qwen2_5_vl", "video", frames=8)
    gen.generate(**short, do_sample=False, max_new_tokens=8)
    ((_, session),) = gen._sessions  # "self" without pruning drafts in the target's session
    buffers, capacity = session.cache.layers[0].keys, session.cache.capacity
    gen.generate(**short, do_sample=False, max_new_tokens=8)
    assert session.cache.layers[0].keys is buffers  # same slots, same addresses (what CUDA graphs need)
    out = gen.generate(**long, do_sample=False, max_new_tokens=200, eos_token_id=-1)
    assert session.cache.capacity > capacity and out.token_ids == reference(
        target, long, do_sample=False, max_new_tokens=200, eos_token_id=-1
    )


def test_self_drafting_shares_the_target_session_and_prefills_once():
    target = model("llava_onevision")
    inputs = make_inputs("llava_onevision", "video")
    prefills = []
    gen = SpeculativeGenerator(target, "self", tree="static")
    original = StaticSession.prefill

    def counted(self, row, prompt, reserve=0):
        prefills.append(len(prompt))
        return original(self, row, prompt, reserve)

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
    assert SpeculativeGenerator(target, "self").compile is False  # "auto": CUDA only
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


def test_the_cuda_compile_is_accepted_by_torch_compile():
    """On CUDA the steps compile with CUDA graphs. torch.compile checks its arguments when called, here on a CPU:
    it refuses `mode` next to `options`, which the first GPU run met (RuntimeError before any step ran)."""
    from specvlm.engine.session import _compiled

    class Stepper:
        def _step(self, x):
            return x + 1

    for device_type in ("cuda", "cpu"):
        step = _compiled(Stepper()._step, device_type)
        assert callable(step)
    assert step(torch.ones(2, device="cpu")).tolist() == [2.0, 2.0]


def test_rows_grow_their_slots_during_generation(monkeypatch):
    """A row's prefill reserves slots for RESERVE_AHEAD new tokens only (a huge max_new_tokens must not allocate
    every row's cache up to it); a longer answer grows the cache mid-generation, every row keeping its entries."""
    import specvlm.engine.batch
    from specvlm.tiny import make_batch, special_ids

    monkeypatch.setattr(specvlm.engine.batch, "RESERVE_AHEAD", 4)
    family = "llava_onevision"  # (5.3's Qwen2.5-VL generate differs on some prompts: DESIGN, transformers range)
    target = model(family)
    rows = [make_inputs(family, "image"), make_inputs(family, "video", prompt_len=9, seed=2)]
    gen = SpeculativeGenerator(target, model(family, seed=1, hidden=32, layers=1), tree="static")
    out = gen.generate(
        **make_batch(rows, family, special_ids(1024)["pad"]), do_sample=False, max_new_tokens=150, eos_token_id=-1
    )
    assert out.token_ids == [
        reference(target, row, do_sample=False, max_new_tokens=150, eos_token_id=-1) for row in rows
    ]
    longest = max(row["input_ids"].shape[1] for row in rows)
    assert all(s.cache.capacity >= longest + 150 for _, s in gen._sessions)
