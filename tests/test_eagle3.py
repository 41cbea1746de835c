"""EAGLE-3 heads (issue 22): the layer's math and the target layers it reads, pinned against hand computations; the
two published file layouts (SpecForge / SGLang, vLLM speculators) written from a tiny head and read back into the
same function; training with the training-time test; greedy identity across families x inputs x trees x engines,
χ² for sampling; every bad head one line. (The CLI: test_cli_train_head.py.)"""

import functools
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.drafters import is_eagle_head, load_drafter
from specvlm.drafters.eagle3 import Eagle3Head, default_features
from specvlm.drafters.eagle3_files import _shape
from specvlm.errors import SpecVLMError
from specvlm.tiny import make_inputs
from specvlm.train import train_head
from specvlm.train.data import frequent_tokens
from specvlm.train.loss import ttt_mask

from helpers import (
    VOCAB,
    chi2_pvalues,
    model,
    peaky,
    reference,
    speculative_samples,
    training_data,
    training_prompts,
)

pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("qwen2_5_vl", "llava_onevision", "qwen2_vl")


@functools.cache
def trained3(family: str) -> Eagle3Head:
    """An EAGLE-3 head over 200 draft tokens, distilled for 200 steps (3 unrolled steps) on the peaky target's own
    greedy answers."""
    target = peaky(family)
    vocab = frequent_tokens(training_data(family), 200, adapter_for(target).vocab_size)
    head = Eagle3Head.init_for(target, vocab, seed=0, dtype=torch.float32)
    train_head(target, training_data(family), head, steps=200, lr=3e-3, ttt_steps=3, seed=0, progress=False)
    return head


# ---- what the head computes ------------------------------------------------------------------------------------------
def test_the_target_features_are_the_inputs_of_the_named_layers():
    target = model("qwen2_5_vl", layers=4)
    adapter = adapter_for(target)
    inputs_of = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kw, i=i: inputs_of.__setitem__(i, kw.get("hidden_states", args[0] if args else None)),
            with_kwargs=True,
        )
        for i, layer in enumerate(adapter.decoder.layers)
    ]
    try:
        ids = torch.randint(0, 1000, (1, 6))
        _, features = adapter.forward(
            adapter.embed(ids), adapter.positions(torch.arange(6)[None]), adapter.new_cache(), features=(1, 3)
        )
    finally:
        for hook in hooks:
            hook.remove()
    hidden = adapter.hidden_size
    assert torch.equal(features[..., :hidden], inputs_of[1]) and torch.equal(features[..., hidden:], inputs_of[3])


def test_which_layers_each_format_names():
    """SpecForge names the layers whose output is read, speculators (vLLM) those whose input is read; both default
    to HF hidden_states (2, L/2, L-3) (EAGLE's reference code)."""
    adapter = SimpleNamespace(text_config=SimpleNamespace(num_hidden_layers=28), vocab_size=152064)
    layer = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=1)
    assert _shape(layer, "specforge", adapter, "h").features == (2, 14, 25) == default_features(28)
    ids = {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 13, 24]}}
    assert _shape({**layer, **ids}, "specforge", adapter, "h").features == (2, 14, 25)
    speculators = {"transformer_layer_config": layer, "eagle_aux_hidden_state_layer_ids": [2, 14, 25]}
    assert _shape(speculators, "speculators", adapter, "h").features == (2, 14, 25)
    assert _shape({"transformer_layer_config": layer}, "speculators", adapter, "h").norm_before_residual  # vLLM's


