"""`MediaLimits`: how much media one call may make us decode, each limit checked from a file's header (or a demux
count, which decodes nothing) before any pixel is decoded. The defaults bind `specvlm generate` and the server alike;
`specvlm serve` takes each as a flag (a hostile client controls the files, so every size it controls is bounded).

Why each bound: a 23 KiB PNG can declare 12000 x 12000 pixels (412 MiB decoded); a sampled video is decoded up to
its last sampled frame, so a file's frame count bounds the decoding time, and a tiny frame compresses to a few bytes
(48 MiB of 16 x 16 frames is ~4 M frames, minutes of decoding); the sampled frames are held at full resolution until
the processor resizes them, so frames x pixels bounds the memory, and the number of sampled frames bounds what the
processor makes of them (--fps sampling picks duration x fps frames, and LLaVA-OneVision caps none).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    # pixels an image may have: 40 M is 6324 x 6324, more than any processor keeps (Qwen2.5-VL resizes to at most
    # 12.8 M by default, LLaVA-OneVision's tiles far fewer)
    image_pixels: int = 40_000_000
    video_frames: int = 100_000  # frames in a video file: 55 minutes at 30 fps
    video_frame_pixels: int = 4096 * 2160  # pixels a video frame: 4K (DCI)
    # frames sampled from a video, each resized by the processor to the vision tower's size (LLaVA-OneVision: 384 x
    # 384, 1.7 MB as float32): --fps sampling picks duration x fps of them. 768: Qwen2-VL's own max_frames.
    sampled_frames: int = 768
    # sampled frames x pixels a frame, held as RGB before the processor: 256 full-HD frames (1.6 GB)
    sampled_video_pixels: int = 256 * 1920 * 1080

    def __post_init__(self):
        for name, value in vars(self).items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"MediaLimits.{name} must be a positive number, got {value!r}")
