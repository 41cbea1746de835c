"""Video processors for machines without torchvision, producing the tensors HF's video processors produce.

HF's `Qwen2VLVideoProcessor` and `LlavaOnevisionVideoProcessor` import torchvision at module level and cannot even
be constructed without it. These classes read the same config files, take the same call arguments and do the same
arithmetic with the same torch operations:

- resize: torchvision's `resize` on a CPU uint8 tensor is `torch.nn.functional.interpolate(uint8, antialias=True,
  align_corners=False)` (bicubic always, bilinear on AVX2/AVX512 CPUs; otherwise via float32 and rounding), so we
  call that op directly and get the same bytes;
- rescale + normalise fused as HF does: (x - 255 * mean) / (255 * std) in float32;
- Qwen: `smart_resize` to multiples of patch * merge (28) within [min_pixels, max_pixels], the frame count padded
  to a multiple of the temporal patch by repeating the last frame, and HF's patch order: rows of
  C * temporal_patch * patch * patch = 1176 values, grouped so each 2x2 merge window is contiguous;
- LLaVA-OneVision: every frame resized to the vision tower's square size (no crop, no anyres for video).

Frame sampling (`sample_frames`) mirrors each HF class too, so `do_sample_frames=True` and video paths work.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import VideosKwargs
from transformers.utils import PushToHubMixin

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_MODES = {0: "nearest-exact", 2: "bilinear", 3: "bicubic"}  # PIL resample codes HF maps to torch modes


class QwenVideosKwargs(VideosKwargs, total=False):
    min_pixels: int
    max_pixels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    min_frames: int
    max_frames: int
    cap_pixels_per_frame: bool
    max_video_tokens: int


class TorchFreeVideoProcessor(PushToHubMixin):  # the mixin: HF processors serialise sub-processors by to_dict()
    """What the two families share: config loading, input normalisation, resize, normalise, sampling rule."""

    hf_class = ""
    valid_kwargs = VideosKwargs
    model_input_names = ["pixel_values_videos"]
    # HF BaseVideoProcessor defaults
    resample = 3
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    rescale_factor = 1 / 255
    do_resize = do_rescale = do_normalize = do_convert_rgb = True
    do_center_crop = None
    do_sample_frames = False
    num_frames = None
    fps = None

    def __init__(self, **config):
        for key, value in config.items():  # config keys become attributes, as in HF (methods stay methods)
            if (
                not key.startswith("_")
                and not callable(getattr(type(self), key, None))
                and key not in ("video_processor_type", "image_processor_type", "processor_class", "auto_map")
            ):
                setattr(self, key, value)
        self.size = dict(self.size)

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs):
        """HF's lookup order: processor_config.json["video_processor"], video_preprocessor_config.json, then
        preprocessor_config.json (checkpoints without a video config share the image processor's)."""
        from transformers.utils import cached_file

        def read(name):
            file = cached_file(
                str(model_dir),
                name,
                _raise_exceptions_for_missing_entries=False,
                **{
                    k: v
                    for k, v in kwargs.items()
                    if k in ("cache_dir", "revision", "token", "local_files_only", "subfolder")
                },
            )
            return json.loads(open(file, encoding="utf-8").read()) if file else None

        nested = (read("processor_config.json") or {}).get("video_processor")
        config = nested or read("video_preprocessor_config.json") or read("preprocessor_config.json") or {}
        return cls(**config)

    def to_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out["video_processor_type"] = self.hf_class
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)}"

    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    # ---- sampling ----------------------------------------------------------------------------------------------
    def sample_frames(self, metadata, num_frames=None, fps=None, **kwargs):
        """HF `BaseVideoProcessor.sample_frames`: `default_sample_indices_fn`."""
        from transformers.video_utils import default_sample_indices_fn

        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        num_frames = num_frames if num_frames is not None else self.num_frames
        fps = fps if fps is not None else self.fps
        return default_sample_indices_fn(metadata=metadata, num_frames=num_frames, fps=fps)

    # ---- the pipeline --------------------------------------------------------------------------------------------
    def preprocess(
        self,
        videos,
        video_metadata=None,
        do_sample_frames=None,
        num_frames=None,
        fps=None,
        return_metadata=False,
        return_tensors=None,
        **kwargs,
    ) -> BatchFeature:
        options = {
            name: kwargs[name] if kwargs.get(name) is not None else getattr(self, name, None)
            for name in self.valid_kwargs.__annotations__
        }
        options["size"] = self._size(kwargs)
        if options.get("do_center_crop"):
            raise ValueError(f"{type(self).__name__} does not implement do_center_crop (no checkpoint uses it)")
        do_sample = self.do_sample_frames if do_sample_frames is None else do_sample_frames
        sample = None
        if do_sample:
            sample = lambda md: self.sample_frames(md, num_frames=num_frames, fps=fps)
        clips, metadata = _decode_and_sample(videos, video_metadata, sample)
        clips = [_to_frames_first(clip, options.get("do_convert_rgb")) for clip in clips]
        out = self._preprocess(clips, options, return_tensors)
        if return_metadata:
            out["video_metadata"] = metadata
        return out

    def _size(self, kwargs) -> dict:
        size = kwargs.get("size") or self.size
        return dict(size)

    def resize(self, frames: torch.Tensor, height: int, width: int, resample) -> torch.Tensor:
        """torchvision.transforms.v2.functional.resize for a CPU tensor (F, C, H, W), same op, same result."""
        if (height, width) == tuple(frames.shape[-2:]):
            return frames
        mode = _MODES.get(int(resample) if resample is not None else 2)
        if mode is None:
            raise ValueError(f"resample={resample} is not supported without torchvision (use bicubic or bilinear)")
        native_uint8 = (
            mode == "bicubic"
            or mode.startswith("nearest")
            or (mode == "bilinear" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))
        )
        dtype = frames.dtype
        cast = dtype not in (torch.float32, torch.float64) and not (dtype == torch.uint8 and native_uint8)
        x = frames.float() if cast else frames
        aa = mode in ("bilinear", "bicubic")
        x = torch.nn.functional.interpolate(
            x, size=[height, width], mode=mode, align_corners=False if aa else None, antialias=aa
        )
        if cast:
            if mode == "bicubic" and dtype == torch.uint8:
                x = x.clamp_(0, 255)
            if not dtype.is_floating_point:
                x = x.round_()
            x = x.to(dtype)
        return x

    @staticmethod
    def rescale_and_normalize(frames, do_rescale, rescale_factor, do_normalize, mean, std) -> torch.Tensor:
        """HF TorchvisionBackend: rescale folded into mean/std (x - mean/r) / (std/r), computed in float32."""
        if do_rescale and do_normalize:
            mean = torch.tensor(mean) * (1.0 / rescale_factor)
            std = torch.tensor(std) * (1.0 / rescale_factor)
            do_rescale = False
        if do_normalize:
            mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
            return frames.to(torch.float32).sub(mean).div_(std)
        if do_rescale:
            return frames * rescale_factor
        return frames

    def _preprocess(self, clips, options, return_tensors) -> BatchFeature:
        raise NotImplementedError


