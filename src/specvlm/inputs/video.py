"""Video files -> sampled RGB frames, with PyAV.

Sampling follows transformers: the default is `default_sample_indices_fn` (what `transformers.video_utils.load_video`
and the LLaVA-OneVision video processor use): frame i*T//N for i < N, uniform over the whole video, starting at frame
0. (np.linspace(0, T-1, N) would also end on the last frame; we keep HF's rule so our frames equal HF's.) Qwen2-VL's
video processor has its own rule (N rounded to a multiple of the temporal patch, float steps); a processor passes its
`sample_frames` in as `sample_indices_fn` and is then followed exactly.

Memory: packets are decoded one at a time and only the sampled frames are converted and kept, so a long video costs
one decoded frame plus the N kept ones. Decoding stops after the last sampled frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InputError, check_file, first_line
from .limits import MediaLimits

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
# The demuxer each extension gets (a data URL's type decides its extension): FFmpeg never probes the content for
# another one, so an MPEG-TS stream or an ffconcat list (which opens the files it names) sent as video/mp4 is refused.
DEMUXERS = {".mp4": "mp4", ".mov": "mov", ".webm": "webm", ".mkv": "matroska", ".avi": "avi"}
# The decoders FFmpeg may run, whatever the container holds: what cameras, phones, screen recorders and the web
# produce. Every other FFmpeg decoder (hundreds, some rarely exercised) stays out of reach of a request.
VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores")


@dataclass
class Video:
    frames: np.ndarray  # (F, H, W, 3) uint8 RGB, the sampled frames in order
    indices: list[int]  # their frame numbers in the file (presentation order, from 0)
    timestamps: list[float]  # their presentation times in seconds
    fps: float | None  # the stream's average frame rate
    total_frames: int  # frames in the file (header count, or packets counted when the header has none)
    path: str

    @property
    def sampled_fps(self) -> float | None:
        """HF's `VideoMetadata.sampled_fps`: sampled frames per second of video, N / T * fps."""
        return None if self.fps is None else len(self.indices) / self.total_frames * self.fps

    @property
    def metadata(self):
        """The `transformers.video_utils.VideoMetadata` that HF's `load_video` returns for the same sampling;
        processors read `fps` and `frames_indices` from it (Qwen2.5-VL's second_per_grid_ts)."""
        from transformers.video_utils import VideoMetadata

        return VideoMetadata(
            total_num_frames=self.total_frames,
            fps=self.fps,
            width=int(self.frames.shape[2]),
            height=int(self.frames.shape[1]),
            duration=self.total_frames / self.fps if self.fps else None,
            video_backend="pyav",
            frames_indices=list(self.indices),
        )


def uniform_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """HF's default sampling: frame i*T//N for i < N (N is capped at T)."""
    n = min(num_frames, total_frames)
    return np.arange(n, dtype=int) * total_frames // n


def check_sampling(num_frames: int | None, fps: float | None) -> None:
    if num_frames is not None and fps is not None:
        raise InputError("give either --num-frames or --fps, not both")
    if num_frames is not None and num_frames <= 0:
        raise InputError(f"--num-frames must be a positive number of frames, got {num_frames}")
    if fps is not None and not fps > 0:
        raise InputError(f"--fps must be > 0, got {fps}")


def sampler(num_frames: int | None = None, fps: float | None = None, sample_frames: Callable | None = None):
    """A `sample_indices_fn(metadata) -> indices` for `load_video`. `sample_frames` is a video processor's
    `sample_frames(metadata, num_frames=, fps=)` (HF's or ours); without it HF's default rule applies. Requests
    beyond the video are capped instead of failing as in HF: N at the frame count, fps at the video's rate."""
    check_sampling(num_frames, fps)

    def sample(metadata) -> list[int]:
        total = metadata.total_num_frames
        n = None if num_frames is None else min(num_frames, total)
        rate = None if fps is None else min(fps, metadata.fps) if metadata.fps else fps
        if rate is not None and not metadata.fps:
            raise InputError("cannot sample by --fps: the video does not state its frame rate; use --num-frames")
        if sample_frames is not None:
            indices = sample_frames(metadata, num_frames=n, fps=rate)
        elif n is not None:
            indices = uniform_indices(total, n)
        elif rate is not None:  # HF: N = int(T / video_fps * fps), at least 1
            indices = uniform_indices(total, max(1, int(total / metadata.fps * rate)))
        else:
            indices = np.arange(total)
        return [int(i) for i in indices]

    return sample


