"""Media URLs of a chat request -> files the input pipeline reads (the same `load_image` / `load_video` as
`specvlm generate`).

- `data:<type>;base64,<payload>`: decoded into the request's own temporary folder (removed when the request ends);
  the file extension comes from the media type, so the pipeline's format checks apply unchanged.
- `file:///abs/path` or `/abs/path`: read in place, only when it resolves (links followed) inside
  `--allowed-local-media-path`, as vLLM does; nothing else of the machine is readable through the API.
- `http(s)://`: refused. The server fetches nothing (no outbound requests on behalf of clients).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import bad_request
from .schema import Media, Turn

IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp"}
VIDEO_TYPES = {
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/quicktime": ".mov",
    "video/x-msvideo": ".avi",
    "video/avi": ".avi",
}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class TurnFiles:
    """A Turn with its media as local files; `names` maps a data URL's file to the request field it came from, so
    that error messages name what the client sent rather than a temporary file."""

    prompt: str
    images: tuple[Path, ...]
    video: Path | None
    names: dict
    messages: tuple[dict, ...] | None = None  # a conversation (schema.Turn.messages), else one user turn


def materialize(turn: Turn, folder: Path, allowed: Path | None) -> TurnFiles:
    """The turn's media as files: data URLs written into `folder`, local paths checked against `allowed` (a
    resolved folder, or None: no local files)."""
    names: dict = {}
    images = [media_file(media, "image", folder / f"image{i}", allowed, names) for i, media in enumerate(turn.images)]
    video = None if turn.video is None else media_file(turn.video, "video", folder / "video", allowed, names)
    return TurnFiles(turn.prompt, tuple(images), video, names, turn.messages)


def media_file(media: Media, kind: str, stem: Path, allowed: Path | None, names: dict) -> Path:
    """The file for one image / video; `stem` (without extension) is where a data URL's bytes go."""
    url, where = media.url, media.where
    scheme = _SCHEME.match(url)
    scheme = scheme.group(1).lower() if scheme else ""
    if scheme == "data":
        path = _write_data_url(url, kind, stem, where)
        names[str(path)] = f"{where} (data URL)"
        return path
    if scheme in ("http", "https"):
        raise bad_request(
            f"remote {kind} URLs are not fetched by this server: send the {kind} as a data: URL "
            "(base64) or as a path under --allowed-local-media-path",
            param=where,
            code="remote_media_not_supported",
        )
    if scheme not in ("", "file"):
        raise bad_request(
            f"unsupported {kind} URL scheme {scheme!r}: use data:, file:// or an absolute path", param=where
        )
    return local_file(unquote(urlparse(url).path) if scheme == "file" else url, kind, allowed, where)


def local_file(path: str, kind: str, allowed: Path | None, param: str) -> Path:
    if allowed is None:
        raise bad_request(
            f"local {kind} files are not served: start the server with --allowed-local-media-path DIR",
            param=param,
            code="local_media_not_allowed",
        )
    if "\x00" in path:  # the OS refuses such a path with a ValueError, which would be a 500
        raise bad_request(f"the local {kind} path contains a NUL byte", param=param)
    if not Path(path).is_absolute():
        raise bad_request(f"local {kind} paths must be absolute (or file:// URLs), got {path!r}", param=param)
    resolved = Path(path).resolve()  # links followed: a link inside the folder cannot point outside it
    if not resolved.is_relative_to(allowed):
        raise bad_request(f"{path} is outside --allowed-local-media-path", param=param, code="local_media_not_allowed")
    if resolved.exists() and not resolved.is_file():  # a FIFO or device would block the reader forever
        raise bad_request(f"{path} is not a regular file", param=param)
    return resolved


def _write_data_url(url: str, kind: str, stem: Path, param: str) -> Path:
    header, comma, payload = url[len("data:") :].partition(",")
    media_type, *options = header.split(";")
    media_type = media_type.strip().lower()
    if not comma or "base64" not in (o.strip().lower() for o in options):
        raise bad_request(f"{kind} data URL must be base64: data:<type>;base64,<data>", param=param)
    types = IMAGE_TYPES if kind == "image" else VIDEO_TYPES
    if media_type not in types:
        raise bad_request(
            f"unsupported {kind} type {media_type or '(none)'!r} in a data URL; use one of {', '.join(sorted(types))}",
            param=param,
        )
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"the {kind} data URL is not valid base64", param=param, code="invalid_base64") from None
    if not data:
        raise bad_request(f"the {kind} data URL is empty", param=param)
    path = stem.with_suffix(types[media_type])
    path.write_bytes(data)
    return path
