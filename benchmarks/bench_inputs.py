"""Video decode + preprocess time per frame: PyAV decoding of uniformly sampled frames, then the family's processor
(ours, without torchvision) at the real checkpoints' sizes: LLaVA-OneVision SigLIP 384 px, Qwen2.5-VL smart-resize
within its default video pixel bounds.

    python benchmarks/bench_inputs.py [--frames 8 32] [--sizes 640x360 1280x720] [--record]

The clips are written first (H.264, 30 fps, 10 s, moving content so the codec does real work). Times are
medians of 3 after a warm-up. Decoding does not seek: it decodes every frame up to the last sampled one (keeping
only the sampled ones), so the decode time per sampled frame is the whole clip's decode time divided by N.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from specvlm.inputs import build_inputs, load_processor, load_video
from specvlm.inputs.testing import save_tiny_processor, write_video

from common import median_time, record, table

# The released checkpoints' video settings (preprocessor configs of llava-onevision-qwen2-*-ov-hf and
# Qwen2.5-VL-*-Instruct): SigLIP 384 px; Qwen videos between 128·28² and 768·28² pixels per frame.
PROCESSORS = {
    "llava_onevision": dict(image_size=384),
    "qwen2_5_vl": dict(min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28),
}


def moving_frames(n: int, width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (xx + 4 * i) % 256
        frames[i, ..., 1] = (yy * 2 + 3 * i) % 256
        frames[i, ..., 2] = ((xx // 32 + yy // 32 + i // 8) % 2) * 200
    return frames


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--sizes", nargs="+", default=["640x360", "1280x720"])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        processors = {
            family: load_processor(save_tiny_processor(tmp / family, family, **kw)) for family, kw in PROCESSORS.items()
        }
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            clip = write_video(tmp / f"clip_{size}.mp4", moving_frames(30 * args.seconds, width, height), fps=30)
            for n in args.frames:
                video, decode_s = median_time(lambda clip=clip, n=n: load_video(clip, num_frames=n))
                for family, processor in processors.items():
                    inputs, prep_s = median_time(
                        lambda processor=processor, video=video: build_inputs(processor, "What happens?", video=video)
                    )
                    visual = int((inputs["input_ids"] == processor.video_token_id).sum())
                    rows.append(
                        [size, n, family, visual, 1e3 * decode_s / n, 1e3 * prep_s / n, 1e3 * (decode_s + prep_s) / n]
                    )
                    print(rows[-1], flush=True)
    headers = [
        "video",
        "frames",
        "processor",
        "visual tokens",
        "decode ms/frame",
        "preprocess ms/frame",
        "total ms/frame",
    ]
    body = table(headers, rows)
    print(body)
    if args.record:
        record(
            "inputs",
            "Inputs: video decode + preprocess time per frame",
            body
            + f"""

{args.seconds} s H.264 clips at 30 fps, frames sampled uniformly over the whole clip; median of 3 runs after a
warm-up. Preprocessing is our torchvision-free processor at the released checkpoints' sizes (LLaVA-OneVision:
SigLIP 384 px, 2×2-pooled video tokens; Qwen2.5-VL: smart-resize to multiples of 28 within 128·28²..768·28²
pixels, temporal patch 2). Decoding does not seek: every frame up to the last sampled one is decoded (only the
sampled ones are kept), so "decode ms/frame" is the whole clip's decode time divided by the frames sampled, and
falls as more frames are sampled from the same clip.""",
        )


if __name__ == "__main__":
    main()
