"""Batches of prompts -> per-prompt inputs (`VLMAdapter.split_batch`), the way HF's batched forward hands visual
inputs to rows: each row of a left-padded processor batch comes back as exactly its own processor output (pads
kept), so the engine can prefill it alone; `tiny.make_batch` is the inverse used to build the batches."""

import pytest
import torch
from test_device_discipline import RequireDevice

from specvlm.adapters import adapter_for
from specvlm.engine.request import left_padding, strip_left_padding
from specvlm.tiny import FAMILIES, make_batch, make_inputs, special_ids

from helpers import model

PAD = special_ids(1024)["pad"]
QWEN = ("qwen2_5_vl", "qwen2_vl")


def mixed_rows(family: str) -> list[dict]:
    """Different prompt lengths and kinds: anyres / grid-varied images, a text-only row, several images with a
    video in one row, and a video row (Qwen's videos with another frame count; LLaVA stacks videos, so not there)."""
    qwen = family in QWEN
    big = dict(grid=(4, 6)) if qwen else dict(image_size=(56, 112))  # LLaVA: 3 patches
    pair = dict(grid=[(4, 4), (8, 6)]) if qwen else dict(image_size=(112, 112))
    return [
        make_inputs(family, "image", prompt_len=5, seed=1, **big),
        make_inputs(family, "text", prompt_len=2, seed=2),
        make_inputs(family, "image+video", images=2, seed=3, **pair),
        make_inputs(family, "video", prompt_len=9, seed=4, frames=6 if qwen else 4),
    ]


def images_only_rows(family: str) -> list[dict]:
    sizes = (
        [dict(grid=(8, 12)), dict(grid=(4, 4)), dict(grid=[(4, 6), (6, 4), (4, 4)])]
        if family in QWEN
        else [dict(image_size=(112, 112)), dict(image_size=(56, 56)), dict(image_size=(112, 56))]
    )
    return [
        make_inputs(family, "image", prompt_len=3 + b, seed=10 + b, images=3 if b == 2 else 1, **size)
        for b, size in enumerate(sizes)
    ]


def text_first_rows(family: str) -> list[dict]:
    return [
        make_inputs(family, "text", prompt_len=7, seed=20),
        make_inputs(family, "video", seed=21),
        make_inputs(family, "video", prompt_len=1, seed=22),
    ]