def load_video(
    path,
    num_frames: int | None = None,
    fps: float | None = None,
    sample_indices_fn: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    limits: MediaLimits = MediaLimits(),
) -> Video:
    """Decode the frames of `path` chosen by `sample_indices_fn(metadata) -> sorted indices` (default:
    `sampler(num_frames, fps)`; neither given: every frame). `progress(decoded, needed)` is called every 64 decoded
    frames; an exception it raises abandons the decoding (how a cancel or a deadline stops it). Raises InputError for
    a missing / unsupported / unreadable / truncated file, one without frames, or one past `limits` (checked from the
    header and the sampled indices before any frame is decoded)."""
    import av

    path = check_file(path, "video", VIDEO_EXTENSIONS)
    demuxer = DEMUXERS[path.suffix.lower()]
    sample_indices_fn = sample_indices_fn or sampler(num_frames, fps)
    try:
        with av.open(str(path), format=demuxer) as container:
            if not container.streams.video:
                raise InputError(f"video {path} has no decodable frames (no video stream)")
            stream = container.streams.video[0]
            if stream.codec_context.name not in VIDEO_CODECS:
                raise InputError(
                    f"video {path} is coded as {stream.codec_context.name}, which is not read here; re-encode it "
                    f"as one of {', '.join(VIDEO_CODECS)}"
                )
            rate = stream.average_rate or stream.guessed_rate
            video_fps = float(rate) if rate else None
            pixels = (stream.width or 0) * (stream.height or 0)
            if pixels > limits.video_frame_pixels:
                raise InputError(
                    f"video {path} is {stream.width} x {stream.height} pixels a frame, more than the "
                    f"{limits.video_frame_pixels:,} allowed; downscale it"
                )
            total = stream.frames or _count_packets(path, demuxer, limits.video_frames)
            if total <= 0:
                raise InputError(f"video {path} has no decodable frames")
            if total > limits.video_frames:
                raise InputError(
                    f"video {path} has {total:,} frames, more than the {limits.video_frames:,} allowed; cut it shorter"
                )
            try:
                indices = [int(i) for i in sample_indices_fn(_metadata(total, video_fps, stream))]
            except ValueError as err:  # a processor's sampling rule refusing this video
                raise InputError(f"cannot sample frames from {path}: {first_line(err)}") from None
            if len(indices) > limits.sampled_frames:
                raise InputError(
                    f"sampling {path} would take {len(indices):,} frames, more than the {limits.sampled_frames:,} "
                    "allowed; sample fewer (--num-frames, a lower --fps)"
                )
            if len(indices) * pixels > limits.sampled_video_pixels:
                raise InputError(
                    f"sampling {len(indices)} frames of {stream.width} x {stream.height} from {path} would hold "
                    f"{len(indices) * pixels:,} pixels, more than the {limits.sampled_video_pixels:,} allowed; "
                    "sample fewer frames (--num-frames, a lower --fps) or downscale the video"
                )
            frames, times = _decode(container, stream, indices, progress, path)
    except InputError:
        raise
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(
            f"cannot read video {path}: corrupt, truncated or not a {demuxer} video ({first_line(err)})"
        ) from None
    if not frames:
        raise InputError(f"video {path} has no decodable frames")
    if len(frames) < len(indices):
        raise InputError(
            f"video {path} is truncated or corrupt: its header lists {total} frames but frame "
            f"{indices[len(frames)]} cannot be decoded"
        )
    return Video(np.stack(frames), list(indices), times, video_fps, total, str(path))


def _metadata(total: int, fps: float | None, stream):
    from transformers.video_utils import VideoMetadata

    return VideoMetadata(
        total_num_frames=total,
        fps=fps,
        width=stream.width,
        height=stream.height,
        duration=total / fps if fps else None,
        video_backend="pyav",
    )


def _count_packets(path, demuxer: str, most: int) -> int:
    """Containers like webm/mkv do not store a frame count; demuxing (no decoding) counts the frames cheaply, and
    stops one past `most`."""
    import av

    count = 0
    with av.open(str(path), format=demuxer) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            count += packet.size > 0
            if count > most:
                break
    return count


def _decode(container, stream, indices: list[int], progress, path="video") -> tuple[list[np.ndarray], list[float]]:
    """The frames at `indices` (sorted; repeats allowed) and their times, up to the first one the file lacks. Every
    sampled frame must have the header's size: a stream may change its resolution mid-way (a later frame larger than
    the header's limit checked, or frames that cannot be stacked), which is refused."""
    wanted: dict[int, list[int]] = {}
    for position, index in enumerate(indices):
        wanted.setdefault(index, []).append(position)
    frames: list = [None] * len(indices)
    times = [0.0] * len(indices)
    last = max(indices, default=-1)
    stream.thread_type = "AUTO"  # frame-threaded decoding; the frames are identical
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
            if (frame.width, frame.height) != (stream.width, stream.height):
                raise InputError(
                    f"video {path} changes its frame size mid-stream ({stream.width} x {stream.height}, then "
                    f"{frame.width} x {frame.height} at frame {i}); re-encode it at one size"
                )
            rgb = frame.to_ndarray(format="rgb24")
            for position in wanted[i]:
                frames[position], times[position] = rgb, float(frame.time or 0.0)
        if progress is not None and (i % 64 == 0 or i == last):
            progress(i + 1, last + 1)
        if i >= last:
            break
    decoded = next((n for n, f in enumerate(frames) if f is None), len(frames))
    return frames[:decoded], times[:decoded]
