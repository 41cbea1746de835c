"""Parity with HF's real processors (torchvision backends). These run only where torchvision works: on the CPU
machines its wheels are CUDA builds that cannot load, and there `load_processor` uses our implementation, which
the other test_inputs_* files check against independent values and HF's PIL image processors."""

import pytest
import torch
from PIL import Image

from specvlm.inputs import build_inputs, load_processor, load_video, torchvision_usable
from specvlm.inputs.testing import save_tiny_processor

pytestmark = pytest.mark.skipif(
    not torchvision_usable(),
    reason="torchvision is not importable here (its PyPI wheels are CUDA builds that fail to load beside a CPU "
    "torch), so HF's video processors cannot be constructed to compare against",
)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "llava_onevision"])
@pytest.mark.parametrize("num_frames", [8, 5])
def test_video_inputs_equal_hf(tmp_path, media, family, num_frames):
    folder = save_tiny_processor(tmp_path / family, family)
    hf, ours = load_processor(folder, use_torchvision=True), load_processor(folder, use_torchvision=False)
    assert type(hf).__name__ + "WithoutTorchvision" == type(ours).__name__
    hf_video = load_video(
        media / "clip_90x120.mp4",
        sample_indices_fn=lambda md: hf.video_processor.sample_frames(md, num_frames=num_frames),
    )
    our_video = load_video(
        media / "clip_90x120.mp4",
        sample_indices_fn=lambda md: ours.video_processor.sample_frames(md, num_frames=num_frames),
    )
    assert hf_video.indices == our_video.indices
    a = build_inputs(hf, "What happens?", video=hf_video)
    b = build_inputs(ours, "What happens?", video=our_video)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert torch.allclose(a[key], b[key], atol=1e-6), key
        else:
            assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_fps_sampling_equals_hf(tmp_path, family):
    from transformers.video_utils import VideoMetadata

    folder = save_tiny_processor(tmp_path / family, family)
    hf, ours = load_processor(folder, use_torchvision=True), load_processor(folder, use_torchvision=False)
    for total, fps in [(30, 10.0), (300, 30.0), (97, 24.0)]:
        md = VideoMetadata(total_num_frames=total, fps=fps)
        for n in (2, 4, 8, 16):
            assert list(hf.video_processor.sample_frames(md, num_frames=n)) == list(
                ours.video_processor.sample_frames(md, num_frames=n)
            )
        for rate in (0.5, 1.0, 2.0):
            assert list(hf.video_processor.sample_frames(md, fps=rate)) == list(
                ours.video_processor.sample_frames(md, fps=rate)
            )


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_image_inputs_match_hf(tmp_path, media, family):
    """Images: same tokens and layout; pixels within resampling noise (HF's torchvision image backend resizes
    with torch, the PIL backend used without torchvision with PIL)."""
    folder = save_tiny_processor(tmp_path / family, family)
    image = Image.open(media / "picture.png").convert("RGB")
    a = build_inputs(load_processor(folder, use_torchvision=True), "Describe.", images=[image])
    b = build_inputs(load_processor(folder, use_torchvision=False), "Describe.", images=[image])
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            assert a[key].shape == b[key].shape and (a[key] - b[key]).abs().max() < 0.05, key
        else:
            assert torch.equal(a[key], b[key]), key