class OnevisionVideoProcessor(TorchFreeVideoProcessor):
    """HF `LlavaOnevisionVideoProcessor`: each frame resized to `size` (the vision tower's square), normalised;
    pixel_values_videos (num_videos, F, 3, S, S)."""

    hf_class = "LlavaOnevisionVideoProcessor"
    size = {"height": 384, "width": 384}

    def _preprocess(self, clips, options, return_tensors) -> BatchFeature:
        size = options["size"]
        if "height" not in size or "width" not in size:
            raise ValueError(f"{type(self).__name__} needs size {{'height', 'width'}}, got {size}")
        out = []
        for frames in clips:
            if options["do_resize"]:
                frames = self.resize(frames, size["height"], size["width"], options["resample"])
            out.append(
                self.rescale_and_normalize(
                    frames,
                    options["do_rescale"],
                    options["rescale_factor"],
                    options["do_normalize"],
                    options["image_mean"],
                    options["image_std"],
                )
            )
        return BatchFeature(data={"pixel_values_videos": out}, tensor_type=return_tensors)


class QwenVLVideoProcessor(TorchFreeVideoProcessor):
    """HF `Qwen2VLVideoProcessor` (Qwen2-VL and Qwen2.5-VL share it): pixel_values_videos
    (sum of t*h*w, 3*2*14*14) and video_grid_thw (num_videos, 3)."""

    hf_class = "Qwen2VLVideoProcessor"
    valid_kwargs = QwenVideosKwargs
    model_input_names = ["pixel_values_videos", "video_grid_thw"]
    size = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    patch_size = 14
    temporal_patch_size = 2
    merge_size = 2
    min_frames = 4
    max_frames = 768
    cap_pixels_per_frame = None
    max_video_tokens = 128000

    def __init__(self, **config):
        # HF: min_pixels / max_pixels in a config override size (older checkpoints only have these)
        size = dict(config.pop("size", None) or self.size)
        if config.get("min_pixels") is not None:
            size["shortest_edge"] = config.pop("min_pixels")
        if config.get("max_pixels") is not None:
            size["longest_edge"] = config.pop("max_pixels")
        config.pop("min_pixels", None), config.pop("max_pixels", None)
        super().__init__(size=size, **config)

    def _size(self, kwargs) -> dict:
        size = dict(kwargs.get("size") or self.size)
        if kwargs.get("min_pixels") is not None:
            size["shortest_edge"] = kwargs["min_pixels"]
        if kwargs.get("max_pixels") is not None:
            size["longest_edge"] = kwargs["max_pixels"]
        return size

    def sample_frames(
        self, metadata, num_frames=None, fps=None, temporal_patch_size=None, min_frames=None, max_frames=None, **kwargs
    ):
        """HF `Qwen2VLVideoProcessor.sample_frames`: N rounded to a multiple of the temporal patch, then frames
        at float steps T/N. One change: where HF would divide by zero or overrun, N becomes the nearest usable
        count instead: one temporal patch when N rounds to 0 (e.g. --num-frames 1), the most whole patches the
        video has when N exceeds its T frames."""
        if fps is not None and num_frames is not None:
            raise ValueError("`num_frames` and `fps` are mutually exclusive arguments, please use only one!")
        num_frames = num_frames if num_frames is not None else self.num_frames
        fps = fps if fps is not None else self.fps
        tps = temporal_patch_size or self.temporal_patch_size
        min_frames = min_frames or self.min_frames
        max_frames = max_frames or self.max_frames
        total = metadata.total_num_frames
        if num_frames is not None:
            num_frames = round(num_frames / tps) * tps
        elif fps is not None:
            if metadata.fps is None:
                raise ValueError("sampling by fps needs the video's frame rate")
            max_frames = math.floor(min(max_frames, total) / tps) * tps
            num_frames = total / metadata.fps * fps
            num_frames = min(max(num_frames, min_frames), max_frames, total)
            num_frames = math.floor(num_frames / tps) * tps
        if num_frames is None:
            return torch.arange(0, total).int()
        if num_frames == 0:
            num_frames = min(tps, total)
        if num_frames > total:
            num_frames = total // tps * tps or total
        return torch.arange(0, total, total / num_frames).int()

    def _preprocess(self, clips, options, return_tensors) -> BatchFeature:
        patch, merge, tps = options["patch_size"], options["merge_size"], options["temporal_patch_size"]
        rows, grids = [], []
        for frames in clips:
            if options["do_resize"]:
                height, width = self._resized(frames, options)
                frames = self.resize(frames, height, width, options["resample"])
            frames = self.rescale_and_normalize(
                frames,
                options["do_rescale"],
                options["rescale_factor"],
                options["do_normalize"],
                options["image_mean"],
                options["image_std"],
            )
            flat, grid = patchify(frames, patch, merge, tps)
            rows.append(flat)
            grids.append(grid)
        return BatchFeature(
            data={"pixel_values_videos": torch.cat(rows, dim=0), "video_grid_thw": torch.tensor(grids)},
            tensor_type=return_tensors,
        )

    def _resized(self, frames, options) -> tuple[int, int]:
        size = options["size"]
        if not size.get("shortest_edge") or not size.get("longest_edge"):
            raise ValueError(f"`size` dict must contain 'shortest_edge' and 'longest_edge' keys but got {size}.")
        factor = options["patch_size"] * options["merge_size"]
        max_pixels = size["longest_edge"]
        if options.get("cap_pixels_per_frame"):
            total_pixels = int(options["max_video_tokens"] * factor * factor * 0.9)
            max_pixels = max(
                min(max_pixels, total_pixels * options["temporal_patch_size"] // frames.shape[0]),
                int(size["shortest_edge"] * 1.05),
            )
        return smart_resize(int(frames.shape[-2]), int(frames.shape[-1]), factor, size["shortest_edge"], max_pixels)


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56, max_pixels: int = 14 * 14 * 4 * 1280
) -> tuple[int, int]:
    """Qwen2-VL's rule: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio kept
    as closely as rounding allows."""
    ratio = max(height, width) / min(height, width)
    if ratio > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(frames: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, list[int]]:
    """(F, C, H, W) -> rows (grid_t * grid_h * grid_w, C * temporal * patch * patch) in HF's order, and
    [grid_t, grid_h, grid_w]. Rows run over t, then merge windows in raster order, then the 2x2 patches inside a
    window; each row holds channel, then time, then the patch's pixels."""
    if pad := -frames.shape[0] % temporal:  # repeat the last frame up to a whole temporal patch
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
    f, c, h, w = frames.shape
    gt, gh, gw = f // temporal, h // patch, w // patch
    x = frames.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


