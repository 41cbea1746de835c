"""`specvlm serve`: the command line. Takes every `specvlm generate` option (models, decoding, pruning, engine,
frames), plus the server's own; checks them all, binds the port and loads the models, then runs uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from ..errors import SpecVLMError
from .worker import STUCK_TIMEOUT_S

DEFAULT_MAX_BATCH = 16  # rows of the KV cache the server allocates: memory grows with it (see DESIGN, Serving)
MAX_BATCH_LIMIT = 256

DESCRIPTION = """\
Serve the target model behind an OpenAI-compatible HTTP API (POST /v1/chat/completions, streamed or not;
GET /v1/models, /health, /ready, /metrics, /openapi.json), decoding with lossless speculative decoding: every
answer is exactly the target's own (greedy: token for token; sampling: the same distribution).

User messages alone are one user turn, as `specvlm generate` takes it: text parts (the question), images
("image_url": data:image/...;base64 URLs) and at most one video (vLLM's "video_url": a data:video/mp4;base64 URL),
or local files under --allowed-local-media-path; a greedy request answers what `specvlm generate` prints for the
same media and prompt. System / developer messages and conversations with assistant turns are rendered by the
model's chat template, parts in order (media in user turns; one video per request)."""

EPILOG = """\
The decoding options (--max-new-tokens, --temperature, --top-p, --top-k) are the defaults of requests that leave
max_tokens, temperature, top_p or top_k out. The frame options apply to every request. One model worker decodes up
to --max-batch requests together (continuous batching: a request is prefilled on its own, then joins the running
batch at the next round, and leaves it when it ends); more wait in a queue of --max-queue (then 429).

example (the bundled testbed pair; README.md, "Serving", has curl and openai client examples):
  ASSETS=$(python -c "import specvlm.testbed.assets as a; print(a.HERE)")
  specvlm serve --target $ASSETS/models/qwen2_5_vl/target --draft $ASSETS/models/qwen2_5_vl/draft \\
      --served-model-name testbed --allowed-local-media-path $ASSETS/samples"""


def add_serve_parser(sub) -> None:
    from ..arguments import add_decoding_arguments, add_model_arguments
    from ..inputs.arguments import add_frame_arguments

    p = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible chat completions API, speculatively",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    add_frame_arguments(p.add_argument_group("inputs (applied to every request)"))
    add_decoding_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the server, "
        "use --api-key then)",
    )
    g.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed)")
    g.add_argument(
        "--served-model-name",
        default=None,
        metavar="NAME",
        help="the model id clients send and /v1/models lists (default: --target as given)",
    )
    g.add_argument(
        "--api-key",
        default=os.environ.get("SPECVLM_API_KEY"),
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $SPECVLM_API_KEY, else no key)",
    )
    g.add_argument(
        "--allowed-local-media-path",
        default=None,
        metavar="DIR",
        help="let requests name local image / video files (file:// URLs or absolute paths) inside DIR; "
        "without it only data: URLs are accepted",
    )
    g.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"requests decoded together, one round for all of them at a time (default "
        f"{DEFAULT_MAX_BATCH}; 1: one request at a time)",
    )
    g.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests that may wait while --max-batch others decode (default 64); more get 429",
    )
    g.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="S",
        help="seconds from a request's arrival to its last token, queueing included; later it is "
        "stopped with 504 (default: no limit)",
    )
    g.add_argument(
        "--max-request-bytes",
        type=int,
        default=64 << 20,
        metavar="N",
        help="largest request body, media included (default 67108864 = 64 MiB); larger gets 413",
    )
    g.add_argument(
        "--stuck-timeout",
        type=float,
        default=STUCK_TIMEOUT_S,
        metavar="S",
        help=f"a decoding step or a request's input preparation running longer is a hang: /health answers 503 "
        f"(default {STUCK_TIMEOUT_S:g})",
    )
    g.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server log level (default info: one line per request)",
    )
    add_limit_arguments(p.add_argument_group("limits per request (checked before any pixel is decoded)"))
    p.set_defaults(func=cmd_serve)


# flag -> (MediaLimits field, what it bounds); the defaults are MediaLimits' own
LIMIT_FLAGS = {
    "--max-image-pixels": ("image_pixels", "pixels an image may have, read from its header"),
    "--max-video-frames": ("video_frames", "frames a video file may have (its decoding time)"),
    "--max-video-frame-pixels": ("video_frame_pixels", "pixels a video frame may have"),
    "--max-sampled-frames": ("sampled_frames", "frames sampled from a video (--fps picks duration x fps of them)"),
    "--max-video-pixels": (
        "sampled_video_pixels",
        "sampled frames x pixels a frame (the decoded frames' memory; --fps picks duration x fps frames)",
    ),
}


def add_limit_arguments(g) -> None:
    from ..inputs.limits import MediaLimits
    from .schema import MAX_IMAGES

    g.add_argument(
        "--max-images",
        type=int,
        default=MAX_IMAGES,
        metavar="N",
        help=f"images a request may hold (default {MAX_IMAGES})",
    )
    defaults = MediaLimits()
    for flag, (field, what) in LIMIT_FLAGS.items():
        default = getattr(defaults, field)
        g.add_argument(flag, type=int, default=default, metavar="N", help=f"{what} (default {default:,})")


