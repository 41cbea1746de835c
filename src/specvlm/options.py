"""Checks of the decoding, tree and pruning options, shared by the library (SpeculativeGenerator, TreeSpec) and the
command line. Nothing here imports torch: the CLI runs these checks before any heavy import, so a bad option is
one line within a fraction of a second."""

from __future__ import annotations

from .errors import SpecVLMError

PRUNING_METHODS = ("specvlm", "specvlm-grid", "uniform", "random", "attention", "window-front", "window-middle",
                   "window-back", "temporal", "frames")
TREE_KINDS = ("chain", "static", "dynamic")


def check_tree(kind: str, num_draft_tokens: int, top_k: int, depth: int, total_tokens: int,
               confidence_threshold: float) -> None:
    if kind not in TREE_KINDS:
        raise SpecVLMError(f"tree must be 'chain', 'static' or 'dynamic', got {kind!r}")
    if min(num_draft_tokens, top_k, depth, total_tokens - 1) < 1:
        raise SpecVLMError("num_draft_tokens, tree_top_k and tree_depth must be >= 1 and tree_total_tokens >= 2, "
                           f"got {num_draft_tokens}, {top_k}, {depth} and {total_tokens}")
    if not 0 <= confidence_threshold < 1:
        raise SpecVLMError(f"confidence_threshold must be in [0, 1), got {confidence_threshold}")


def check_keep_ratio(keep_ratio: float) -> None:
    if not 0 < keep_ratio <= 1:
        raise SpecVLMError(f"visual_keep_ratio must be in (0, 1], got {keep_ratio}")


def check_pruning(pruning: str, visual_keep_ratio: float | None, stage1_mass: float,
                  draft_positions: str | None) -> None:
    """One-line errors for bad pruning options (the CLI calls this before any weights load)."""
    if pruning != "none" and pruning not in PRUNING_METHODS:
        raise SpecVLMError(f"unknown pruning method {pruning!r}; choose from none, {', '.join(PRUNING_METHODS)}")
    if pruning == "none" and visual_keep_ratio is not None:
        raise SpecVLMError("visual_keep_ratio needs a pruning method, e.g. pruning='specvlm'")
    if visual_keep_ratio is not None:
        check_keep_ratio(visual_keep_ratio)
    if not 0 < stage1_mass <= 1:
        raise SpecVLMError(f"stage1_mass (λ) must be in (0, 1], got {stage1_mass}")
    if draft_positions not in (None, "original", "contiguous"):
        raise SpecVLMError(f"draft_positions must be 'original' or 'contiguous', got {draft_positions!r}")


def parse_device(text: str) -> str:
    """argparse type of --device: checked here, before torch loads, so a typo is a one-line usage error rather than
    torch's list of every device type it knows."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "mps") or (kind == "cuda" and (not index or index.isdigit())):
        return text
    import argparse

    raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N or mps")