def _decode_and_sample(videos, video_metadata, sample):
    """HF's input rules: a list of videos (arrays / tensors (F, H, W, C) or (F, C, H, W), lists of frames) or
    paths. Paths are decoded with PyAV, sampled by `sample` (all frames when None); arrays are sampled by `sample`
    with their metadata when given."""
    from transformers.video_utils import make_batched_metadata, make_batched_videos

    from .video import load_video

    videos = make_batched_videos(videos)
    if videos and isinstance(videos[0], str):
        decoded = [load_video(path, sample_indices_fn=sample) for path in videos]
        return [v.frames for v in decoded], [v.metadata for v in decoded]
    metadata = make_batched_metadata(videos, video_metadata=video_metadata)
    if sample is not None:
        out = []
        for video, md in zip(videos, metadata):
            md.frames_indices = sample(md)
            out.append(video[md.frames_indices])
        videos = out
    return videos, metadata


def _to_frames_first(video, do_convert_rgb=True) -> torch.Tensor:
    """Array or tensor (F, H, W, C) or (F, C, H, W) -> tensor (F, 3, H, W), dtype kept (uint8 from decoders)."""
    from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if infer_channel_dimension_format(video) == ChannelDimension.LAST:
        video = video.permute(0, 3, 1, 2).contiguous()
    if do_convert_rgb and video.shape[1] == 1:
        video = video.expand(-1, 3, -1, -1).contiguous()
    elif do_convert_rgb and video.shape[1] == 4:
        from transformers.video_utils import convert_to_rgb

        video = convert_to_rgb(video)
    return video
