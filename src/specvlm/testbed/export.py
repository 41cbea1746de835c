"""Writing a world to disk: H.264 mp4 clips plus JSONL conversations, split train/validation/test.

Layout of `out_dir`:

    world.json                      generation parameters and counts (a rerun with the same ones reuses the files)
    videos/clip_00000.mp4 ...       libx264, yuv420p, `fps` frames per second, size x size
    train.jsonl validation.jsonl test.jsonl
                                    one record per (clip, conversation):
                                    {"id", "clip", "video" (relative to out_dir), "conversation": [{"role": "user",
                                     "content": question}, {"role": "assistant", "content": answer}], "kind",
                                     "answer" (canonical short answer; null for captions), "split"}
    clips.jsonl                     one record per clip: {"id", "split", "video", "frames", "fps", "size", "scene"}
                                    where "scene" is the event log and object table every answer comes from

Clip i depends only on (seed, i): its story on np.random.default_rng([seed, i]), its wording on
default_rng([seed, i, 1]); its split is i % 10 == 8 -> validation, 9 -> test, else train. So a bigger world starts
with the clips of a smaller one, and the same seed always gives byte-identical JSONL, identical rendered frames and
identical decoded frames (the mp4s are lossless H.264 of them: see `write_mp4`; their bytes may still differ).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from .language import CAPTION_PROMPTS, DESCRIBE_PROMPT, conversations
from .render import render_clip
from .world import WORLD_TEXTURES, Scene, simulate

WORLD_VERSION = 3
VIDEO_CODING = "h264-lossless"  # in world.json: a world written with lossy clips (before issue 25) is not reused
SPLITS = ("train", "validation", "test")
EXPLAIN_PROMPT = "Please give a detailed and reasonable explanation for the answer."  # EagleVLM's image prompt


def split_of(index: int) -> str:
    r = index % 10
    return "validation" if r == 8 else "test" if r == 9 else "train"


def clip_id(index: int) -> str:
    return f"clip_{index:05d}"


def clip_scene(
    index: int, seed: int = 0, frames: tuple[int, int] = (16, 48), fps: int = 8, ball: str = "small"
) -> Scene:
    """Clip `index`'s story in the world `seed` (what its frames show), without its conversations."""
    return simulate(np.random.default_rng([seed, index]), tuple(frames), fps, ball)


def make_clip(
    index: int,
    seed: int = 0,
    frames: tuple[int, int] = (16, 48),
    fps: int = 8,
    questions: int = 5,
    ball: str = "small",
) -> tuple[Scene, list[dict]]:
    """Clip `index` of the world `seed`: its scene and its conversations (no pixels)."""
    scene = clip_scene(index, seed, frames, fps, ball)
    return scene, conversations(scene, np.random.default_rng([seed, index, 1]), questions)


def records(index: int, convs: list[dict], video: str) -> list[dict]:
    cid, split = clip_id(index), split_of(index)
    return [
        {
            "id": f"{cid}-{k:02d}",
            "clip": cid,
            "video": video,
            "conversation": [
                {"role": "user", "content": c["question"]},
                {"role": "assistant", "content": c["answer_text"]},
            ],
            "kind": c["kind"],
            "answer": c["answer"],
            "split": split,
        }
        for k, c in enumerate(convs)
    ]


