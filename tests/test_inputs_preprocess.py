"""Our torchvision-free preprocessing against values computed independently: shapes, token counts worked out by
hand, pixel values by hand, the patch order by an explicit loop, and per-frame resize / normalise against HF's
PIL image processors (a separate implementation: PIL resampling, numpy arithmetic)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from specvlm.inputs import build_inputs, load_processor, load_video
from specvlm.inputs.testing import CLIP_MEAN, CLIP_STD, index_frames, write_video
from specvlm.inputs.video_processors import OnevisionVideoProcessor, QwenVLVideoProcessor, patchify, smart_resize
from specvlm.tiny import special_ids

IDS = special_ids(1024)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", index_frames(30), fps=10)


def _smooth(h, w, seed=0):
    """A photo-like image (low-frequency waves). PIL's and torch's antialiased bicubic kernels differ by up to 15
    levels on pixel noise at some scales (and torch's uint8 and float paths differ from each other too), but
    agree to a level or two on natural content; only torch's op is what HF's torchvision video path runs."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    r = np.random.default_rng(seed).uniform(0.5, 3, 3)
    waves = [127.5 + 120 * np.sin(2 * np.pi * (r[c] * xx + (c + 1) * yy)) for c in range(3)]
    return np.stack(waves, -1).round().astype(np.uint8)


def _png(tmp_path, h, w, seed=0):
    path = tmp_path / f"img_{h}x{w}.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return Image.open(path).convert("RGB")


# ---- Qwen-VL -----------------------------------------------------------------------------------------------------
def test_smart_resize_matches_hf():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    for h in (20, 28, 47, 70, 200, 333, 1080):
        for w in (20, 56, 90, 300, 641, 1920):
            for lo, hi in ((56 * 56, 112 * 112), (3136, 12845056), (128 * 28 * 28, 768 * 28 * 28)):
                assert smart_resize(h, w, 28, lo, hi) == hf_smart_resize(h, w, 28, lo, hi)


def test_patch_order_by_hand():
    """Every value of every row, against an explicit loop over HF's documented layout."""
    f, h, w, p, m, t = 4, 56, 84, 14, 2, 2
    frames = torch.arange(f * 3 * h * w, dtype=torch.float64).reshape(f, 3, h, w)
    rows, (gt, gh, gw) = patchify(frames, p, m, t)
    assert rows.shape == (gt * gh * gw, 3 * t * p * p) == (48, 1176) and (gt, gh, gw) == (2, 4, 6)
    r = 0
    for ti in range(gt):
        for bh in range(gh // m):  # merge windows in raster order ...
            for bw in range(gw // m):
                for mh in range(m):  # ... then the 2x2 patches inside a window
                    for mw in range(m):
                        y, x = (bh * m + mh) * p, (bw * m + mw) * p
                        expected = frames[ti * t : (ti + 1) * t, :, y : y + p, x : x + p].permute(
                            1, 0, 2, 3
                        )  # c, t, py, px
                        assert torch.equal(rows[r], expected.reshape(-1))
                        r += 1


def test_odd_frame_count_repeats_the_last_frame():
    frames = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 28, 28)
    rows, grid = patchify(frames, 14, 2, 2)
    assert grid == [2, 2, 2]
    second_group = rows[4:].reshape(4, 3, 2, 196)  # rows of temporal group 1: frames 2 and 2 (repeat)
    assert torch.all(second_group == 2)


def test_constant_colour_by_hand():
    """A flat (255, 0, 128) frame pair: each row is channel blocks of (v / 255 - mean) / std."""
    frames = np.zeros((2, 56, 56, 3), np.uint8)
    frames[...] = (255, 0, 128)
    out = QwenVLVideoProcessor(size={"shortest_edge": 3136, "longest_edge": 12544})([frames], return_tensors="pt")
    px, grid = out["pixel_values_videos"], out["video_grid_thw"]
    assert px.shape == (16, 1176) and grid.tolist() == [[1, 4, 4]]
    for c, v in enumerate((255, 0, 128)):
        expected = (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(px[:, c * 392 : (c + 1) * 392], torch.full((16, 392), expected), atol=1e-5)


@pytest.mark.parametrize("h, w", [(56, 84), (112, 112)])
def test_qwen_frames_equal_hf_pil_image_processor_without_resize(h, w):
    """Sizes already on the 28 grid: no resampling, so only the arithmetic differs (float32 rounding)."""
    from transformers import Qwen2VLImageProcessorPil

    img = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    bounds = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    hf = Qwen2VLImageProcessorPil(**bounds)(Image.fromarray(img), return_tensors="pt")
    ours = QwenVLVideoProcessor(**bounds)([np.stack([img, img])], return_tensors="pt")
    assert torch.equal(ours["video_grid_thw"], hf["image_grid_thw"])
    assert torch.allclose(ours["pixel_values_videos"], hf["pixel_values"].float(), atol=2e-6)


@pytest.mark.parametrize("h, w", [(48, 64), (70, 90), (200, 300)])
def test_qwen_frames_close_to_hf_pil_image_processor_with_resize(h, w):
    """With resampling, torch's antialiased bicubic (what torchvision runs) and PIL's agree to 2/255 per pixel."""
    from transformers import Qwen2VLImageProcessorPil

    img = _smooth(h, w)
    bounds = dict(min_pixels=56 * 56, max_pixels=112 * 112)
    hf = Qwen2VLImageProcessorPil(**bounds)(Image.fromarray(img), return_tensors="pt")
    ours = QwenVLVideoProcessor(**bounds)([np.stack([img, img])], return_tensors="pt")
    assert torch.equal(ours["video_grid_thw"], hf["image_grid_thw"])
    diff = (ours["pixel_values_videos"] - hf["pixel_values"].float()).abs()
    assert diff.max() <= 2 / 255 / min(CLIP_STD) + 1e-5
    assert (diff > 1e-4).float().mean() < 0.1


@pytest.mark.parametrize("h, w, grid", [(70, 90, [1, 4, 6]), (200, 300, [1, 6, 8]), (20, 20, [1, 4, 4])])
def test_qwen_image_inputs_by_hand(folders, tmp_path, h, w, grid):
    """smart_resize by hand: 70x90 -> 56x84; 200x300 -> 84x112 (area cap); 20x20 -> 56x56 (area floor)."""
    processor = load_processor(folders["qwen2_5_vl"])
    out = build_inputs(processor, "Describe.", images=[_png(tmp_path, h, w)])
    tokens = grid[1] * grid[2] // 4
    assert out["image_grid_thw"].tolist() == [grid]
    assert out["pixel_values"].shape == (grid[1] * grid[2], 1176)
    ids = out["input_ids"][0]
    assert int((ids == IDS["image"]).sum()) == tokens
    assert torch.equal(out["mm_token_type_ids"][0], (ids == IDS["image"]).long())


def test_qwen_video_inputs_by_hand(folders, clip):
    """8 of 30 frames at 10 fps, 64x48 -> 56x56: grid (4, 4, 4), 16 video tokens between vision start / end,
    second_per_grid_ts = temporal patch / sampled fps = 2 / (8 / 30 * 10) = 0.75."""
    processor = load_processor(folders["qwen2_5_vl"])
    video = load_video(clip, num_frames=8)
    out = build_inputs(processor, "What happens?", video=video)
    assert out["video_grid_thw"].tolist() == [[4, 4, 4]] and out["pixel_values_videos"].shape == (64, 1176)
    assert out["second_per_grid_ts"].tolist() == pytest.approx([0.75])
    ids = out["input_ids"][0].tolist()
    start = ids.index(IDS["vision_start"])
    assert ids[start + 1 : start + 17] == [IDS["video"]] * 16 and ids[start + 17] == IDS["vision_end"]
    assert out["mm_token_type_ids"][0].tolist() == [2 if i == IDS["video"] else 0 for i in ids]
    assert out["attention_mask"].tolist() == [[1] * len(ids)]
    assert "second_per_grid_ts" not in build_inputs(load_processor(folders["qwen2_vl"]), "Hi", video=video)


def test_image_and_video_token_types(folders, clip, tmp_path):
    out = build_inputs(
        load_processor(folders["qwen2_5_vl"]),
        "Compare.",
        images=[_png(tmp_path, 56, 56)],
        video=load_video(clip, num_frames=4),
    )
    ids, types = out["input_ids"][0], out["mm_token_type_ids"][0]
    assert torch.equal(types, (ids == IDS["image"]).long() + 2 * (ids == IDS["video"]).long())
    assert int((types == 1).sum()) == 4 and int((types == 2).sum()) == 2 * 4


# ---- LLaVA-OneVision ---------------------------------------------------------------------------------------------
def test_onevision_video_inputs_by_hand(folders, clip):
    """Frames resized to the 56 px tower: pixel_values_videos (1, F, 3, 56, 56); tokens F * ceil(4 / 2)^2 + 1."""
    processor = load_processor(folders["llava_onevision"])
    for n in (8, 5):
        out = build_inputs(processor, "What happens?", video=load_video(clip, num_frames=n))
        assert out["pixel_values_videos"].shape == (1, n, 3, 56, 56)
        assert int((out["input_ids"] == IDS["video"]).sum()) == n * math.ceil(4 / 2) ** 2 + 1
        assert set(out) == {"input_ids", "attention_mask", "pixel_values_videos"}


def test_onevision_frames_close_to_hf_pil_resize():
    """Our per-frame resize + SigLIP normalisation against HF's PIL backend doing the same steps."""
    from transformers import LlavaOnevisionImageProcessorPil
    from transformers.image_utils import SizeDict

    frames = np.stack([_smooth(48, 64, seed) for seed in range(3)])
    ours = OnevisionVideoProcessor(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)(
        [frames], return_tensors="pt"
    )["pixel_values_videos"][0]
    pil = LlavaOnevisionImageProcessorPil()
    for f, frame in enumerate(frames):
        chw = pil.resize(frame.transpose(2, 0, 1), SizeDict(height=56, width=56), resample=3)
        ref = torch.from_numpy(pil.normalize(pil.rescale(chw, 1 / 255), [0.5] * 3, [0.5] * 3))
        diff = (ours[f] - ref).abs()
        assert diff.max() <= 2 / 255 / 0.5 + 1e-5 and (diff > 1e-4).float().mean() < 0.1
    same = np.random.default_rng(4).integers(0, 256, (2, 56, 56, 3), dtype=np.uint8)  # no resize: exact
    ours = OnevisionVideoProcessor(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)(
        [same], return_tensors="pt"
    )["pixel_values_videos"][0]
    assert torch.allclose(ours, torch.from_numpy(same).permute(0, 3, 1, 2).float() / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize(
    "h, w, patches, tokens",
    [
        (56, 56, 2, 16 + 16 + 4),  # best fit 56x56: base 4x4 + 1 crop of 4x4 + 4 row newlines
        (40, 100, 3, 16 + 32 + 4),  # best fit 56x112 (2 crops): 4x8 grid, no rows unpadded (40 * 8 / 100 -> 3)
        (100, 30, 3, 16 + 16 + 8),  # best fit 112x56: 8x4 grid, columns unpadded to 2: 8x2 + 8 newlines
    ],
)
def test_onevision_anyres_image_by_hand(folders, tmp_path, h, w, patches, tokens):
    out = build_inputs(load_processor(folders["llava_onevision"]), "Describe.", images=[_png(tmp_path, h, w)])
    assert out["pixel_values"].shape == (1, patches, 3, 56, 56)
    assert out["image_sizes"].tolist() == [[h, w]] and out["batch_num_images"].tolist() == [1]
    assert int((out["input_ids"] == IDS["image"]).sum()) == tokens


def test_onevision_several_images_use_base_tiles(folders, tmp_path):
    """Two images in one prompt: HF's multi-image mode, one padded square tile each, 16 + 1 newline tokens each."""
    out = build_inputs(
        load_processor(folders["llava_onevision"]),
        "Compare.",
        images=[_png(tmp_path, 40, 100), _png(tmp_path, 56, 56, seed=1)],
    )
    assert out["batch_num_images"].tolist() == [2] and out["pixel_values"].shape[:3] == (2, 1, 3)
    assert int((out["input_ids"] == IDS["image"]).sum()) == 2 * (16 + 1)


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen2_vl", "llava_onevision", "qwen_plain", "onevision_plain"])
def test_torch_free_processor_is_assembled_from_the_checkpoint_files(folders, monkeypatch, name):
    """Without torchvision the processor never goes through HF's own sub-processor loading (its Auto classes pick
    torchvision video processors; 5.25 renamed the loading hook we used to override), yet holds what HF's loader
    gives: processor_config.json's settings, the chat template (or none), the tokenizer, our video processor and
    HF's PIL image processor."""
    import json

    from transformers.models.auto import image_processing_auto, processing_auto, video_processing_auto

    def refuse(*args, **kwargs):
        raise AssertionError("HF's Auto sub-processor loading was used")

    # the classes themselves: the top-level AutoVideoProcessor is a placeholder that raises without torchvision
    for auto in (
        video_processing_auto.AutoVideoProcessor,
        image_processing_auto.AutoImageProcessor,
        processing_auto.AutoProcessor,
    ):
        monkeypatch.setattr(auto, "from_pretrained", refuse)
    folder = folders[name]
    processor = load_processor(folder, use_torchvision=False)
    onevision = "onevision" in name
    assert type(processor.video_processor) is (OnevisionVideoProcessor if onevision else QwenVLVideoProcessor)
    assert type(processor.image_processor).__name__.endswith("ImageProcessorPil")
    assert processor.tokenizer.convert_tokens_to_ids(processor.image_token) == IDS["image"]
    settings = json.loads((folder / "processor_config.json").read_text())
    assert {key: getattr(processor, key) for key in settings if key != "processor_class"} == {
        key: value for key, value in settings.items() if key != "processor_class"
    }
    if onevision:  # HF's defaults are None: these came from the file
        assert (processor.num_image_tokens, processor.vision_feature_select_strategy) == (16, "full")
    if name.endswith("plain"):
        assert processor.chat_template is None
    else:
        assert processor.chat_template and processor.chat_template == processor.tokenizer.chat_template
