"""Prompts (chat template, tokenizer template, documented fallback) and the CLI hooks with every bad input."""

import argparse
import copy
from types import SimpleNamespace

import pytest
import torch

from specvlm.inputs import (
    InputError,
    add_input_arguments,
    build_inputs,
    inputs_from_args,
    load_processor,
    render_prompt,
)
from specvlm.inputs.testing import save_tiny_processor
from specvlm.tiny import special_ids

IDS = special_ids(1024)
QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
    "<|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ONEVISION_PROMPT = "<|im_start|>user <image><video>\nWhat happens?<|im_end|><|im_start|>assistant\n"


@pytest.fixture
def configs(tiny):
    return {family: tiny(family).config for family in ("qwen2_5_vl", "llava_onevision")}


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    return parser.parse_args(list(argv))


def _error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---- prompts -----------------------------------------------------------------------------------------------------
def test_chat_templates(folders):
    assert render_prompt(load_processor(folders["qwen2_5_vl"]), "What happens?", 1, 1) == QWEN_PROMPT
    assert render_prompt(load_processor(folders["llava_onevision"]), "What happens?", 1, 1) == ONEVISION_PROMPT


def test_tokenizer_template_when_the_processor_has_none(folders):
    processor = load_processor(folders["qwen2_5_vl"])
    processor.chat_template = None
    assert render_prompt(processor, "What happens?", 1, 1) == QWEN_PROMPT


CONVERSATION = (
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And now?"}]},
)