def rgb_to_yuv420p(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, H * 3 // 2, W) uint8 planar yuv420p, BT.601 limited range (what decoders assume
    for an untagged H.264 stream), chroma averaged over 2x2 blocks. Integer arithmetic, so exactly reproducible:
    FFmpeg's own RGB->YUV conversion inside PyAV was seen to vary from run to run on a loaded machine."""
    f = frames.astype(np.int32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    n, h, w = y.shape

    def half(c):
        return (c.reshape(n, h // 2, 2, w // 2, 2).sum(axis=(2, 4)) + 2) // 4

    planes = [y.reshape(n, -1), half(u).reshape(n, -1), half(v).reshape(n, -1)]
    return np.concatenate(planes, axis=1).clip(0, 255).astype(np.uint8).reshape(n, h * 3 // 2, w)


def write_mp4(path, frames: np.ndarray, fps: int = 8) -> Path:
    """(F, H, W, 3) uint8 RGB (H, W even) -> lossless H.264 (libx264 at qp 0, yuv420p) mp4 at `fps`.

    Lossless because the build trains on these files as decoded: a decoder returns exactly the yuv420p planes
    `rgb_to_yuv420p` made, whatever bitstream the encoder chose. With lossy coding (crf 18 until December 2026) the
    decoded pixels were the encoder's choice, and libx264 in PyAV's wheel was seen to encode the same frames
    differently now and then (most often a process's first encode; pixels up to ~34 levels apart), so two builds of
    one seed could train on different pixels (issue 25). Lossless costs ~1.7x the bytes (~20 KB a 224 px clip)."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"qp": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        for plane in rgb_to_yuv420p(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(plane, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _build_clip(job: tuple) -> tuple[int, list[dict], dict]:
    index, out_dir, seed, frames, size, fps, questions, ball, texture = job
    scene, convs = make_clip(index, seed, frames, fps, questions, ball)
    scene = replace(scene, texture=texture)  # a rendering choice: the story and its words are the same on any
    video = f"videos/{clip_id(index)}.mp4"
    write_mp4(Path(out_dir) / video, render_clip(scene, size), fps)
    meta = {
        "id": clip_id(index),
        "split": split_of(index),
        "video": video,
        "frames": scene.n_frames,
        "fps": fps,
        "size": size,
        "scene": scene.to_dict(),
    }
    return index, records(index, convs, video), meta


def generate_world(
    out_dir,
    n_clips: int,
    seed: int = 0,
    frames: tuple[int, int] = (16, 48),
    size: int = 224,
    fps: int = 8,
    questions: int = 5,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    reuse: bool = True,
    ball: str = "small",
    texture: str = "plain",
) -> dict:
    """Generate `n_clips` clips into `out_dir` (layout in the module docstring) and return world.json's content.
    `frames`: (min, max) frames per clip; `size`: frame side in pixels (even); `questions`: question
    conversations per clip besides the caption; `ball`: the balls' size (world.SIZES); `texture`: the background's
    (world.WORLD_TEXTURES);
    `workers` > 1 renders and encodes in that many processes (same
    output). With `reuse`, a folder already holding this exact world is returned as is."""
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number >= 32, got {size}")
    if texture not in WORLD_TEXTURES:
        raise ValueError(f"texture must be one of {list(WORLD_TEXTURES)}, got {texture!r}")
    out = Path(out_dir)
    params = {
        "version": WORLD_VERSION,
        "video": VIDEO_CODING,
        "seed": seed,
        "n_clips": n_clips,
        "frames": list(frames),
        "size": size,
        "fps": fps,
        "questions": questions,
        "ball": ball,
        "texture": texture,
    }
    info_path = out / "world.json"
    if reuse and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except ValueError:
            info = {}
        if (
            {k: ({"texture": "plain"} | info).get(k) for k in params} == params  # worlds before textures: plain
            and all((out / "videos" / f"{clip_id(i)}.mp4").is_file() for i in range(n_clips))
            and all((out / f"{s}.jsonl").is_file() for s in SPLITS)
        ):
            return info
    (out / "videos").mkdir(parents=True, exist_ok=True)
    wanted = {f"{clip_id(i)}.mp4" for i in range(n_clips)}
    for stale in (out / "videos").glob("clip_*.mp4"):
        if stale.name not in wanted:
            stale.unlink()
    jobs = [(i, str(out), seed, tuple(frames), size, fps, questions, ball, texture) for i in range(n_clips)]
    results: list = [None] * n_clips
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            for done, res in enumerate(pool.map(_build_clip, jobs, chunksize=4), 1):
                results[res[0]] = res
                if progress:
                    progress(done, n_clips)
    else:
        for done, job in enumerate(jobs, 1):
            res = _build_clip(job)
            results[res[0]] = res
            if progress:
                progress(done, n_clips)
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for _, recs, _meta in results:
        by_split[recs[0]["split"]].extend(recs)
    for s in SPLITS:
        _write_jsonl(out / f"{s}.jsonl", by_split[s])
    _write_jsonl(out / "clips.jsonl", [meta for _, _, meta in results])
    info = dict(
        params,
        clips={s: sum(split_of(i) == s for i in range(n_clips)) for s in SPLITS},
        records={s: len(by_split[s]) for s in SPLITS},
    )
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    return info


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_text_corpus(
    source=None,
    *,
    n_clips: int = 2000,
    seed: int = 0,
    frames: tuple[int, int] = (16, 48),
    questions: int = 5,
    prompts: bool = True,
) -> list[str]:
    """Every text of the world, one string per turn, for training a tokenizer. `source`: a world folder or a JSONL
    file of records (their turns are read), or None to simulate `n_clips` clips without rendering (fast: about
    1 ms a clip). With `prompts`, the fixed prompts (ours and the papers') are added once each."""
    texts: list[str] = []
    if source is None:
        for i in range(n_clips):
            _, convs = make_clip(i, seed, frames, questions=questions)
            for c in convs:
                texts += [c["question"], c["answer_text"]]
    else:
        src = Path(source)
        files = [src / f"{s}.jsonl" for s in SPLITS] if src.is_dir() else [src]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist")
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        texts += [turn["content"] for turn in json.loads(line)["conversation"]]
    if prompts:
        texts += [p for p in dict.fromkeys((*CAPTION_PROMPTS, DESCRIBE_PROMPT, EXPLAIN_PROMPT))]
    return texts
