"""Video decoding: formats, uniform / fps sampling, timestamps, HF parity of the frames, and every bad input."""

import os

import numpy as np
import pytest

from specvlm.inputs import InputError, MediaLimits, load_video, sampler, uniform_indices
from specvlm.inputs.testing import frame_index, index_frames, write_video
from specvlm.inputs.video_processors import QwenVLVideoProcessor


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """30 frames at 10 fps, 64x48, each frame carrying its own index."""
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", index_frames(30), fps=10)


@pytest.mark.parametrize("ext", [".mp4", ".webm", ".mkv", ".avi", ".mov"])
def test_every_container_decodes_the_sampled_frames(tmp_path, ext):
    path = write_video(tmp_path / f"c{ext}", index_frames(20), fps=10)
    video = load_video(path, num_frames=4)
    assert video.frames.shape == (4, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.total_frames == 20  # webm / mkv have no header count: packets are counted
    assert video.indices == [0, 5, 10, 15]
    assert [frame_index(f) for f in video.frames] == video.indices
    assert video.fps == pytest.approx(10.0)


def test_uniform_indices_are_hf_default_rule(clip, hf_media_rules):
    from transformers.video_utils import VideoMetadata, default_sample_indices_fn

    for total, n in [(30, 8), (30, 7), (300, 16), (10, 10), (5, 3)]:
        hf = default_sample_indices_fn(VideoMetadata(total_num_frames=total, fps=10.0), num_frames=n)
        assert uniform_indices(total, n).tolist() == hf.tolist()


def test_uniform_indices():
    assert uniform_indices(30, 8).tolist() == [0, 3, 7, 11, 15, 18, 22, 26]  # i * 30 // 8
    assert uniform_indices(4, 8).tolist() == [0, 1, 2, 3]  # capped at the frame count


def test_frames_and_metadata_equal_hf_load_video(clip, hf_media_rules):
    from transformers.video_utils import load_video as hf_load_video

    ours = load_video(clip, num_frames=8)
    frames, metadata = hf_load_video(str(clip), num_frames=8, backend="pyav")
    assert np.array_equal(ours.frames, frames)
    assert ours.indices == list(metadata.frames_indices)
    assert ours.metadata.total_num_frames == metadata.total_num_frames and ours.metadata.fps == metadata.fps
    assert ours.metadata.sampled_fps == pytest.approx(metadata.sampled_fps)


def test_timestamps_are_presentation_times(clip):
    video = load_video(clip, num_frames=5)
    assert video.indices == [0, 6, 12, 18, 24]
    assert video.timestamps == pytest.approx([i / 10 for i in video.indices])
    assert video.sampled_fps == pytest.approx(5 / 30 * 10)


def test_fps_sampling(clip):
    video = load_video(clip, fps=2)  # 3 s at 2 fps: 6 frames, HF rule int(30 / 10 * 2)
    assert len(video.indices) == 6 and video.indices == uniform_indices(30, 6).tolist()
    assert [frame_index(f) for f in video.frames] == video.indices
    assert len(load_video(clip, fps=50).indices) == 30  # capped at the video's own rate


def test_no_sampling_argument_decodes_every_frame(clip):
    assert load_video(clip).indices == list(range(30))


def test_more_frames_than_the_video_has_gives_every_frame(clip):
    assert load_video(clip, num_frames=100).indices == list(range(30))


def test_decoding_stops_after_the_last_sampled_frame(clip):
    seen = []
    load_video(clip, sample_indices_fn=lambda md: [0, 2, 4], progress=lambda done, needed: seen.append(done))
    assert max(seen) == 5  # frames 0..4 decoded, not the other 25


def test_qwen_sampling_rule():
    """Qwen2VLVideoProcessor.sample_frames by hand: N rounded to a multiple of 2, frames at float steps T / N."""
    from transformers.video_utils import VideoMetadata

    qwen = QwenVLVideoProcessor()
    md = VideoMetadata(total_num_frames=30, fps=10.0)
    assert qwen.sample_frames(md, num_frames=8).tolist() == [0, 3, 7, 11, 15, 18, 22, 26]
    assert qwen.sample_frames(md, num_frames=5).tolist() == [0, 7, 15, 22]  # round(2.5) * 2 = 4
    assert qwen.sample_frames(md, fps=1.0).tolist() == [0, 7, 15, 22]  # 3 s -> min_frames 4
    assert qwen.sample_frames(md, fps=2.0).tolist() == [0, 5, 10, 15, 20, 25]
    assert qwen.sample_frames(VideoMetadata(total_num_frames=1, fps=10.0), num_frames=1).tolist() == [0]
    # N rounding to 0 (HF divides by zero there) takes one temporal patch, not the whole video
    assert qwen.sample_frames(md, num_frames=1).tolist() == [0, 15]
    assert qwen.sample_frames(VideoMetadata(total_num_frames=300, fps=30.0), num_frames=1).tolist() == [0, 150]
    assert qwen.sample_frames(md, num_frames=40).tolist() == list(range(30))  # capped at the video's 30


def test_processor_sampler_is_followed(clip):
    sample = sampler(num_frames=5, sample_frames=QwenVLVideoProcessor().sample_frames)
    assert load_video(clip, sample_indices_fn=sample).indices == [0, 7, 15, 22]


# ---- bad input: one line, InputError -------------------------------------------------------------------------------
def _error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_missing_file(tmp_path):
    assert "does not exist" in _error(lambda: load_video(tmp_path / "nope.mp4"))


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "d.mp4").mkdir()
    assert "directory" in _error(lambda: load_video(tmp_path / "d.mp4"))


