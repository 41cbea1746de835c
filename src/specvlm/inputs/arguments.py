"""The input options of `specvlm generate` / `serve` / `bench`, defined without importing torch or transformers (so
that a bad option fails at once); `pipeline.inputs_from_args` turns them into model inputs."""

from __future__ import annotations

DEFAULT_NUM_FRAMES = 8


def add_input_arguments(parser) -> None:
    g = parser.add_argument_group("inputs")
    g.add_argument("--video", metavar="FILE", help="video file (mp4, webm, mkv, avi, mov)")
    g.add_argument(
        "--image",
        metavar="FILE",
        action="append",
        default=[],
        help="image file (jpg, png, webp); repeat for several images",
    )
    if "--prompt" not in parser._option_string_actions:  # the caller may already define it
        g.add_argument("--prompt", metavar="TEXT", help="the question or instruction")
    add_frame_arguments(g)


def add_frame_arguments(g) -> None:
    """How videos are sampled and images sized (`specvlm serve` applies them to every request)."""
    g.add_argument(
        "--num-frames",
        type=int,
        default=None,
        metavar="N",
        help=f"video frames sampled uniformly over the whole video (default {DEFAULT_NUM_FRAMES})",
    )
    g.add_argument(
        "--fps",
        type=float,
        default=None,
        metavar="X",
        help="sample X frames per second of video instead of a fixed --num-frames",
    )
    g.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="Qwen-VL: resize each image / frame to at most N pixels (fewer visual tokens)",
    )
    # a cheaper view of the same media for a draft model (sparse -> dense); the target's view is the options above
    g.add_argument(
        "--draft-num-frames",
        type=int,
        default=None,
        metavar="N",
        help="the draft model reads the video sampled to N frames (default: the target's frames)",
    )
    g.add_argument(
        "--draft-fps",
        type=float,
        default=None,
        metavar="X",
        help="the draft model reads X frames per second of video (default: the target's frames)",
    )
    g.add_argument(
        "--draft-max-pixels",
        type=int,
        default=None,
        metavar="N",
        help="Qwen-VL drafts: resize the draft's images / frames to at most N pixels (default: --max-pixels)",
    )
