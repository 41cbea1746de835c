"""Online logit distillation: it learns (loss down, τ up on a learnable tiny target), it is deterministic and
resumable, the loss is masked to the response, the target is never touched, and the CLI pair works."""

import argparse
import io
import json
import sys

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.drafters.eagle import EagleHead
from specvlm.errors import SpecVLMError
from specvlm.train import Example, TrainConfig, add_train_arguments, as_example, distill_loss, run_from_args, train_head

from helpers import peaky, trained, training_data, training_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("llava_onevision", "qwen2_5_vl")


def mean_tau(target, head, prompts, **options) -> float:
    taus = []
    for inputs in prompts:
        gen = SpeculativeGenerator(
            target, head, tree="dynamic", tree_top_k=10, tree_total_tokens=60, tree_depth=6, **options
        )
        taus.append(gen.generate(**inputs, do_sample=False, max_new_tokens=24).stats.mean_accepted_tokens)
    return sum(taus) / len(taus)


@pytest.mark.parametrize("family", FAMILIES)
def test_200_steps_reduce_the_loss_and_raise_tau(family):
    """Measured (seeds 0-4, both families): loss 1.17-1.21 -> 0.48-0.51 (mean of first / last 10 steps); τ of the
    untrained head 0.00-0.04, of the trained one 2.25-2.62 (dynamic tree 10/60/6, the 8 training prompts, 24
    tokens). Asserted with wide margins. τ is measured on the prompts the head was distilled on: random tiny
    targets do not generalise in 200 steps (held-out τ rises only ~0.03 -> ~0.1), real ones are what benchmarks
    measure."""
    target, result = peaky(family), trained(family)
    summary = result.as_dict()
    assert result.steps == 200 and len(result.losses) == 200
    assert summary["loss_last10"] < 0.6 * summary["loss_first10"]
    untrained = mean_tau(target, EagleHead.init_for(target, seed=0), training_prompts(family))
    tau = mean_tau(target, result.head, training_prompts(family))
    assert untrained < 0.3 and tau > untrained + 1.5, (untrained, tau)


def small_run(family="qwen2_5_vl", **options):
    target = peaky(family)
    head = EagleHead.init_for(target, compressor=options.pop("compressor", None), seed=0)
    config = dict(steps=6, lr=3e-3, progress=False, seed=0)
    config.update(options)
    return train_head(target, training_data(family), head, **config)


def same_weights(a, b) -> bool:
    return all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_training_is_deterministic_for_a_seed():
    a = small_run(feature_noise=0.1, compressor=dict(mode="select", heads=4))
    b = small_run(feature_noise=0.1, compressor=dict(mode="select", heads=4))
    c = small_run(feature_noise=0.1, compressor=dict(mode="select", heads=4), seed=1)
    assert a.losses == b.losses and same_weights(a.head, b.head)
    assert a.losses != c.losses
    assert sum(a.picks.values()) == 6


def test_cached_target_outputs_give_the_same_run():
    options = dict(feature_noise=0.1, steps=10, compressor=dict(mode="select", heads=4, budget_weight=0.1))
    a, b = small_run(**options), small_run(cache_target=True, **options)
    assert a.losses == b.losses and same_weights(a.head, b.head)


def test_resume_continues_exactly(tmp_path):
    options = dict(feature_noise=0.1, compressor=dict(mode="select", heads=4, budget_weight=0.1))
    straight = small_run(**options)
    small_run(steps=3, out_dir=str(tmp_path), checkpoint_every=3, **options)
    assert (tmp_path / "checkpoint-0000003" / "trainer_state.pt").is_file()
    resumed = small_run(out_dir=str(tmp_path), checkpoint_every=3, resume=True, **options)
    assert resumed.steps == 6 and resumed.losses == straight.losses
    assert same_weights(resumed.head, straight.head)
    loaded = EagleHead.from_pretrained(tmp_path, peaky("qwen2_5_vl"))
    assert same_weights(loaded, straight.head)
    # a finished run (final save only, no periodic checkpoints) extends to more steps just as exactly
    small_run(steps=3, out_dir=str(tmp_path / "final"), **options)
    extended = small_run(out_dir=str(tmp_path / "final"), resume=True, **options)
    assert extended.losses == straight.losses and same_weights(extended.head, straight.head)


