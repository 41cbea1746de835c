"""Shared helpers for benchmark scripts: timing, forward counting, markdown tables, BENCHMARKS.md sections."""

from __future__ import annotations

import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"


def median_time(fn, repeats: int = 3):
    """(last result, median seconds) of `repeats` calls after one warm-up call."""
    fn()
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


class ForwardCounter:
    """Counts forward calls of a module (e.g. a model's language model) while active."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def table(headers: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def record(section: str, title: str, body: str) -> None:
    """Replace (or append) the section between <!-- section --> markers in docs/BENCHMARKS.md."""
    script = Path(sys.argv[0]).resolve()  # named from the repo root, wherever it was started from
    script = (
        script.relative_to(BENCHMARKS_MD.parent.parent)
        if script.is_relative_to(BENCHMARKS_MD.parent.parent)
        else script
    )
    command = "python " + " ".join([str(script), *sys.argv[1:]])
    text = (
        f"<!-- {section}:start -->\n## {title}\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
        f"Recorded: {time.strftime('%Y-%m-%d')}\n\n{body.strip()}\n<!-- {section}:end -->"
    )
    doc = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- {section}:start -->.*?<!-- {section}:end -->", re.S)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text + "\n"
    BENCHMARKS_MD.parent.mkdir(exist_ok=True)
    BENCHMARKS_MD.write_text(doc)


def hf_static_config(device: torch.device):
    """The compile config of HF's compiled static-cache decoding (`generate(cache_implementation="static",
    compile_config=...)`): on CUDA HF compiles the decode step by itself (a default CompileConfig); on CPU it has
    to be asked for (HF's `_compile_all_devices` flag; CUDA graphs off there)."""
    from transformers import CompileConfig

    if device.type == "cuda":
        return CompileConfig()
    config = CompileConfig(mode="default")
    config._compile_all_devices = True
    return config
