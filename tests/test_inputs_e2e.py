"""End to end: a self-made mp4 and PNG -> processor inputs -> tiny models of both families; speculative output
equals the target's own greedy output token for token."""

import argparse

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.inputs import add_input_arguments, inputs_from_args
from specvlm.inputs.testing import save_tiny_processor

from helpers import reference

FAMILIES = ("qwen2_5_vl", "llava_onevision", "qwen2_vl")


def _inputs(media, folder, config, *extra, **kw):
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    args = parser.parse_args(
        [
            "--video",
            str(media / "clip.mp4"),
            "--image",
            str(media / "picture.png"),
            "--prompt",
            "What happens in the video?",
            "--num-frames",
            "6",
            *extra,
        ]
    )
    return inputs_from_args(args, folder, config, **kw)


@pytest.mark.parametrize("family", FAMILIES)
def test_self_speculation_equals_target_greedy(tiny, media, tmp_path, family):
    target = tiny(family)
    inputs = _inputs(media, save_tiny_processor(tmp_path / family, family, target), target.config)
    expected = reference(target, inputs, max_new_tokens=16, do_sample=False)
    out = SpeculativeGenerator(target, "self").generate(**inputs, max_new_tokens=16, do_sample=False)
    assert out.token_ids == expected and len(expected) == 16


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_draft_with_its_own_processor(tiny, media, tmp_path, family):
    """A smaller draft whose processor differs (Qwen: a lower max_pixels; LLaVA-OV: another checkpoint folder with
    the same settings, so it shares the target's inputs)."""
    target, draft = tiny(family), tiny(family, seed=1, hidden=32)
    target_dir = save_tiny_processor(tmp_path / "target", family, target)
    draft_dir = save_tiny_processor(
        tmp_path / "draft", family, draft, **({"max_pixels": 56 * 56} if family == "qwen2_5_vl" else {})
    )
    inputs = _inputs(media, target_dir, target.config, draft_dir=draft_dir, draft_config=draft.config)
    assert ("draft_inputs" in inputs) == (family == "qwen2_5_vl")
    plain = {k: v for k, v in inputs.items() if k != "draft_inputs"}
    expected = reference(target, plain, max_new_tokens=16, do_sample=False)
    out = SpeculativeGenerator(target, draft).generate(**inputs, max_new_tokens=16, do_sample=False)
    assert out.token_ids == expected


def test_text_of_the_answer_decodes(tiny, media, tmp_path):
    from specvlm.inputs import load_processor

    target = tiny("qwen2_5_vl")
    folder = save_tiny_processor(tmp_path / "q", "qwen2_5_vl", target)
    inputs = _inputs(media, folder, target.config)
    processor = load_processor(folder)
    out = SpeculativeGenerator(target, "self", processor=processor).generate(
        **inputs, max_new_tokens=8, do_sample=False
    )
    assert out.text == processor.tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert torch.is_tensor(inputs["input_ids"]) and inputs["input_ids"].dtype == torch.long