def test_gradient_accumulation_equals_a_larger_batch():
    a = small_run(steps=3, batch_size=2, grad_accum=1, clip_grad=None)
    b = small_run(steps=3, batch_size=1, grad_accum=2, clip_grad=None)
    for k, v in a.head.state_dict().items():
        assert torch.allclose(v, b.head.state_dict()[k], atol=1e-6)


def test_target_is_frozen_and_untouched():
    target = peaky("llava_onevision")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    small_run("llava_onevision", steps=2)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    assert all(p.grad is None for p in target.parameters())


def test_loss_is_masked_to_the_response():
    example = training_data("qwen2_5_vl")[0]
    head = EagleHead.init_for(peaky("qwen2_5_vl"), seed=0)
    length = example.response.numel()
    start = int(example.response.nonzero()[0])
    assert distill_loss(head, example).tokens == length - start
    late = as_example((example.inputs, length - 3))  # the last 3 tokens only
    assert distill_loss(head, late).tokens == 3
    positions = as_example({"inputs": example.inputs, "response": [length - 1]})
    assert distill_loss(head, positions).tokens == 1
    with pytest.raises(ValueError, match="at least one response token"):
        Example(example.inputs, torch.zeros(length, dtype=torch.bool))


def test_progress_bar_shows_loss_and_acceptance(capsys, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    small_run(steps=2, progress=True)
    err = terminal.getvalue()
    assert "train-head" in err and "loss=" in err and "acc=" in err and "tau=" in err
    monkeypatch.undo()
    small_run(steps=2, progress=True)  # stderr is no terminal here: no bar (logs get no carriage returns)
    assert "train-head" not in capsys.readouterr().err


def test_bad_options():
    with pytest.raises(TypeError, match="unknown options"):
        small_run(step=3)
    with pytest.raises(ValueError, match=">= 1"):
        small_run(steps=0)
    with pytest.raises(SpecVLMError, match="ran out"):
        train_head(peaky("qwen2_5_vl"), iter(training_data("qwen2_5_vl")[:2]), steps=3, progress=False)


def parse(*argv):
    parser = argparse.ArgumentParser(prog="specvlm train-head")
    add_train_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_pair(tmp_path, capsys):
    data = tmp_path / "examples.pt"
    torch.save([{"inputs": e.inputs, "response": e.response} for e in training_data("qwen2_5_vl")[:3]], data)
    out = tmp_path / "head"
    args = parse(
        "--tiny-smoke",
        "qwen2_5_vl",
        "--tiny-examples",
        "2",
        "--data",
        str(data),
        "--steps",
        "4",
        "--lr",
        "1e-3",
        "--out",
        str(out),
        "--compressor",
        "select",
        "--budget-weight",
        "0.1",
        "--json",
    )
    assert run_from_args(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and sum(summary["picks"].values()) == 4
    head = EagleHead.from_pretrained(out, peaky("qwen2_5_vl"))
    assert head.compressor is not None and head.compressor.mode == "select"
    with pytest.raises(SpecVLMError, match="needs --data"):
        run_from_args(parse("--target", str(tmp_path), "--out", str(tmp_path / "new")))
    with pytest.raises(SpecVLMError, match="1..5"):
        run_from_args(
            parse(
                "--tiny-smoke",
                "qwen2_5_vl",
                "--tiny-examples",
                "1",
                "--out",
                str(tmp_path / "new"),
                "--compressor",
                "concat",
                "--compressor-branches",
                "conv:9",
            )
        )
    assert TrainConfig().betas == (0.9, 0.95) and TrainConfig().weight_decay == 0.0


def test_gate_credit_term_lowers_a_branch_whose_loss_was_above_the_mean():
    from specvlm.drafters.compressor import VisualCompressor

    torch.manual_seed(0)
    c = VisualCompressor(16, "select", branches=["pool:2", "text"]).train()
    q = torch.randn(16)
    with torch.enable_grad():
        c([torch.randn(6, 16)], q)
        assert float(c.credit_loss(1.0).detach()) == 0.0 and c.loss_count == 1  # first example: no baseline yet
        before = dict(c.picks)
        c([torch.randn(6, 16)], q)
        chosen = next(i for i, name in enumerate(c.names) if c.picks[name] != before.get(name, 0))
        c.credit_loss(3.0).backward()  # this loss was above the mean (1.0)
    grad = c.gate.bias.grad
    assert grad[chosen] > 0 and grad[1 - chosen] < 0  # descent lowers the branch that did worse than average
