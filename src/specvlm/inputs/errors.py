"""The one error class of the input pipeline. Its message is one line naming the file or option and what is wrong,
so the CLI can print it as is; it is a `SpecVLMError`, which the CLI turns into a non-zero exit without traceback."""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecVLMError


class InputError(SpecVLMError):
    pass


def first_line(err: BaseException) -> str:
    """FFmpeg and PIL messages can span lines; keep the first one, the one that says what went wrong."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_file(path, kind: str, extensions: tuple[str, ...]) -> Path:
    """An existing regular file with one of `extensions` (lower case, with the dot), else InputError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{kind} file {path} does not exist")
    if p.is_dir():
        raise InputError(f"{kind} {path} is a directory, not a file")
    if p.suffix.lower() not in extensions:
        raise InputError(
            f"{kind} {path}: unsupported format {p.suffix or '(no extension)'!s}; "
            f"use one of {', '.join(e.lstrip('.') for e in extensions)}"
        )
    return p
