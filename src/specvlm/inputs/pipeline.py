"""The input pipeline: a request as values (`MediaPrompt`: the prompt, images, a video; `FrameOptions`: how videos
are sampled and images sized; `InputModels`: the target's and the draft's folders and configs) to model inputs,
`prepare_inputs`. `specvlm generate` (through `inputs_from_args`, a thin wrapper over its flags), the server, the
demo and the benchmarks all call it, so they all see the same frames, chat template and processor output.

`prepare_inputs` checks every input before any heavy work, decodes the video once, and runs the target's processor
(and the draft's, when a draft folder is given and its preprocessing differs). Every problem a user can fix raises
`InputError` with a one-line message.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from .arguments import DEFAULT_NUM_FRAMES
from .errors import InputError, check_file
from .image import IMAGE_EXTENSIONS, load_image
from .limits import MediaLimits
from .processor import FAMILIES, build_inputs, load_processor
from .video import VIDEO_EXTENSIONS, check_sampling, load_video, sampler


@dataclass(frozen=True)
class FrameOptions:
    """How videos are sampled (`num_frames` uniformly, or `fps` frames a second; neither: DEFAULT_NUM_FRAMES) and
    Qwen-VL images / frames sized (`max_pixels`): --num-frames / --fps / --max-pixels. The `draft_` fields give a
    draft model a cheaper view of the same media (--draft-num-frames / --draft-fps / --draft-max-pixels; unset:
    the target's); the target always sees what the first three say."""

    num_frames: int | None = None
    fps: float | None = None
    max_pixels: int | None = None
    draft_num_frames: int | None = None
    draft_fps: float | None = None
    draft_max_pixels: int | None = None

    @classmethod
    def from_args(cls, args) -> FrameOptions:
        return cls(*(getattr(args, name, None) for name in cls.__dataclass_fields__))

    @property
    def draft_view(self) -> bool:
        """Whether the draft's view differs from the target's."""
        return (self.draft_num_frames, self.draft_fps, self.draft_max_pixels) != (None, None, None)

    def draft_sampling(self, num_frames: int | None, fps: float | None) -> tuple[int | None, float | None]:
        """The draft's (num_frames, fps), given the target's resolved ones."""
        if self.draft_num_frames is None and self.draft_fps is None:
            return num_frames, fps
        return self.draft_num_frames, self.draft_fps


@dataclass(frozen=True)
class MediaPrompt:
    """One user turn: the question or instruction, image files, and at most one video file. Or, with `messages`, a
    whole conversation in HF's chat format (system / user / assistant turns; media as {"type": "image"} /
    {"type": "video"} parts, in the order of `images` and `video`); `prompt` is then only what logs show."""

    prompt: str | None
    images: tuple[str | Path, ...] = ()
    video: str | Path | None = None
    messages: tuple[dict, ...] | None = None

    @classmethod
    def from_args(cls, args) -> MediaPrompt:
        return cls(
            getattr(args, "prompt", None), tuple(getattr(args, "image", None) or ()), getattr(args, "video", None)
        )


class InputModels(NamedTuple):
    """Whose processors read the request: the target's folder and config, and optionally a draft's (whose own
    inputs are built when its preprocessing differs). `specvlm.arguments.ModelDirs` has these fields too."""

    target_dir: str | Path
    target_config: object
    draft_dir: str | Path | None = None
    draft_config: object = None


def prepare_inputs(
    models: InputModels,
    media: MediaPrompt,
    frames: FrameOptions = FrameOptions(),
    max_new_tokens: int = 0,
    progress: Callable[[str], None] | None = None,
    report: dict | None = None,
    limits: MediaLimits = MediaLimits(),
    check: Callable[[], None] | None = None,
) -> dict:
    """Model inputs for `media`, ready for `model.generate(**inputs)`.

    With a draft in `models`, a draft whose processor prepares different pixels or placeholder counts gets its own
    inputs under the key "draft_inputs" (what `SpeculativeGenerator.generate` takes; pop it before calling HF
    `generate`). `max_new_tokens` is checked against the models' context. `progress(message)` hears about long
    decodes; `report`, when given, is filled with frames, decode_s, preprocess_s, prompt_tokens, visual_tokens.
    `limits` bound the media (checked from headers before decoding); `check()` is called between the steps and
    every 64 decoded video frames, and what it raises abandons the work (the server's cancels and deadlines)."""
    model_dir, model_config, draft_dir, draft_config = (
        models.target_dir,
        models.target_config,
        models.draft_dir,
        models.draft_config,
    )
    if (draft_dir is None) != (draft_config is None):
        raise ValueError("give both draft_dir and draft_config, or neither")
    say = progress or (lambda message: None)
    prompt = media.prompt
    if media.messages is None and (prompt is None or not prompt.strip()):
        raise InputError("--prompt is empty: give a question or instruction")
    images, video_path = [str(p) for p in media.images], None if media.video is None else str(media.video)
    for path in images:
        check_file(path, "image", IMAGE_EXTENSIONS)
    if video_path is not None:
        check_file(video_path, "video", VIDEO_EXTENSIONS)
    family = _check_model(model_dir, model_config, bool(images), video_path is not None)
    if draft_config is not None:
        _check_model(draft_dir, draft_config, bool(images), video_path is not None, role="draft")
    num_frames, fps = frames.num_frames, frames.fps
    if video_path is not None and num_frames is None and fps is None:
        num_frames = DEFAULT_NUM_FRAMES
    check_sampling(num_frames, fps)
    processor = _load_checked(model_dir, family, model_config)

    check = check or (lambda: None)
    started = time.perf_counter()
    pictures = []
    for path in images:
        check()
        pictures.append(load_image(path, limits))
    video = None
    if video_path is not None:
        say(f"decoding {video_path} ...")
        sample = sampler(num_frames, fps, sample_frames=processor.video_processor.sample_frames)
        video = load_video(
            video_path, sample_indices_fn=sample, progress=_throttled(say, video_path, check), limits=limits
        )
        say(f"decoded {len(video.indices)} of {video.total_frames} frames from {video_path}")
    draft_video = video
    if frames.draft_view:
        if draft_config is None:
            raise InputError(
                "--draft-num-frames / --draft-fps / --draft-max-pixels give a draft model its own view: add --draft DIR"
            )
        _check_draft_view(frames)
        draft_frames = frames.draft_sampling(num_frames, fps)
        if video_path is not None and draft_frames != (num_frames, fps):
            draft_processor = _load_checked(draft_dir, draft_config.model_type, draft_config)
            sample = sampler(*draft_frames, sample_frames=draft_processor.video_processor.sample_frames)
            progress = _throttled(say, video_path, check)
            draft_video = load_video(video_path, sample_indices_fn=sample, progress=progress, limits=limits)
    check()
    decoded = time.perf_counter()
    inputs = media_inputs(
        processor,
        prompt,
        pictures,
        video,
        model_dir,
        model_config,
        draft_dir,
        draft_config,
        frames.max_pixels,
        max_new_tokens,
        media.messages,
        draft_video=draft_video,
        draft_max_pixels=frames.draft_max_pixels,
    )
    if report is not None:
        ids = inputs["input_ids"][0]
        report.update(
            frames=len(video.indices) if video else 0,
            images=len(pictures),
            decode_s=decoded - started,
            preprocess_s=time.perf_counter() - decoded,
            prompt_tokens=int(ids.numel()),
            visual_tokens=int(torch.isin(ids, _visual_ids(processor)).sum()),
        )
    return inputs


def inputs_from_args(
    args,
    model_dir,
    model_config,
    draft_dir=None,
    draft_config=None,
    progress: Callable[[str], None] | None = None,
    report: dict | None = None,
) -> dict:
    """`prepare_inputs` on the flags `add_input_arguments(parser)` defines (--prompt, --image, --video, --num-frames,
    --fps, --max-pixels; --max-new-tokens when present)."""
    return prepare_inputs(
        InputModels(model_dir, model_config, draft_dir, draft_config),
        MediaPrompt.from_args(args),
        FrameOptions.from_args(args),
        getattr(args, "max_new_tokens", 0) or 0,
        progress=progress,
        report=report,
    )


def media_inputs(
    processor,
    prompt: str,
    pictures,
    video,
    model_dir,
    model_config,
    draft_dir=None,
    draft_config=None,
    max_pixels: int | None = None,
    max_new_tokens: int = 0,
    messages=None,
    draft_video=None,
    draft_max_pixels: int | None = None,
) -> dict:
    """Model inputs for media already loaded (PIL `pictures`, a decoded `Video` or None) through the target's
    `processor`: what `inputs_from_args` does once the files are read (draft inputs and context checks included).
    A draft view: `draft_video` (the video as the draft samples it; default `video`) and `draft_max_pixels`."""
    inputs = build_inputs(
        processor, prompt, pictures, video, messages, **_size_options(processor, model_config.model_type, max_pixels)
    )
    _check_context(inputs, model_config, model_dir, max_new_tokens, processor)
    if draft_config is not None:
        draft_processor = _load_checked(draft_dir, draft_config.model_type, draft_config)
        if draft_max_pixels is None:
            sizes = _size_options(draft_processor, draft_config.model_type, max_pixels)
        else:
            sizes = _size_options(draft_processor, draft_config.model_type, draft_max_pixels, "--draft-max-pixels")
        names = f"{model_dir} and {draft_dir}"
        seen = video if draft_video is None else draft_video
        draft_inputs = own_draft_inputs(
            inputs, processor, draft_processor, prompt, pictures, seen, messages, sizes, names
        )
        if draft_inputs is not None:  # e.g. another image size: the draft reads its own pixels
            _check_context(draft_inputs, draft_config, draft_dir, max_new_tokens, draft_processor)
            inputs["draft_inputs"] = draft_inputs
    return inputs


def own_draft_inputs(
    inputs: dict,
    processor,
    draft_processor,
    prompt: str | None,
    pictures,
    video,
    messages=None,
    sizes: dict | None = None,
    names: str = "target and draft",
) -> dict | None:
    """The draft's own inputs for the same request through `draft_processor`, or None when they equal the target's
    `inputs` (the draft then reads the target's). A draft whose processor uses the target's visual placeholders (its
    family, or Qwen2-VL for Qwen2.5-VL) must turn the prompt into the same text tokens (one tokenizer); one of
    another family reads its own (its own chat template, placeholders and maybe vocabulary: the generator checks
    or bridges the vocabularies, `drafters.vocab.vocabulary_bridge`)."""
    draft_inputs = build_inputs(draft_processor, prompt, pictures, video, messages, **(sizes or {}))
    if _placeholders(draft_processor) != _placeholders(processor):
        return draft_inputs
    if not torch.equal(_text_ids(inputs, processor), _text_ids(draft_inputs, draft_processor)):
        raise InputError(
            f"the tokenizers of {names} turn the prompt into different tokens: target and draft must share a tokenizer"
        )
    return None if _same(inputs, draft_inputs) else draft_inputs


def _check_draft_view(frames: FrameOptions) -> None:
    if frames.draft_num_frames is not None and frames.draft_fps is not None:
        raise InputError("give either --draft-num-frames or --draft-fps, not both")
    for flag, value in (
        ("--draft-num-frames", frames.draft_num_frames),
        ("--draft-fps", frames.draft_fps),
        ("--draft-max-pixels", frames.draft_max_pixels),
    ):
        if value is not None and not value > 0:
            raise InputError(f"{flag} must be positive, got {value}")


def _placeholders(processor) -> tuple:
    """The processor's image and video placeholder tokens: processors that share them read the same inputs."""
    return getattr(processor, "image_token", None), getattr(processor, "video_token", None)


def _check_model(model_dir, config, has_images: bool, has_video: bool, role: str = "target") -> str:
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise InputError(
            f"{role} {model_dir} is a {family!r} model; specvlm's inputs support {', '.join(sorted(FAMILIES))}"
        )
    if has_images and getattr(config, "image_token_id", None) is None:
        raise InputError(f"{role} {model_dir} takes no images (video-only model); drop --image")
    if has_video and getattr(config, "video_token_id", None) is None:
        raise InputError(f"{role} {model_dir} takes no video (image-only model); drop --video")
    return family


@functools.lru_cache(maxsize=16)
def _processor(model_dir: str, family: str):
    """A folder's processor, read from disk once per process: `specvlm serve` builds every request's inputs (target
    and draft) through here, and reading a processor costs ~20 ms. Only called, never changed, so sharing is safe."""
    return load_processor(model_dir, family=family)


def _load_checked(model_dir, family, config):
    """The folder's processor, checked to speak the model's placeholder ids (a mismatched tokenizer would put the
    pixels nowhere, or index past the embedding table)."""
    processor = _processor(str(model_dir), family)
    for what in ("image_token_id", "video_token_id"):
        ours, theirs = getattr(processor, what, None), getattr(config, what, None)
        if ours is not None and theirs is not None and ours != theirs:
            raise InputError(
                f"the tokenizer in {model_dir} maps {what.replace('_id', '')} to {ours} but the model "
                f"expects {theirs}: tokenizer and model do not belong together"
            )
    return processor


def _size_options(processor, family: str, max_pixels: int | None, flag: str = "--max-pixels") -> dict:
    if max_pixels is None:
        return {}
    if not family.startswith("qwen"):
        raise InputError(f"{flag} applies to Qwen2-VL / Qwen2.5-VL; LLaVA-OneVision uses fixed-size tiles")
    out = {}
    for key, sub in (("images_kwargs", processor.image_processor), ("videos_kwargs", processor.video_processor)):
        size = dict(sub.size)
        if max_pixels < size["shortest_edge"]:
            raise InputError(f"{flag} {max_pixels} is below the processor's minimum {size['shortest_edge']}")
        out[key] = {"size": {"shortest_edge": size["shortest_edge"], "longest_edge": max_pixels}}
    return out


def _check_context(inputs, config, model_dir, max_new_tokens: int, processor) -> None:
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    length = int(inputs["input_ids"].shape[1])
    if context is None or length + max_new_tokens <= context:
        return
    visual = int(torch.isin(inputs["input_ids"][0], _visual_ids(processor)).sum())
    advice = "use fewer frames (--num-frames / --fps)" + (
        " or a smaller --max-pixels" if config.model_type.startswith("qwen") else ""
    )
    raise InputError(
        f"the prompt has {length} tokens ({visual} visual) plus {max_new_tokens} new tokens, but "
        f"{model_dir} reads at most {context} (max_position_embeddings); {advice}"
    )


def _visual_ids(processor) -> torch.Tensor:
    ids = (getattr(processor, "image_token_id", None), getattr(processor, "video_token_id", None))
    return torch.tensor([t for t in ids if t is not None], dtype=torch.long)


def _text_ids(inputs, processor):
    ids = inputs["input_ids"][0]
    return ids[~torch.isin(ids, _visual_ids(processor))]


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _throttled(say, path, check, every_s: float = 1.0):
    """A load_video progress callback that calls `check()` and speaks at most once per `every_s` seconds."""
    last = [time.perf_counter()]

    def progress(done: int, needed: int) -> None:
        check()
        now = time.perf_counter()
        if now - last[0] >= every_s:
            last[0] = now
            say(f"decoding {path}: frame {done} of {needed}")

    return progress