def media_limits(args):
    """The MediaLimits the limit flags give; a one-line error for a value below 1."""
    from ..arguments import dest
    from ..inputs.limits import MediaLimits

    for flag in ("--max-images", *LIMIT_FLAGS):
        value = getattr(args, dest(flag))
        if value < 1:
            raise SpecVLMError(f"{flag} must be >= 1, got {value}")
    return MediaLimits(**{field: getattr(args, dest(flag)) for flag, (field, _) in LIMIT_FLAGS.items()})


def check_server_options(args) -> Path | None:
    """One-line errors for the server's own options; returns the resolved --allowed-local-media-path."""
    if not 0 <= args.port <= 65535:
        raise SpecVLMError(f"--port must be in 0..65535, got {args.port}")
    if args.max_queue < 0:
        raise SpecVLMError(f"--max-queue must be >= 0, got {args.max_queue}")
    if not 1 <= args.max_batch <= MAX_BATCH_LIMIT:
        raise SpecVLMError(f"--max-batch must be in 1..{MAX_BATCH_LIMIT}, got {args.max_batch}")
    if args.request_timeout is not None and not args.request_timeout > 0:
        raise SpecVLMError(f"--request-timeout must be > 0 seconds, got {args.request_timeout}")
    if args.max_request_bytes < 1:
        raise SpecVLMError(f"--max-request-bytes must be >= 1, got {args.max_request_bytes}")
    if not args.stuck_timeout > 0:
        raise SpecVLMError(f"--stuck-timeout must be > 0 seconds, got {args.stuck_timeout}")
    media_limits(args)
    if args.api_key is not None and not args.api_key.strip():
        raise SpecVLMError("--api-key is empty")
    if args.allowed_local_media_path is None:
        return None
    folder = Path(args.allowed_local_media_path).expanduser()
    if not folder.is_dir():
        raise SpecVLMError(f"--allowed-local-media-path {folder} is not a folder")
    return folder.resolve()


def cmd_serve(args) -> int:
    from ..arguments import check_decoding
    from ..inputs.video import check_sampling
    from ..launcher import is_leader, launched_here

    check_decoding(args)
    check_sampling(args.num_frames, args.fps)
    allowed = check_server_options(args)
    code = launched_here(args)  # --tensor-parallel N: the job of N ranks this process launched has ended
    if code is not None:
        return code
    if not is_leader():  # a rank of a split target: it follows rank 0's batch, which alone speaks and serves
        engine = load_engine(args, lambda msg: None, warm_up=False)
        return engine.follow()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    sock = bind(args.host, args.port)  # before the (slow) model load: a taken port fails at once
    engine = load_engine(args, say)
    return run(args, engine, sock, allowed, say)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SpecVLMError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(128)
    return sock


def load_engine(args, say, warm_up: bool = True):
    """The models the options name, loaded, and the Engine that serves them. Before any weights load, a dry run of
    the input pipeline on a text-only prompt checks the frame options, the processors and the draft's family.
    Without `warm_up` (a follower rank: it repeats rank 0's warm-up) nothing is compiled ahead."""
    from ..arguments import drafts, load_generator, resolve_models
    from ..inputs.pipeline import FrameOptions
    from .engine import Engine, model_inputs
    from .media import TurnFiles

    models = resolve_models(args)
    frames = FrameOptions.from_args(args)
    model_inputs(models, frames, TurnFiles("Hello.", (), None, {}), args.max_new_tokens, drafts(args))
    gen = load_generator(args, models, say, batched=True)
    engine = Engine(models, gen.model, gen.tokenizer, gen, frames, media_limits(args))
    if gen.compile and warm_up:  # CUDA, or --compile on: compile every batch shape before the server says it is healthy
        say(f"compiling the decoding steps for batches of up to {args.max_batch} requests ...")
        rows = engine.warm_up(args.max_batch)
        say(f"compiled in {gen.compile_seconds:.0f}s (batches of {', '.join(map(str, rows))} rows)")
    return engine


def default_decoding(args):
    from .schema import Decoding

    return Decoding(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=None,
        stop=(),
    )


def run(args, engine, sock: socket.socket, allowed: Path | None, say) -> int:
    import uvicorn

    from .app import LOOPBACK_NAMES, Settings, create_app

    _log_to_stderr(args.log_level)
    name = args.served_model_name or args.target
    temp_root = Path(tempfile.mkdtemp(prefix="specvlm-serve-"))
    settings = Settings(
        model_name=name,
        defaults=default_decoding(args),
        temp_root=temp_root,
        api_key=args.api_key,
        allowed_media=allowed,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        request_timeout=args.request_timeout,
        max_request_bytes=args.max_request_bytes,
        local_only=args.host in LOOPBACK_NAMES,
        max_images=args.max_images,
        stuck_timeout=args.stuck_timeout,
    )
    host, port = sock.getsockname()[:2]
    if args.host not in LOOPBACK_NAMES and args.api_key is None:
        say(f"warning: listening on {args.host} without --api-key: anyone who reaches it can use the model")
    say(f"specvlm serve: {engine.mode} decoding of {name!r} listening on http://{host}:{port}/v1")
    config = uvicorn.Config(
        create_app(engine, settings), log_level=args.log_level, access_log=False, timeout_graceful_shutdown=3
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        shutil.rmtree(temp_root, ignore_errors=True)
    return 0


def _log_to_stderr(level: str) -> None:
    log = logging.getLogger("specvlm.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s specvlm.serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False
