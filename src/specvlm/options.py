"""The decoding, tree and pruning options (`DecodeConfig`) and their checks, shared by the library
(SpeculativeGenerator, TreeSpec), the command line, the server and the bench. Nothing here imports torch: the CLI
runs these checks before any heavy import, so a bad option is one line within a fraction of a second."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import SpecVLMError

PRUNING_METHODS = (
    "specvlm",
    "specvlm-grid",
    "uniform",
    "random",
    "attention",
    "window-front",
    "window-middle",
    "window-back",
    "temporal",
    "frames",
)
TREE_KINDS = ("chain", "static", "dynamic")
DEFAULT_KEEP_RATIO = 0.1  # the video paper's keep ratio: what a pruning method keeps when no ratio is given
DEFAULT_STAGE1_MASS = 0.4  # λ: the attention mass SpecVLM's Stage I keeps (the video paper's setting)
COMPILE_FLAG = {"auto": "auto", "on": True, "off": False}  # --compile -> SpeculativeGenerator(compile=...)


def keyword(name: str) -> str:
    """How the library spells an option in an error: its keyword argument."""
    return name


def flag(name: str) -> str:
    """How the command line spells it: num_draft_tokens -> --num-draft-tokens."""
    return "--" + name.replace("_", "-")


def check_tree(
    kind: str,
    num_draft_tokens: int,
    top_k: int,
    depth: int,
    total_tokens: int,
    confidence_threshold: float,
    spell=keyword,
) -> None:
    if kind not in TREE_KINDS:
        raise SpecVLMError(f"{spell('tree')} must be 'chain', 'static' or 'dynamic', got {kind!r}")
    if min(num_draft_tokens, top_k, depth, total_tokens - 1) < 1:
        raise SpecVLMError(
            f"{spell('num_draft_tokens')}, {spell('tree_top_k')} and {spell('tree_depth')} must be >= "
            f"1 and {spell('tree_total_tokens')} >= 2, got {num_draft_tokens}, {top_k}, {depth} and "
            f"{total_tokens}"
        )
    if not 0 <= confidence_threshold < 1:
        raise SpecVLMError(f"{spell('confidence_threshold')} must be in [0, 1), got {confidence_threshold}")


def check_keep_ratio(keep_ratio: float, spell=keyword) -> None:
    if not 0 < keep_ratio <= 1:
        raise SpecVLMError(f"{spell('visual_keep_ratio')} must be in (0, 1], got {keep_ratio}")


def check_pruning(
    pruning: str, visual_keep_ratio: float | None, stage1_mass: float, draft_positions: str | None, spell=keyword
) -> None:
    if pruning != "none" and pruning not in PRUNING_METHODS:
        raise SpecVLMError(f"unknown pruning method {pruning!r}; choose from none, {', '.join(PRUNING_METHODS)}")
    if pruning == "none" and visual_keep_ratio is not None:
        raise SpecVLMError(
            f"{spell('visual_keep_ratio')} needs a pruning method, e.g. "
            f"{'pruning=' + repr('specvlm') if spell is keyword else '--pruning specvlm'}"
        )
    if visual_keep_ratio is not None:
        check_keep_ratio(visual_keep_ratio, spell)
    if not 0 < stage1_mass <= 1:
        raise SpecVLMError(f"{spell('stage1_mass')} (λ) must be in (0, 1], got {stage1_mass}")
    if draft_positions not in (None, "original", "contiguous"):
        raise SpecVLMError(f"{spell('draft_positions')} must be 'original' or 'contiguous', got {draft_positions!r}")


@dataclass(frozen=True)
class DecodeConfig:
    """How a SpeculativeGenerator drafts, verifies and prunes (everything it takes besides the models), checked once,
    when made. The library builds one from `SpeculativeGenerator`'s keywords; the command line, the server and the
    bench from their flags (`from_args`), so errors name what the user typed (`spell`)."""

    tree: str | None = None  # None: the drafter's default (static for models, dynamic for heads)
    num_draft_tokens: int = 5
    tree_top_k: int = 10
    tree_depth: int = 6
    tree_total_tokens: int = 60
    confidence_threshold: float = 0.0
    pruning: str = "none"
    visual_keep_ratio: float | None = None  # None: DEFAULT_KEEP_RATIO when pruning
    stage1_mass: float = DEFAULT_STAGE1_MASS
    draft_positions: str | None = None  # None: original for M-RoPE targets, contiguous otherwise
    pruning_seed: int = 0
    engine: str = "fast"
    compile: bool | str = "auto"
    spell: Callable[[str], str] = field(default=keyword, repr=False, compare=False)

    def __post_init__(self):
        check_tree(
            self.tree or "static",
            self.num_draft_tokens,
            self.tree_top_k,
            self.tree_depth,
            self.tree_total_tokens,
            self.confidence_threshold,
            self.spell,
        )
        check_pruning(self.pruning, self.visual_keep_ratio, self.stage1_mass, self.draft_positions, self.spell)
        if self.engine not in ("fast", "eager"):
            raise SpecVLMError(f"{self.spell('engine')} must be 'fast' or 'eager', got {self.engine!r}")
        if self.compile not in ("auto", True, False):
            raise SpecVLMError(f"{self.spell('compile')} must be 'auto', True or False, got {self.compile!r}")

    @classmethod
    def from_args(cls, args, **overrides) -> DecodeConfig:
        """From parsed command-line flags (`--compile auto|on|off`); errors name the flags."""
        values = {
            name: getattr(args, name)
            for name in cls.__dataclass_fields__
            if name not in ("spell", "pruning_seed", "compile") and hasattr(args, name)
        }
        values["compile"] = COMPILE_FLAG[getattr(args, "compile", "auto")]
        return cls(**{**values, **overrides}, spell=flag)


def parse_device(text: str) -> str:
    """argparse type of --device: checked here, before torch loads, so a typo is a one-line usage error rather than
    torch's list of every device type it knows."""
    kind, _, index = text.partition(":")
    if text in ("auto", "cpu", "mps") or (kind == "cuda" and (not index or index.isdigit())):
        return text
    import argparse

    raise argparse.ArgumentTypeError(f"unknown device {text!r}: use auto, cpu, cuda, cuda:N or mps")
