"""Pruning inside the engine: the verifier-attention capture, the pruned draft prefill, and losslessness for every
method, family and drafter (pruning changes speed, never output)."""

import copy
import functools

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.adapters.capture import AttentionCapture
from specvlm.drafters.pruning import METHODS
from specvlm.engine.session import ModelSession
from specvlm.tiny import FAMILIES, make_inputs

from helpers import model, reference


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_eager_maps_and_leaves_prefill_untouched(family, attn):
    target = model(family, attn=attn)
    adapter = adapter_for(target)
    prompt = adapter.prepare(make_inputs(family, "video", suffix_len=7))
    visual = prompt.visual_mask.nonzero().flatten()
    start = int(visual.max()) + 1
    plain = ModelSession(adapter)
    logits, hidden = plain.prefill(0, prompt)
    captured = ModelSession(adapter)
    with AttentionCapture(adapter, start, visual) as capture:
        logits2, hidden2 = captured.prefill(0, prompt)
    assert torch.equal(logits, logits2) and torch.equal(hidden, hidden2)
    for a, b in zip(plain.caches[0].layers, captured.caches[0].layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert adapter.decoder.config._attn_implementation == attn  # restored
    eager = model(family, attn="eager")
    maps = (
        adapter_for(eager)
        .decoder(inputs_embeds=prompt.embeds, position_ids=prompt.positions, output_attentions=True)
        .attentions
    )
    expected = torch.stack([m[0, :, start:][..., visual] for m in maps]).float().mean(dim=(0, 1, 2))
    assert torch.allclose(capture.scores, expected, atol=1e-6)
    assert capture.scores.shape == (visual.numel(),) and float(capture.scores.min()) >= 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_capture_of_a_chunk_that_follows_a_cache(family, attn):
    """The issue's two-chunk route: prefix (up to the last visual token) prefilled plainly, then only the text
    under capture. The capture then sees query rows offset by the cache length; its scores must still be the
    eager maps' and the chunk's logits those of a one-shot prefill."""
    target = model(family, attn=attn)
    adapter = adapter_for(target)
    prompt = adapter.prepare(make_inputs(family, "video", suffix_len=7))
    visual = prompt.visual_mask.nonzero().flatten()
    start = int(visual.max()) + 1
    cache = adapter.new_cache()
    adapter.forward(prompt.embeds[:, :start], prompt.positions[..., :start], cache)
    with AttentionCapture(adapter, start, visual) as capture:
        logits, _ = adapter.forward(prompt.embeds[:, start:], prompt.positions[..., start:], cache)
    assert cache.get_seq_length() == len(prompt)
    whole, _ = adapter.forward(prompt.embeds, prompt.positions, adapter.new_cache())
    assert torch.allclose(logits, whole[:, start:], atol=1e-5)
    maps = (
        adapter_for(model(family, attn="eager"))
        .decoder(inputs_embeds=prompt.embeds, position_ids=prompt.positions, output_attentions=True)
        .attentions
    )
    expected = torch.stack([m[0, :, start:][..., visual] for m in maps]).float().mean(dim=(0, 1, 2))
    assert torch.allclose(capture.scores, expected, atol=1e-6)
    assert capture.rows == len(maps) * maps[0].shape[1] * (len(prompt) - start)  # text rows only, each once


@functools.cache
def small_draft(family):
    return model(family, seed=1, hidden=32, layers=1)


@pytest.mark.parametrize("draft", ["small", "self"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_drafts_are_lossless(family, method, draft):
    target = model(family)
    inputs = make_inputs(family, "video", frames=6)
    expected = reference(target, inputs, do_sample=False, max_new_tokens=16)
    gen = SpeculativeGenerator(
        target,
        small_draft(family) if draft == "small" else "self",
        tree="chain",
        num_draft_tokens=3,
        pruning=method,
        visual_keep_ratio=0.25,
    )
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=16)
    assert out.token_ids == expected
    s = out.stats
    assert s.kept_visual_tokens == int(s.visual_tokens * 0.25)
    assert s.draft_prompt_tokens == s.target_prompt_tokens - s.visual_tokens + s.kept_visual_tokens


@pytest.mark.parametrize("tree", ["static", "dynamic"])
@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_pruning_with_trees_and_images(family, kind, tree):
    target = model(family)
    inputs = make_inputs(family, kind)
    expected = reference(target, inputs, do_sample=False, max_new_tokens=16)
    for positions in ("original", "contiguous"):
        gen = SpeculativeGenerator(
            target, "self", tree=tree, pruning="specvlm", visual_keep_ratio=0.1, draft_positions=positions
        )
        assert gen.generate(**inputs, do_sample=False, max_new_tokens=16).token_ids == expected


@pytest.mark.parametrize("ratio", [0.01, 1.0])
@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_keeping_no_or_every_visual_token_is_lossless(family, kind, ratio):
    """keep 0.01: K = 0 (the tiny prompts have < 100 visual tokens), a text-only draft prompt; keep 1.0: every
    token kept, i.e. the unpruned prompt through the pruning path."""
    target = model(family)
    inputs = make_inputs(family, kind)
    expected = reference(target, inputs, do_sample=False, max_new_tokens=16)
    for draft in ("self", "small"):
        for positions in ("original", "contiguous"):
            gen = SpeculativeGenerator(
                target,
                small_draft(family) if draft == "small" else "self",
                tree="chain",
                num_draft_tokens=3,
                pruning="specvlm",
                visual_keep_ratio=ratio,
                draft_positions=positions,
            )
            out = gen.generate(**inputs, do_sample=False, max_new_tokens=16)
            assert out.token_ids == expected, (draft, positions)
            s = out.stats
            assert 0 < s.visual_tokens < 100
            assert s.kept_visual_tokens == (s.visual_tokens if ratio == 1.0 else 0)
            assert s.draft_prompt_tokens == s.target_prompt_tokens - s.visual_tokens + s.kept_visual_tokens


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_scoring_time_is_reported_only_when_scores_are_captured(family):
    target = model(family)
    inputs = make_inputs(family, "video")
    timed = SpeculativeGenerator(target, "self", tree="chain", pruning="specvlm", visual_keep_ratio=0.25)
    s = timed.generate(**inputs, do_sample=False, max_new_tokens=4).stats
    assert 0 < s.scoring_s < s.prefill_s and s.as_dict()["scoring_s"] == s.scoring_s
    assert f"scoring {s.scoring_s * 1e3:.1f}ms" in s.summary()
    plain = SpeculativeGenerator(target, "self", tree="chain", pruning="uniform", visual_keep_ratio=0.25)
    s = plain.generate(**inputs, do_sample=False, max_new_tokens=4).stats
    assert s.scoring_s == 0.0 and s.as_dict()["scoring_s"] == 0.0 and s.kept_visual_tokens > 0
    s = SpeculativeGenerator(target, "self", tree="chain").generate(**inputs, do_sample=False, max_new_tokens=4).stats
    assert s.scoring_s == 0.0 and "visual tokens" not in s.summary()


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_draft_prefill_is_the_pruned_prompt(family):
    target = model(family)
    inputs = make_inputs(family, "video", frames=8)
    gen = SpeculativeGenerator(
        target, copy.deepcopy(target), tree="chain", pruning="uniform", visual_keep_ratio=0.5, engine="eager"
    )  # a DynamicCache knows its own length
    began = {}
    add_row = gen.drafter.add_row

    def spy(row, ctx):
        tokens = add_row(row, ctx)
        session = gen.drafter.session
        began.update(
            cache=session.caches[row].get_seq_length(),
            length=session.lengths[row],
            offset=session.offsets[row],
            prompt=ctx.target_prompt,
            keep=ctx.visual_keep,
        )
        return tokens

    gen.drafter.add_row = spy
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=4)
    prompt, keep = began["prompt"], began["keep"]
    pruned = len(prompt) - int(prompt.visual_mask.sum()) + keep.numel()
    assert began["cache"] == began["length"] == pruned == out.stats.draft_prompt_tokens
    # Qwen keeps stock M-RoPE ids by default: generation continues where the target's does
    if family == "qwen2_5_vl":
        assert began["length"] + began["offset"] == prompt.next_position
    else:
        assert began["offset"] == 0


def test_qwen_original_positions_are_the_kept_tokens_ids():
    target = model("qwen2_5_vl")
    adapter = adapter_for(target)
    prompt = adapter.prepare(make_inputs("qwen2_5_vl", "video"))
    keep = torch.tensor([0, 5, 17, 30])
    pruned = prompt.keep_visual(keep, contiguous=False, positions_of=adapter.positions)
    visual = prompt.visual_mask.nonzero().flatten()
    kept_rows = pruned.visual_mask.nonzero().flatten()
    assert torch.equal(pruned.positions[:, :, kept_rows], prompt.positions[:, :, visual[keep]])
    assert pruned.next_position == prompt.next_position
    contiguous = prompt.keep_visual(keep, contiguous=True, positions_of=adapter.positions)
    assert torch.equal(contiguous.positions[0, 0], torch.arange(len(contiguous)))


def test_bad_pruning_options():
    target = model("qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown pruning"):
        SpeculativeGenerator(target, "self", pruning="fastv")
    with pytest.raises(ValueError, match="needs a pruning method"):
        SpeculativeGenerator(target, "self", visual_keep_ratio=0.2)
    with pytest.raises(ValueError, match="visual_keep_ratio"):
        SpeculativeGenerator(target, "self", pruning="uniform", visual_keep_ratio=0.0)