def left_padded(tokens: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    pads = torch.full((1, length - tokens.shape[1]), fill, dtype=tokens.dtype)
    return torch.cat([pads, tokens], 1)


def assert_row_equals(got: dict, row: dict, length: int, pad_id: int):
    """`got` is `row` with its token tensors left-padded to `length` (pad_id in input_ids, zeros elsewhere)."""
    assert got.keys() == row.keys()
    for key, value in row.items():
        token = value.shape == row["input_ids"].shape
        expected = left_padded(value, length, pad_id if key == "input_ids" else 0) if token else value
        assert got[key].dtype == value.dtype and torch.equal(got[key], expected), key


@pytest.mark.parametrize("rows_of", [mixed_rows, images_only_rows, text_first_rows])
@pytest.mark.parametrize("family", FAMILIES)
def test_split_batch_gives_back_each_row_with_its_left_padding(family, rows_of):
    rows = rows_of(family)
    batch = make_batch(rows, family, PAD)
    with RequireDevice() as mode:
        split = adapter_for(model(family)).split_batch(batch)
    assert not mode.violations, sorted(mode.violations)
    length = batch["input_ids"].shape[1]
    assert len(split) == len(rows)
    for got, row in zip(split, rows):
        assert_row_equals(got, row, length, PAD)
        assert left_padding(got["attention_mask"]) == length - row["input_ids"].shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_of_one_comes_back_as_it_is(family):
    inputs = make_inputs(family, "image")
    (row,) = adapter_for(model(family)).split_batch(inputs)
    assert row is inputs


def test_rows_keep_dtype_and_are_views_of_the_batch():
    rows = mixed_rows("llava_onevision")
    batch = make_batch(rows, "llava_onevision", PAD)
    batch["pixel_values"] = batch["pixel_values"].half()
    split = adapter_for(model("llava_onevision")).split_batch(batch)
    assert split[0]["pixel_values"].dtype == torch.float16
    assert split[2]["pixel_values"].untyped_storage().data_ptr() == batch["pixel_values"].untyped_storage().data_ptr()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_split_row_generates_and_prepares_like_the_row_alone(family):
    """The strong check: HF's own generate on a split row (left padding and all) gives the row's tokens, and the
    adapter's prompt of the unpadded row is bit-identical to the row's."""
    target = model(family)
    adapter = adapter_for(target)
    rows = mixed_rows(family)
    split = adapter.split_batch(make_batch(rows, family, PAD))
    with torch.no_grad():
        for b, (got, row) in enumerate(zip(split, rows)):
            new = target.generate(**got, do_sample=False, max_new_tokens=8)[0, got["input_ids"].shape[1] :]
            alone = target.generate(**row, do_sample=False, max_new_tokens=8)[0, row["input_ids"].shape[1] :]
            assert new.tolist() == alone.tolist(), f"row {b}"
            unpadded = strip_left_padding(got, left_padding(got["attention_mask"]))
            mine, theirs = adapter.prepare(unpadded), adapter.prepare(row)
            assert torch.equal(mine.embeds, theirs.embeds) and torch.equal(mine.positions, theirs.positions), b
            assert mine.next_position == theirs.next_position and mine.spans == theirs.spans


@pytest.mark.parametrize("family", FAMILIES)
def test_make_batch_is_what_hf_batched_generate_reads(family):
    """HF's batched generate on a `make_batch` batch predicts, for every row, what it predicts for the row alone:
    the batch is laid out the way HF's model consumes it (pads, visual order, patch padding, batch_num_images).
    Logits, not token strings: the padded batch runs other matmul shapes, so only rounding may differ."""
    target = model(family)
    rows = mixed_rows(family)
    first = lambda inputs: target.generate(
        **inputs, do_sample=False, max_new_tokens=1, output_logits=True, return_dict_in_generate=True
    ).logits[0]  # (B, V)
    batched = first(make_batch(rows, family, PAD))
    for b, row in enumerate(rows):
        assert torch.allclose(batched[b], first(row)[0], atol=1e-5), f"row {b}"


@pytest.mark.parametrize("family", ["llava_onevision", "llava_next_video"])
def test_cut_patch_padding_gives_the_padded_slices_features(family):
    """A row's pixel_values lose the batch's patch padding (its own processor output has none); the model reads
    the same patches either way, so the features are bit-identical to those of the row's padded slice."""
    adapter = adapter_for(model(family))
    rows = images_only_rows(family) + mixed_rows(family)[2:3]
    batch = make_batch(rows, family, PAD)
    split = adapter.split_batch(batch)
    first, cuts = 0, 0
    for got in split:
        images = got["pixel_values"].shape[0]
        padded = dict(got, pixel_values=batch["pixel_values"][first : first + images])
        first += images
        cuts += padded["pixel_values"].shape[1] > got["pixel_values"].shape[1]
        cut, kept = adapter.visual_features(got)["image"], adapter.visual_features(padded)["image"]
        assert all(torch.equal(a, b) for a, b in zip(cut, kept, strict=True))
    assert cuts >= 2


# ---- real processors (torchvision-free here): their batch splits into their per-prompt outputs -----------------
@pytest.fixture(scope="module")
def images_and_clips():
    """In-memory PIL images of three sizes and two bundled sample clips (not the shared `media` folder's files)."""
    from PIL import Image

    from specvlm.testbed.assets import sample_clips

    images = [
        Image.new("RGB", size, colour)
        for size, colour in (((60, 40), (200, 10, 10)), ((30, 50), (10, 200, 10)), ((40, 40), (1, 2, 3)))
    ]
    return images, [clip["video"] for clip in sample_clips()[:2]]


@pytest.mark.parametrize("family,nested", [("qwen2_5_vl", True), ("llava_onevision", True), ("llava_onevision", False)])
def test_a_real_processor_batch_splits_into_its_per_prompt_outputs(family, nested, images_and_clips):
    """One list of images per prompt (`nested`, as build_inputs and apply_chat_template pass them) or one flat
    list: LLaVA-OneVision's batch_num_images then has one group per image, every image is anyres, and the rows are
    found by their token counts."""
    from transformers import AutoModelForImageTextToText

    from specvlm.inputs import load_processor, load_video, render_prompt, sampler
    from specvlm.testbed.assets import bundled_pair

    folder = bundled_pair(family)[0]
    processor = load_processor(folder)
    images, clips = images_and_clips
    frames = (4, 4) if family == "llava_onevision" else (4, 6)  # LLaVA stacks a batch's videos
    videos = [
        load_video(path, sample_indices_fn=sampler(n, sample_frames=processor.video_processor.sample_frames))
        for path, n in zip(clips, frames)
    ]
    prompts = [
        ("What is it?", images[:1], []),
        ("Describe both and the clip.", images[1:], videos[:1]),
        ("Hello", [], []),
        ("What happens?", [], videos[1:]),
    ]

    def process(batch, **options):
        """The processor on prompts (question, images, videos), as build_inputs calls it for one."""
        kwargs = dict(text=[render_prompt(processor, q, len(i), len(v)) for q, i, v in batch], return_tensors="pt")
        if any(i for _, i, _ in batch):
            per_prompt = [prompt_images for _, prompt_images, _ in batch]
            kwargs["images"] = per_prompt if nested else [image for group in per_prompt for image in group]
        clips = [v for _, _, vs in batch for v in vs]
        if clips:
            kwargs.update(
                videos=[v.frames for v in clips], video_metadata=[v.metadata for v in clips], do_sample_frames=False
            )
        return dict(processor(**kwargs, **options))

    batch = process(prompts, padding=True, padding_side="left")
    alone = [process([prompt]) for prompt in prompts]
    adapter = adapter_for(AutoModelForImageTextToText.from_pretrained(folder))
    split = adapter.split_batch(batch)
    length = batch["input_ids"].shape[1]
    for got, row in zip(split, alone, strict=True):
        assert_row_equals(got, row, length, processor.tokenizer.pad_token_id)
    stripped = strip_left_padding(split[1], left_padding(split[1]["attention_mask"]))
    assert torch.equal(adapter.prepare(stripped).embeds, adapter.prepare(alone[1]).embeds)


# ---- what does not add up is a one-line ValueError ---------------------------------------------------------------
def _drop_image_placeholders(batch, row, n):
    """Turn the last n image placeholders of `row` into text tokens."""
    ids = batch["input_ids"]
    where = (ids[row] == special_ids(1024)["image"]).nonzero().flatten()[-n:]
    ids[row, where] = 7
    return batch


def _with(batch, **changes):
    return {**batch, **changes}


ERRORS = {
    "mask rows": ("qwen2_5_vl", lambda b: _with(b, attention_mask=b["attention_mask"][:2]), "attention_mask has shape"),
    "placeholders short": ("qwen2_5_vl", lambda b: _drop_image_placeholders(b, 2, 4), "row 2 has .* image placeholder"),
    "placeholders missing": ("qwen2_5_vl", lambda b: _drop_image_placeholders(b, 2, 16), "take only the first 1"),
    "grid vs patches": ("qwen2_5_vl", lambda b: _with(b, pixel_values=b["pixel_values"][:-4]), "gives .* patches"),
    "no pixels": ("qwen2_5_vl", lambda b: {k: v for k, v in b.items() if k != "pixel_values"}, "but no pixel_values"),
    "timing per video": (
        "qwen2_5_vl",
        lambda b: _with(b, second_per_grid_ts=b["second_per_grid_ts"][:1]),
        "second_per_grid_ts has 1 entries for 2 videos",
    ),
    "unknown per-row key": (
        "qwen2_5_vl",
        lambda b: _with(b, image_sizes=torch.ones(4, 2, dtype=torch.long)),
        "cannot split 'image_sizes'",
    ),
    "batch_num_images short": (
        "llava_onevision",
        lambda b: _with(b, batch_num_images=b["batch_num_images"][:1]),
        "adds up to 1 images but pixel_values has 3",
    ),
    "batch_num_images sum": (
        "llava_onevision",
        lambda b: _with(b, batch_num_images=b["batch_num_images"] + 1),
        "adds up to 5 images but pixel_values has 3",
    ),
    "video placeholders": (
        "llava_onevision",
        lambda b: _with(b, input_ids=b["input_ids"].where(b["input_ids"] != special_ids(1024)["video"], 7)),
        "take only the first 0",
    ),
    "anyres lengths": ("llava_next_video", lambda b: _drop_image_placeholders(b, 0, 1), "row 0 has 51 image"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_inconsistent_batches_are_refused(case):
    family, spoil, message = ERRORS[case]
    batch = spoil(make_batch(mixed_rows(family), family, PAD))
    with pytest.raises(ValueError, match=message):
        adapter_for(model(family)).split_batch(batch)


def test_a_batch_num_images_group_across_rows_is_refused():
    """Two rows of two single-tile images each, but one group of four: the token counts fit, the groups do not."""
    rows = [make_inputs("llava_onevision", "image", images=2, seed=seed) for seed in (1, 2)]
    batch = make_batch(rows, "llava_onevision", PAD)
    batch["batch_num_images"] = torch.tensor([4])
    with pytest.raises(ValueError, match="cut a batch_num_images group"):
        adapter_for(model("llava_onevision")).split_batch(batch)


def test_make_batch_refuses_what_hf_cannot_batch():
    rows = [make_inputs("llava_onevision", "video", frames=4), make_inputs("llava_onevision", "video", frames=6)]
    with pytest.raises(ValueError, match="same frames"):
        make_batch(rows, "llava_onevision", PAD)