def test_unsupported_extension(tmp_path):
    (tmp_path / "clip.gif").write_bytes(b"GIF89a")
    assert "unsupported format" in _error(lambda: load_video(tmp_path / "clip.gif"))


@pytest.mark.parametrize("content", [b"", b"hello, not a video", os.urandom(4096)])
def test_unreadable_file(tmp_path, content):
    (tmp_path / "bad.mp4").write_bytes(content)
    assert "cannot read video" in _error(lambda: load_video(tmp_path / "bad.mp4"))


def _faststart_noise_mp4(path, frames=20):
    """An mp4 whose header (moov) comes first and whose frames are noise, so every byte cut or zeroed hits data."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_truncated(tmp_path):
    path = _faststart_noise_mp4(tmp_path / "full.mp4")
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    assert "truncated" in _error(lambda: load_video(tmp_path / "cut.mp4", num_frames=8))


def test_corrupt_middle(tmp_path):
    path = _faststart_noise_mp4(tmp_path / "mid.mp4")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)
    path.write_bytes(bytes(data))
    assert "corrupt" in _error(lambda: load_video(path))


def test_zero_decodable_frames(tmp_path):
    import av

    path = tmp_path / "empty.mp4"  # a valid file whose video track never got a frame
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    assert "no decodable frames" in _error(lambda: load_video(path))


@pytest.mark.parametrize("n", [0, -3])
def test_num_frames_must_be_positive(clip, n):
    assert "--num-frames" in _error(lambda: load_video(clip, num_frames=n))


@pytest.mark.parametrize("fps", [0, -1.5])
def test_fps_must_be_positive(clip, fps):
    assert "--fps" in _error(lambda: load_video(clip, fps=fps))


def test_num_frames_and_fps_together(clip):
    assert "not both" in _error(lambda: load_video(clip, num_frames=4, fps=2))


@pytest.mark.parametrize("ext", [".mp4", ".webm"])  # a header frame count, and packets counted by demuxing
def test_too_many_frames_or_pixels_are_refused_before_any_decoding(tmp_path, ext, monkeypatch):
    """A file's frame count bounds the decoding time and a frame's size its memory: both are read before any frame
    is decoded (here with the limits lowered to a small clip's size)."""
    import specvlm.inputs.video as video

    path = write_video(tmp_path / f"c{ext}", index_frames(20), fps=10)
    decoded = []
    monkeypatch.setattr(video, "_decode", lambda *args: decoded.append(args) or ([], []))
    with pytest.raises(InputError, match="has 20 frames, more than the 19 allowed"):
        load_video(path, num_frames=4, limits=MediaLimits(video_frames=19))
    with pytest.raises(InputError, match="64 x 48 pixels a frame"):
        load_video(path, num_frames=4, limits=MediaLimits(video_frames=20, video_frame_pixels=64 * 48 - 1))
    with pytest.raises(InputError, match="would take 4 frames, more than the 3 allowed"):
        load_video(path, num_frames=4, limits=MediaLimits(sampled_frames=3))
    with pytest.raises(InputError, match="sampling 4 frames of 64 x 48 .* 12,288 pixels, more than the 12,287"):
        load_video(path, num_frames=4, limits=MediaLimits(sampled_video_pixels=4 * 64 * 48 - 1))
    assert decoded == []
    with pytest.raises(InputError, match="no decodable frames"):  # at the limits: decoded (here by the stub)
        load_video(path, num_frames=4, limits=MediaLimits(video_frames=20, sampled_video_pixels=4 * 64 * 48))
    assert len(decoded) == 1


def test_a_raising_progress_callback_abandons_the_decoding(tmp_path):
    """How the server's cancel and deadline stop a long decode: the progress callback raises."""

    class Abandon(Exception):
        pass

    calls = []

    def progress(done, needed):
        calls.append(done)
        raise Abandon()

    path = write_video(tmp_path / "c.mp4", index_frames(200), fps=10)
    with pytest.raises(Abandon):
        load_video(path, num_frames=4, progress=progress)
    assert calls == [1]


def test_a_file_is_read_only_by_the_demuxer_its_extension_names(tmp_path):
    """No content probing: an MPEG-TS stream or an ffconcat list (which would open the files it names) called .mp4
    is refused, as a data URL of type video/mp4 holding one would be; inside, only the allowed codecs decode."""
    import av

    stream_file = tmp_path / "ts.mp4"
    with av.open(str(stream_file), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in index_frames(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    good = write_video(tmp_path / "good.mp4", index_frames(10), fps=10)
    concat = tmp_path / "concat.mp4"
    concat.write_text(f"ffconcat version 1.0\nfile '{good}'\n")
    for path in (stream_file, concat):
        with pytest.raises(InputError, match="not a mp4 video"):
            load_video(path, num_frames=2)
    assert load_video(good, num_frames=2).indices == [0, 5]
    exotic = write_video(tmp_path / "exotic.mp4", index_frames(10), fps=10, codec="mpeg2video")
    with pytest.raises(InputError, match="coded as mpeg2video, which is not read here"):  # decoders: an allowlist
        load_video(exotic, num_frames=2)


def test_a_stream_that_changes_its_frame_size_is_refused_in_one_line():
    """The header's size is what the limits checked and what the frames are stacked at: a sampled frame of another
    size (a resolution change mid-stream) is a clear error, not a crash of np.stack (a 500 in the server)."""
    from types import SimpleNamespace

    from specvlm.inputs.video import _decode

    def frame(width, height):
        return SimpleNamespace(
            width=width, height=height, time=0.0, to_ndarray=lambda format: np.zeros((height, width, 3))
        )

    stream = SimpleNamespace(width=64, height=48, thread_type=None)
    container = SimpleNamespace(decode=lambda s: iter([frame(64, 48), frame(64, 48), frame(1280, 720)]))
    with pytest.raises(InputError, match="changes its frame size mid-stream \\(64 x 48, then 1280 x 720 at frame 2\\)"):
        _decode(container, stream, [0, 2], None, "clip.mp4")
    container = SimpleNamespace(decode=lambda s: iter([frame(64, 48), frame(64, 48), frame(64, 48)]))
    frames, _ = _decode(container, stream, [0, 2], None, "clip.mp4")
    assert len(frames) == 2