def test_conversations_render_through_the_template_or_chatml(folders):
    """A conversation is the template's rendering (HF's apply_chat_template on it), media where their parts are;
    without any template, the same turns in ChatML. Malformed conversations are one-line errors."""
    qwen = load_processor(folders["qwen2_5_vl"])
    expected = qwen.apply_chat_template(list(CONVERSATION), add_generation_prompt=True, tokenize=False)
    assert render_prompt(qwen, None, 1, 1, CONVERSATION) == expected and "A cat." in expected
    plain = load_processor(folders["qwen_plain"])
    assert render_prompt(plain, None, 1, 1, CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nLook:<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>And now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "but 2 images and 1 videos were given" in _error(lambda: render_prompt(qwen, None, 2, 1, CONVERSATION))
    assert "end with a user" in _error(lambda: render_prompt(qwen, None, 1, 1, CONVERSATION[:3]))
    assert "role" in _error(lambda: render_prompt(qwen, None, 0, 0, ({"role": "tool", "content": "x"},)))
    assert "no text" in _error(
        lambda: render_prompt(qwen, None, 1, 0, ({"role": "user", "content": [{"type": "image"}]},))
    )


def test_fallback_without_any_template(folders, media):
    qwen = load_processor(folders["qwen_plain"])
    assert not qwen.chat_template and not qwen.tokenizer.chat_template
    assert render_prompt(qwen, "Why?", 1, 1) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
        "<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    onevision = load_processor(folders["onevision_plain"])
    assert render_prompt(onevision, "Why?", 0, 1) == (
        "<|im_start|>user\n<video>\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt(onevision, "Why?") == "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    out = inputs_from_args(
        _args("--image", str(media / "picture.png"), "--prompt", "Why?"),
        folders["qwen_plain"],
        SimpleNamespace(
            model_type="qwen2_5_vl",
            image_token_id=IDS["image"],
            video_token_id=IDS["video"],
            get_text_config=lambda: SimpleNamespace(),
        ),
    )
    assert int((out["input_ids"] == IDS["image"]).sum()) == 6


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(folders, prompt):
    assert "empty" in _error(lambda: render_prompt(load_processor(folders["qwen2_5_vl"]), prompt))


def test_placeholder_typed_in_the_prompt(folders):
    assert "cannot build the model inputs" in _error(
        lambda: build_inputs(load_processor(folders["llava_onevision"]), "what is <video> ?")
    )


# ---- CLI hooks ---------------------------------------------------------------------------------------------------
def test_arguments():
    args = _args("--image", "a.png", "--image", "b.jpg", "--video", "v.mp4", "--prompt", "Q", "--max-pixels", "9")
    assert args.image == ["a.png", "b.jpg"] and args.video == "v.mp4" and args.prompt == "Q"
    assert args.num_frames is None and args.fps is None and args.max_pixels == 9
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", required=True)  # a caller's own --prompt is kept
    add_input_arguments(parser)
    assert parser.parse_args(["--prompt", "x"]).prompt == "x"


def test_video_and_image_inputs(folders, configs, media):
    messages, report = [], {}
    args = _args(
        "--video", str(media / "clip_30.mp4"), "--image", str(media / "picture.png"), "--prompt", "What happens?"
    )
    out = inputs_from_args(args, folders["qwen2_5_vl"], configs["qwen2_5_vl"], progress=messages.append, report=report)
    assert out["video_grid_thw"].tolist() == [[4, 4, 4]]  # default 8 frames
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert report["frames"] == 8 and report["visual_tokens"] == 16 + 6 and report["images"] == 1
    assert report["prompt_tokens"] == out["input_ids"].shape[1] and report["decode_s"] >= 0
    assert any("decoded 8 of 30 frames" in m for m in messages)


def test_fps_and_num_frames(folders, configs, media):
    clip = str(media / "clip_30.mp4")
    out = inputs_from_args(
        _args("--video", clip, "--prompt", "Q", "--fps", "2"), folders["qwen2_5_vl"], configs["qwen2_5_vl"]
    )
    assert out["video_grid_thw"].tolist() == [[3, 4, 4]]  # Qwen's fps rule: 6 frames
    assert out["second_per_grid_ts"].tolist() == pytest.approx([1.0])  # 2 / (6 / 30 * 10)
    out = inputs_from_args(
        _args("--video", clip, "--prompt", "Q", "--num-frames", "3"),
        folders["llava_onevision"],
        configs["llava_onevision"],
    )
    assert out["pixel_values_videos"].shape[1] == 3


def test_max_pixels(folders, configs, media):
    big = str(media / "big.png")
    out = inputs_from_args(_args("--image", big, "--prompt", "Q"), folders["qwen2_5_vl"], configs["qwen2_5_vl"])
    assert out["image_grid_thw"].tolist() == [[1, 6, 8]]
    out = inputs_from_args(
        _args("--image", big, "--prompt", "Q", "--max-pixels", "3136"), folders["qwen2_5_vl"], configs["qwen2_5_vl"]
    )
    assert out["image_grid_thw"].tolist() == [[1, 2, 4]]  # smart_resize(200, 300, max 3136) = 28 x 56
    assert "below the processor's minimum" in _error(
        lambda: inputs_from_args(
            _args("--image", big, "--prompt", "Q", "--max-pixels", "100"), folders["qwen2_5_vl"], configs["qwen2_5_vl"]
        )
    )
    assert "Qwen" in _error(
        lambda: inputs_from_args(
            _args("--image", big, "--prompt", "Q", "--max-pixels", "5000"),
            folders["llava_onevision"],
            configs["llava_onevision"],
        )
    )


def test_draft_inputs_only_when_the_draft_preprocesses_differently(folders, configs, media):
    args = _args("--image", str(media / "big.png"), "--prompt", "Q")
    same = inputs_from_args(
        args, folders["qwen2_5_vl"], configs["qwen2_5_vl"], folders["qwen2_5_vl"], configs["qwen2_5_vl"]
    )
    assert "draft_inputs" not in same
    other = inputs_from_args(
        args, folders["qwen2_5_vl"], configs["qwen2_5_vl"], folders["qwen_small"], configs["qwen2_5_vl"]
    )
    assert other["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert other["draft_inputs"]["image_grid_thw"].tolist() == [[1, 2, 4]]


def test_bad_inputs(folders, configs, media, tmp_path):
    qwen, qcfg = folders["qwen2_5_vl"], configs["qwen2_5_vl"]
    clip = str(media / "clip_30.mp4")
    run = lambda *argv, folder=qwen, config=qcfg, **kw: inputs_from_args(_args(*argv), folder, config, **kw)  # noqa
    assert "empty" in _error(lambda: run("--video", clip, "--prompt", " "))
    assert "empty" in _error(lambda: run("--video", clip))
    for n in ("0", "-2"):
        assert "--num-frames" in _error(lambda n=n: run("--video", clip, "--prompt", "Q", "--num-frames", n))
    assert "--fps" in _error(lambda: run("--video", clip, "--prompt", "Q", "--fps", "0"))
    assert "not both" in _error(lambda: run("--video", clip, "--prompt", "Q", "--fps", "1", "--num-frames", "4"))
    assert "does not exist" in _error(lambda: run("--video", str(tmp_path / "no.mp4"), "--prompt", "Q"))
    assert "does not exist" in _error(lambda: run("--image", str(tmp_path / "no.png"), "--prompt", "Q"))
    assert "directory" in _error(lambda: run("--video", str(tmp_path), "--prompt", "Q"))
    (tmp_path / "x.mpg").write_bytes(b"\0" * 64)
    assert "unsupported format" in _error(lambda: run("--video", str(tmp_path / "x.mpg"), "--prompt", "Q"))
    (tmp_path / "bad.mp4").write_bytes(b"\0" * 64)
    assert "cannot read video" in _error(lambda: run("--video", str(tmp_path / "bad.mp4"), "--prompt", "Q"))
    assert "does not exist" in _error(lambda: run("--video", clip, "--prompt", "Q", folder=tmp_path / "nomodel"))


def test_model_cannot_take_the_input(folders, configs, media):
    clip, png = str(media / "clip_30.mp4"), str(media / "picture.png")
    video_only = SimpleNamespace(model_type="qwen2_5_vl", image_token_id=None, video_token_id=IDS["video"])
    assert "video-only" in _error(
        lambda: inputs_from_args(_args("--image", png, "--prompt", "Q"), folders["qwen2_5_vl"], video_only)
    )
    image_only = SimpleNamespace(model_type="qwen2_5_vl", image_token_id=IDS["image"], video_token_id=None)
    assert "image-only" in _error(
        lambda: inputs_from_args(_args("--video", clip, "--prompt", "Q"), folders["qwen2_5_vl"], image_only)
    )
    llama = SimpleNamespace(model_type="llama")
    assert "'llama'" in _error(lambda: inputs_from_args(_args("--prompt", "Q"), folders["qwen2_5_vl"], llama))


def test_a_draft_of_another_family_reads_the_request_its_own_way(folders, configs, tiny, media, tmp_path):
    """A LLaVA-OneVision draft for a Qwen2.5-VL target: its own chat template, placeholders and pixels (its own
    `draft_inputs`), also when its vocabulary differs (the generator bridges the two, `drafters/vocab.py`)."""
    args = _args("--video", str(media / "clip_30.mp4"), "--prompt", "Q")
    inputs = inputs_from_args(
        args, folders["qwen2_5_vl"], configs["qwen2_5_vl"], folders["llava_onevision"], configs["llava_onevision"]
    )
    draft_inputs = inputs["draft_inputs"]
    assert "pixel_values_videos" in draft_inputs and "video_grid_thw" not in draft_inputs  # LLaVA-OV's tensors
    assert not torch.equal(draft_inputs["input_ids"], inputs["input_ids"])
    view = inputs_from_args(
        _args("--video", str(media / "clip_30.mp4"), "--num-frames", "4", "--draft-num-frames", "2", "--prompt", "Q"),
        folders["qwen2_5_vl"],
        configs["qwen2_5_vl"],
        folders["llava_onevision"],
        configs["llava_onevision"],
    )  # a cheaper view for a draft of another family: 2 frames (LLaVA-OV's pixels: batch, frames, C, H, W)
    assert (
        draft_inputs["pixel_values_videos"].shape[1] == 8 and view["draft_inputs"]["pixel_values_videos"].shape[1] == 2
    )
    assert "add --draft DIR" in _error(
        lambda: inputs_from_args(
            _args("--video", str(media / "clip_30.mp4"), "--draft-num-frames", "2", "--prompt", "Q"),
            folders["qwen2_5_vl"],
            configs["qwen2_5_vl"],
        )
    )
    other = tiny("llava_onevision", vocab=2048)
    other_dir = save_tiny_processor(tmp_path / "draft", "llava_onevision", other)
    own = inputs_from_args(args, folders["qwen2_5_vl"], configs["qwen2_5_vl"], other_dir, other.config)
    assert (own["draft_inputs"]["input_ids"] == special_ids(2048)["video"]).any()  # its own placeholder id


def test_draft_with_another_tokenizer(folders, configs, tiny, media, tmp_path):
    draft = tiny("qwen2_5_vl", vocab=2048)  # its own folder is consistent, but not with the target
    draft_dir = save_tiny_processor(tmp_path / "draft", "qwen2_5_vl", draft)
    assert "must share a tokenizer" in _error(
        lambda: inputs_from_args(
            _args("--video", str(media / "clip_30.mp4"), "--prompt", "Q"),
            folders["qwen2_5_vl"],
            configs["qwen2_5_vl"],
            draft_dir,
            draft.config,
        )
    )


def test_tokenizer_that_does_not_match_the_model(folders, tiny, media):
    other = tiny("qwen2_5_vl", vocab=2048).config  # placeholder ids 2042.. vs the folder's 1018..
    assert "do not belong together" in _error(
        lambda: inputs_from_args(
            _args("--video", str(media / "clip_30.mp4"), "--prompt", "Q"), folders["qwen2_5_vl"], other
        )
    )
    assert "holds a qwen2_5_vl checkpoint" in _error(
        lambda: load_processor(folders["qwen2_5_vl"], family="llava_onevision")
    )


def test_more_visual_tokens_than_the_context(folders, configs, media):
    small = copy.deepcopy(configs["llava_onevision"])
    small.get_text_config().max_position_embeddings = 100
    args = _args("--video", str(media / "clip_30.mp4"), "--prompt", "Q", "--num-frames", "30")
    message = _error(lambda: inputs_from_args(args, folders["llava_onevision"], small))
    assert "max_position_embeddings" in message and "(121 visual)" in message  # 30 * 4 + 1
    args.num_frames = 8  # 33 visual tokens fit, but not with 300 new tokens
    inputs_from_args(args, folders["llava_onevision"], small)
    args.max_new_tokens = 300
    assert "300 new tokens" in _error(lambda: inputs_from_args(args, folders["llava_onevision"], small))
