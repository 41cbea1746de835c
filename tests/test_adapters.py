"""Adapters over unmodified HF models: prefill and decode steps are bit-identical to stock `generate`, tree
forwards equal sequential decoding along each branch, and the visual layout is what the families produce."""

import copy
import warnings

import pytest
import torch

from specvlm.adapters import adapter_for
from specvlm.engine.session import ModelSession
from specvlm.engine.tree import ancestor_matrix
from specvlm.tiny import FAMILIES, make_inputs

from helpers import model


def hf_steps(target, inputs, n):
    out = target.generate(**inputs, do_sample=False, max_new_tokens=n, output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, inputs["input_ids"].shape[1] :].tolist(), [step[0] for step in out.logits]


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_steps_are_bit_identical_to_generate(family, kind):
    target = model(family)
    inputs = make_inputs(family, kind)
    tokens, logits = hf_steps(target, inputs, 4)
    session = ModelSession(adapter_for(target))
    first, _ = session.prefill(0, session.adapter.prepare(inputs))
    assert torch.equal(first[0], logits[0])
    for i in range(3):
        step, _ = session.extend(torch.tensor([[tokens[i]]]), torch.tensor([session.next_positions]))
        assert torch.equal(step[0, 0], logits[i + 1]), f"decode step {i + 1} differs (positions?)"


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_mrope_positions_are_stock(family):
    target = model(family)
    inputs = make_inputs(family, "video", frames=6)
    target.generate(**inputs, do_sample=False, max_new_tokens=2)
    prompt = adapter_for(target).prepare(inputs)
    stock, delta = target.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
    )
    assert torch.equal(prompt.positions, stock)
    assert prompt.next_position - len(prompt) == int(target.model.rope_deltas) == int(delta) < 0
    assert prompt.positions.shape == (3, 1, len(prompt))


def test_without_mm_token_type_ids_we_follow_stock_1d_fallback():
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "video")
    del inputs["mm_token_type_ids"]
    _, logits = hf_steps(target, inputs, 2)
    adapter = adapter_for(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompt = adapter.prepare(inputs)
    assert any("mm_token_type_ids" in str(w.message) for w in caught)
    first, _ = ModelSession(adapter).prefill(0, prompt)
    assert torch.equal(first[0], logits[0]) and prompt.next_position == len(prompt)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_tree_forward_equals_sequential_decoding(family):
    """One forward over a tree (mask + depth positions) gives, at every node, what decoding its path one token at
    a time gives; after keeping one path, the cache continues exactly like the sequential one."""
    target = model(family)
    inputs = make_inputs(family, "image")
    adapter = adapter_for(target)
    prompt = adapter.prepare(inputs)
    root = 5
    tokens = torch.tensor([11, 12, 13, 14, 15])
    parents = torch.tensor([-1, -1, 0, 2, 1])  # two branches: 11-13-14 and 12-15
    tree_session = ModelSession(adapter)
    tree_session.prefill(0, prompt)
    prefix = tree_session.lengths[0]
    depths = torch.tensor([0, 1, 1, 2, 3, 2])
    logits, _ = tree_session.extend(
        torch.cat([torch.tensor([root]), tokens])[None],
        (tree_session.next_positions[0] + depths)[None],
        visible=ancestor_matrix(parents)[None],
        prefix=[prefix],
    )

    def sequential(ids):
        seq = ModelSession(adapter)
        seq.prefill(0, prompt)
        out, _ = seq.extend(torch.tensor([ids]), (seq.next_positions[0] + torch.arange(len(ids)))[None])
        return out[0, -1]

    for node, path in ((-1, []), (0, [11]), (2, [11, 13]), (3, [11, 13, 14]), (1, [12]), (4, [12, 15])):
        assert torch.allclose(logits[0, node + 1], sequential([root] + path), atol=1e-5), f"node {node}"
    # keep root + branch 12-15 and continue with token 16
    tree_session.keep([prefix + 1], [[prefix + 1 + 1, prefix + 1 + 4]])
    after, _ = tree_session.extend(torch.tensor([[16]]), torch.tensor([tree_session.next_positions]))
    assert tree_session.lengths == [prefix + 4]
    assert torch.allclose(after[0, -1], sequential([root, 12, 15, 16]), atol=1e-5)


@pytest.mark.parametrize(
    "family,kind,grid,tail",
    [
        ("llava_onevision", "video", (4, 2, 2), 1),
        ("llava_onevision", "image", None, 0),
        ("llava_next_video", "video", (4, 2, 2), 0),
        ("qwen2_5_vl", "video", (2, 4, 6), 0),
        ("qwen2_5_vl", "image", (1, 4, 6), 0),
        ("qwen2_vl", "video", (2, 4, 6), 0),
    ],
)
def test_visual_spans(family, kind, grid, tail):
    inputs = make_inputs(family, kind, prompt_len=5)
    prompt = adapter_for(model(family)).prepare(inputs)
    (span,) = prompt.spans
    token = model(family).config.image_token_id if kind == "image" else model(family).config.video_token_id
    where = (inputs["input_ids"][0] == token).nonzero().flatten()
    assert (span.modality, span.start, span.length) == (kind, int(where[0]), where.numel())
    assert span.grid == grid and span.tail == tail
    if grid:
        assert grid[0] * grid[1] * grid[2] + tail == span.length
    assert int(prompt.visual_mask.sum()) == where.numel()


def test_placeholder_mismatch_is_a_clear_error():
    inputs = make_inputs("qwen2_5_vl", "image")
    inputs["input_ids"] = inputs["input_ids"][:, :-4]  # drop suffix and the last placeholders' tail
    inputs["input_ids"] = torch.cat([inputs["input_ids"][:, :6], inputs["input_ids"][:, 8:]], 1)
    inputs["mm_token_type_ids"] = inputs["mm_token_type_ids"][:, : inputs["input_ids"].shape[1]]
    with pytest.raises(ValueError, match="placeholder tokens"):
        adapter_for(model("qwen2_5_vl")).prepare(inputs)


def test_each_model_has_one_adapter_until_its_embeddings_change():
    """adapter_for builds a model's adapter once (loading, checks, generator and drafters share it), and builds a
    new one when the model's embedding or output layer was replaced (resize_token_embeddings)."""
    target = copy.deepcopy(model("qwen2_5_vl"))  # resized below: not the process's shared tiny model
    first = adapter_for(target)
    assert adapter_for(target) is first and adapter_for(model("qwen2_5_vl", seed=1)) is not first
    target.resize_token_embeddings(target.get_input_embeddings().num_embeddings + 8)
    rebuilt = adapter_for(target)
    assert rebuilt is not first and rebuilt.embeddings is target.get_input_embeddings()