@pytest.mark.parametrize("variant", ["specforge", "norm_before_residual", "carry_normed"])
def test_one_token_through_the_layer_is_eagle3s_formula(variant):
    """With one token and nothing cached, attention returns o_proj of each query head's KV head's v_proj(x), whatever
    the positions, so the whole step can be written out by hand: h = r + o(v([n_e(e) ‖ n_g(g)])),
    h += mlp(n_post(h)), r = g (or n_g(g))."""
    target = model("llava_onevision", layers=4)
    head = Eagle3Head.init_for(target, torch.arange(0, 1000, 3), seed=3, dtype=torch.float32)
    object.__setattr__(head.shape, "norm_before_residual", variant == "norm_before_residual")
    object.__setattr__(head.shape, "carry_normed", variant == "carry_normed")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # norms away from 1
        features = torch.randn(1, 1, 3 * head.shape.hidden_size)
        token = torch.tensor([[17]])
        rows = head.feed_rows(token, features)
        h = head.run_layer(rows, head.stepper.positions(torch.tensor([[5]])))
        layer = head.layer
        e, g = head.embed(token), head.fc(features)
        x = torch.cat([layer.input_layernorm(e), layer.hidden_norm(g)], -1)
        r = layer.hidden_norm(g) if variant == "norm_before_residual" else g
        shape = head.shape
        groups = shape.num_attention_heads // shape.num_key_value_heads  # each KV head serves this many queries
        values = layer.self_attn.v_proj(x).view(1, 1, shape.num_key_value_heads, shape.head_dim)
        expected = r + layer.self_attn.o_proj(values.repeat_interleave(groups, dim=2).reshape(1, 1, -1))
        expected = expected + layer.mlp(layer.post_attention_layernorm(expected))
        torch.testing.assert_close(h, expected)
        torch.testing.assert_close(head.carried(h), head.norm(h) if variant == "carry_normed" else h)
        logits = head.target_space(head.draft_logits(h))
        best = int(head.lm_head(head.norm(h)).argmax())
        assert int(logits.argmax()) == best * 3  # draft id d is target id d + d2t[d] = 3d here
        assert torch.isneginf(logits[..., 1]).all()  # ids outside the draft vocabulary get q = 0


def test_training_time_test_sees_the_prefix_and_its_own_chain():
    visible = ttt_mask([3, 2])
    assert visible.int().tolist() == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 0, 0, 1, 0],  # step 1, entry 0: the prefix up to entry 0, and itself
        [1, 1, 0, 0, 1],
    ]


