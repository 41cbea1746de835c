"""A tokenizer and processor folder for the tiny models of `specvlm.tiny`, built offline.

`save_tiny_processor(folder, family)` writes what a real checkpoint folder holds next to its weights (tokenizer,
chat template, image / video processor configs, processor config), sized for the tiny vision towers: LLaVA-OneVision
SigLIP 56 px / patch 14 (4x4 patches, 16 tokens per tile); Qwen patch 14, merge 2, temporal patch 2 and small pixel
bounds (56x56 .. 112x112, i.e. 1 .. 16 tokens per image or per frame pair). `AutoTokenizer.from_pretrained(folder)`
and `specvlm.inputs.load_processor(folder)` then work with no network.

The tokenizer is a byte-level BPE trained on a few sentences, padded to the model's vocabulary with unreachable
filler entries, so its special tokens get exactly `specvlm.tiny.special_ids(vocab)`: image, video, vision_start,
vision_end, eos (<|im_end|>), pad (<|endoftext|>) at the top, and <|im_start|> just below them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..tiny import special_ids

QWEN_CHAT_TEMPLATE = (  # Qwen2-VL / Qwen2.5-VL's template, as their checkpoints ship it
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
ONEVISION_CHAT_TEMPLATE = (  # llava-hf LLaVA-OneVision's template: images, then videos, then text
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]
_CORPUS = [
    "What happens in the video? Describe the image in detail.",
    "A person walks across the room, picks up a red ball and throws it to a dog in the garden.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window.",
    "How many objects are on the table, and what colour is the largest one?",
    "First the car stops at the light, then it turns left and drives along the river.",
]


def _token_names(family: str) -> dict[str, str]:
    qwen = family in ("qwen2_vl", "qwen2_5_vl")
    return {
        "image": "<|image_pad|>" if qwen else "<image>",
        "video": "<|video_pad|>" if qwen else "<video>",
        "vision_start": "<|vision_start|>",
        "vision_end": "<|vision_end|>",
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
    }


def make_tiny_tokenizer(family: str, vocab: int = 1024, merges: int | None = None, shuffle: int | None = None):
    """A `PreTrainedTokenizerFast` of exactly `vocab` entries whose special tokens sit at `special_ids(vocab)`.
    Another vocabulary, for drafts bridged through text: `merges` stops the BPE after that many merges (words
    then split into more pieces), `shuffle` (a seed) permutes the ordinary ids (the same text, other ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    ids = special_ids(vocab)
    names = _token_names(family)
    ordered = ["<|im_start|>"] + [names[k] for k in sorted(ids, key=ids.get)]
    ordinary = vocab - len(ordered)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _CORPUS * 4,
        trainers.BpeTrainer(
            vocab_size=ordinary if merges is None else min(ordinary, 256 + merges),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    spec = json.loads(tok.to_str())
    table = spec["model"]["vocab"]
    if len(table) > ordinary:
        raise ValueError(f"vocab {vocab} is too small for a byte-level tokenizer (needs > {len(table) + 7})")
    for i in range(ordinary - len(table)):  # no merge produces these, so encoding never emits them
        table[f"<unused{i}>"] = len(table)
    if shuffle is not None:
        import random

        order = list(range(ordinary))
        random.Random(shuffle).shuffle(order)
        spec["model"]["vocab"] = {text: order[i] for text, i in table.items()}
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(ordered)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=names["eos"], pad_token=names["pad"])
    fast.chat_template = QWEN_CHAT_TEMPLATE if family in ("qwen2_vl", "qwen2_5_vl") else ONEVISION_CHAT_TEMPLATE
    got = {k: fast.convert_tokens_to_ids(names[k]) for k in ids}
    assert got == ids and len(fast) == vocab, (got, ids, len(fast))
    return fast


def save_tiny_processor(
    folder,
    family: str,
    model=None,
    vocab: int | None = None,
    *,
    image_size: int = 56,
    min_pixels: int = 56 * 56,
    max_pixels: int = 112 * 112,
    chat_template: bool = True,
    tokenizer_options: dict | None = None,
) -> Path:
    """Write tokenizer + processor files for a `specvlm.tiny.make_model(family, vocab=...)` model into `folder`.
    The vocabulary comes from `model` when given (its special ids must be `special_ids(vocab)`), else `vocab`
    (default 1024). `chat_template=False` leaves the template out, to exercise the fallback prompt;
    `tokenizer_options` (`make_tiny_tokenizer`'s `merges`, `shuffle`) give another vocabulary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab_of(model) if model is not None else (vocab or 1024)
    tokenizer = make_tiny_tokenizer(family, vocab, **(tokenizer_options or {}))
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        processor_class = "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen2VLProcessor"
        common = dict(
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
            resample=3,
            rescale_factor=1 / 255,
            do_resize=True,
            do_rescale=True,
            do_normalize=True,
            do_convert_rgb=True,
            processor_class=processor_class,
        )
        image = dict(
            common,
            image_processor_type="Qwen2VLImageProcessor",
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        )
        video = dict(
            common,
            video_processor_type="Qwen2VLVideoProcessor",
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        )
        processor = {"processor_class": processor_class}
    elif family == "llava_onevision":
        pinpoints = (
            model.config.image_grid_pinpoints if model is not None else [[56, 56], [56, 112], [112, 56], [112, 112]]
        )
        patch = 14
        if model is not None:
            image_size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
        common = dict(
            size={"height": image_size, "width": image_size},
            image_mean=SIGLIP_MEAN,
            image_std=SIGLIP_STD,
            resample=3,
            rescale_factor=1 / 255,
            do_resize=True,
            do_rescale=True,
            do_normalize=True,
            do_convert_rgb=True,
            processor_class="LlavaOnevisionProcessor",
        )
        image = dict(
            common, image_processor_type="LlavaOnevisionImageProcessor", image_grid_pinpoints=pinpoints, do_pad=True
        )
        video = dict(common, video_processor_type="LlavaOnevisionVideoProcessor")
        strategy = model.config.vision_feature_select_strategy if model is not None else "full"
        processor = {
            "processor_class": "LlavaOnevisionProcessor",
            "num_image_tokens": (image_size // patch) ** 2,
            "vision_feature_select_strategy": strategy,
            "vision_aspect_ratio": "anyres_max_9",
        }
    else:
        raise ValueError(f"no tiny processor for family {family!r}")
    for name, content in (
        ("preprocessor_config.json", image),
        ("video_preprocessor_config.json", video),
        ("processor_config.json", processor),
    ):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    return folder


def _vocab_of(model) -> int:
    config = model.config
    image = getattr(config, "image_token_id", None)
    image = image if image is not None else config.image_token_index
    vocab = image + 6
    ids = special_ids(vocab)
    video = getattr(config, "video_token_id", None)
    video = video if video is not None else getattr(config, "video_token_index", None)
    if video != ids["video"] or model.generation_config.eos_token_id != ids["eos"]:
        raise ValueError("model's special ids are not specvlm.tiny.special_ids(vocab): build it with make_model")
    return vocab


# ---- media files for tests (written at test time, never downloaded) ----------------------------------------------
_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def index_frames(num_frames: int, height: int = 48, width: int = 64):
    """(F, H, W, 3) uint8 frames whose index survives lossy coding: frame i is flat grey level 16 + 7 * (i % 32) in
    red and 16 + 7 * (i // 32) in green (read back with `frame_index`), with a moving white bar for real motion."""
    import numpy as np

    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i, ..., 0] = 16 + 7 * (i % 32)
        frames[i, ..., 1] = 16 + 7 * (i // 32)
        frames[i, :4, (i * 3) % width] = 255
    return frames


def frame_index(frame) -> int:
    """Inverse of `index_frames` for a decoded frame (medians of the flat area, robust to coding noise)."""
    import numpy as np

    red, green = (int(np.median(frame[8:, :, c])) for c in (0, 1))
    return round((red - 16) / 7) + 32 * round((green - 16) / 7)


def write_video(path, frames, fps: int = 10, codec: str | None = None) -> Path:
    """Encode (F, H, W, 3) uint8 RGB `frames` to `path` with PyAV; the codec follows the extension."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or _CODECS[path.suffix.lower()], rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 2_000_000  # high enough that `frame_index` reads every frame back, whatever the codec
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