# ---- files -----------------------------------------------------------------------------------------------------------
def as_speculators(src, dst, norm_before_residual: bool = False) -> None:
    """Rewrite a head saved in SpecForge's layout as vLLM's speculators would publish it: nested layer config,
    input-of-layer ids, layers.0.* names, and the verifier's embeddings included."""
    config = json.loads((src / "config.json").read_text())
    layer = {
        k: config[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "rms_norm_eps",
            "vocab_size",
            "num_hidden_layers",
            "rope_theta",
        )
    }
    dst.mkdir(parents=True)
    (dst / "config.json").write_text(
        json.dumps(
            dict(
                architectures=["Eagle3Speculator"],
                speculators_model_type="eagle3",
                transformer_layer_config=dict(layer, model_type="llama"),
                draft_vocab_size=config["draft_vocab_size"],
                norm_before_residual=norm_before_residual,
                eagle_aux_hidden_state_layer_ids=[
                    i + 1 for i in config["eagle_config"]["eagle_aux_hidden_state_layer_ids"]
                ],
                speculators_config={"algorithm": "eagle3", "verifier": {"name_or_path": "target"}},
            )
        )
    )
    weights = {k.replace("midlayer.", "layers.0."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    return weights


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_both_published_layouts_read_back_into_the_same_head(family, tmp_path):
    target = model(family, layers=4)
    head = Eagle3Head.init_for(target, torch.arange(0, 1000, 2), seed=5, dtype=torch.float32)
    head.save_pretrained(tmp_path / "specforge")
    config = json.loads((tmp_path / "specforge" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["target_model_type"] == family
    saved = load_file(str(tmp_path / "specforge" / "model.safetensors"))
    assert {
        "fc.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.self_attn.q_proj.weight",
        "norm.weight",
        "lm_head.weight",
        "d2t",
        "t2d",
    } <= saved.keys() and not any("embed" in k for k in saved)
    assert saved["midlayer.self_attn.q_proj.weight"].shape[1] == 2 * head.shape.hidden_size
    assert saved["fc.weight"].shape[1] == 3 * head.shape.hidden_size and int(saved["t2d"].sum()) == 500
    weights = as_speculators(tmp_path / "specforge", tmp_path / "speculators")
    weights["embed_tokens.weight"] = adapter_for(target).embeddings.weight.detach().clone()
    save_file(weights, str(tmp_path / "speculators" / "model.safetensors"))
    rows = torch.randn(1, 5, 2 * head.shape.hidden_size)
    positions = head.stepper.positions(torch.arange(5)[None])
    for folder in ("specforge", "speculators"):
        assert is_eagle_head(tmp_path / folder)
        loaded = load_drafter(str(tmp_path / folder), target, kind="head")
        assert isinstance(loaded, Eagle3Head) and loaded.target_features == head.target_features
        assert torch.equal(loaded.run_layer(rows, positions), head.run_layer(rows, positions))
        assert torch.equal(loaded.draft_to_target, head.draft_to_target)
        assert torch.equal(loaded.embed(torch.tensor([[3, 9]])), head.embed(torch.tensor([[3, 9]])))


def test_bad_heads_are_one_line_errors(tmp_path):
    target = model("qwen2_5_vl", layers=4)
    head = Eagle3Head.init_for(target, seed=0)
    head.save_pretrained(tmp_path / "good")

    def broken(name, config=None, weights=None):
        folder = tmp_path / name
        folder.mkdir()
        c = json.loads((tmp_path / "good" / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**c, **(config or {})}))
        w = load_file(str(tmp_path / "good" / "model.safetensors"))
        save_file({**w, **(weights or {})}, str(folder / "model.safetensors"))
        return str(folder)

    cases = {
        broken("other_family", {"target_model_type": "llava_onevision"}): "trained for a llava_onevision target",
        broken("wide", {"target_hidden_size": 4096}): "target features of width 4096",
        broken("qwen3", weights={"midlayer.self_attn.q_norm.weight": torch.ones(16)}): "Qwen3-style",
        broken("layers", {"eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 40]}}): "target has 4",
        broken("d2t", weights={"d2t": torch.full((1024,), 5000)}): "outside the target's",
    }
    for folder, message in cases.items():
        with pytest.raises(SpecVLMError, match=message):
            load_drafter(folder, target, kind="head")
    (tmp_path / "good" / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(SpecVLMError, match="cannot read the EAGLE-3 weights"):
        load_drafter(str(tmp_path / "good"), target, kind="head")
    with pytest.raises(SpecVLMError, match="EAGLE-3 head reads the target's features at every prompt position"):
        SpeculativeGenerator(target, head, pruning="specvlm").generate(**make_inputs("qwen2_5_vl"), max_new_tokens=2)


# ---- lossless --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["eager", "fast"])
@pytest.mark.parametrize("tree", ["chain", "static", "dynamic"])
@pytest.mark.parametrize("family", FAMILIES)
def test_trained_head_is_lossless(family, tree, engine):
    target, head = peaky(family), trained3(family)
    gen = SpeculativeGenerator(target, head, tree=tree, engine=engine)
    for inputs in (training_prompts(family)[0], make_inputs(family, "image", prompt_len=6, seed=99)):
        out = gen.generate(**inputs, do_sample=False, max_new_tokens=24)
        assert out.token_ids == reference(target, inputs, do_sample=False, max_new_tokens=24)


def test_training_teaches_the_head_the_targets_answers():
    """Not a speed claim: the trained head's proposals are accepted several at a time (an untrained one's never)."""
    target = peaky("qwen2_5_vl")
    out = SpeculativeGenerator(target, trained3("qwen2_5_vl"), tree="dynamic").generate(
        **training_prompts("qwen2_5_vl")[0], do_sample=False, max_new_tokens=24
    )
    assert out.stats.mean_accepted_tokens >= 2


def test_a_batch_drafts_each_row_with_its_own_features():
    from specvlm.tiny import make_batch

    target, head = peaky("qwen2_5_vl"), trained3("qwen2_5_vl")
    rows = [training_prompts("qwen2_5_vl")[i] for i in (0, 2)]
    batch = make_batch(rows, "qwen2_5_vl", pad_id=target.generation_config.pad_token_id)
    out = SpeculativeGenerator(target, head).generate(**batch, do_sample=False, max_new_tokens=16)
    for b, row in enumerate(rows):
        assert out.token_ids[b] == reference(target, row, do_sample=False, max_new_tokens=16)


@pytest.mark.slow
def test_sampling_follows_the_target_distribution():
    target = model("qwen2_5_vl", vocab=VOCAB, init=0.5, hidden=32, layers=1)
    prompts = [make_inputs("qwen2_5_vl", "video", vocab=VOCAB, seed=s) for s in range(4)]
    from specvlm.train import greedy_examples

    head = Eagle3Head.init_for(target, seed=0, dtype=torch.float32)
    train_head(
        target, greedy_examples(target, prompts, max_new_tokens=8), head, steps=60, lr=3e-3, ttt_steps=2, progress=False
    )
    samples, totals = speculative_samples(target, head, prompts[0], "chain", 1.0, 1.0, runs=1000)
    assert totals["accepted"] > 50
    assert min(chi2_pvalues(target, prompts[0], 1.0, 1.0, samples)) > 1e-3
