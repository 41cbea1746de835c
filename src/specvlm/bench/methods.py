"""What `specvlm bench` can run, under short stable names.

    target                 target-only HF `generate` (greedy): the reference output and the baseline time
    hf-assisted            HF assisted generation, `target.generate(assistant_model=draft)`, same pair and inputs
    sd-chain               our draft-model SD with a chain of --num-draft-tokens
    sd-chain-conf          ... a chain of at most --num-draft-tokens that stops after a draft token of probability
                           < 0.4 (HF assisted generation's default confidence threshold)
    sd-static              ... with the EAGLE-1 static tree (the video paper's)
    sd-dynamic             ... with an EAGLE-2 dynamic tree
    prune:<method>         draft-model SD whose draft sees only --keep-ratios of the visual tokens, chosen by a
                           pruning method of `specvlm.drafters.pruning.METHODS` (specvlm = verifier-guided); one run
                           per ratio
    self                   self-speculation: the target drafts for itself with its own second cache
    self-prune:<method>    self-speculation with the draft's visual tokens pruned (the video paper's Self-SD)
    eagle                  an EagleHead drafting with an EAGLE-2 dynamic tree (needs --head)
    eagle-prune:<method>   the head reading only the kept visual tokens

`prune`, `self-prune` and `eagle-prune` without ":<method>" expand to every method of --pruning-methods. A run is a
method at one setting; its name is the method, plus "@<keep ratio>" for pruning methods (e.g. prune:specvlm@0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecVLMError
from ..options import PRUNING_METHODS

BASE_METHODS = ("target", "hf-assisted", "sd-chain", "sd-chain-conf", "sd-static", "sd-dynamic", "self", "eagle")
HF_CONFIDENCE = 0.4  # transformers' default assistant_confidence_threshold
PRUNED_FAMILIES = {"prune": "draft", "self-prune": "self", "eagle-prune": "head"}
DEFAULT_KEEP_RATIOS = (1.0, 0.5, 0.25, 0.1, 0.05)
DEFAULT_PRUNING_METHODS = ("specvlm", "uniform", "random")


@dataclass(frozen=True)
class Run:
    """One method at one setting."""

    method: str  # stable name, e.g. "sd-static", "prune:specvlm"
    drafter: str  # "none" (target alone) | "hf" | "draft" | "self" | "head"
    tree: str | None = None  # chain | static | dynamic (our engine only)
    pruning: str = "none"
    keep_ratio: float | None = None
    confidence: float = 0.0  # chain: the draft's stop threshold (SpeculativeGenerator confidence_threshold)

    @property
    def setting(self) -> str:
        return "-" if self.keep_ratio is None else f"keep={self.keep_ratio:g}"

    @property
    def name(self) -> str:
        return self.method if self.keep_ratio is None else f"{self.method}@{self.keep_ratio:g}"


def parse_keep_ratios(text: str) -> tuple[float, ...]:
    ratios = []
    for part in _items(text, "--keep-ratios"):
        try:
            value = float(part)
        except ValueError:
            raise SpecVLMError(f"--keep-ratios: {part!r} is not a number") from None
        if not 0 < value <= 1:
            raise SpecVLMError(f"--keep-ratios: {value:g} is not in (0, 1]")
        ratios.append(value)
    return tuple(dict.fromkeys(ratios))


def parse_pruning_methods(text: str) -> tuple[str, ...]:
    methods = _items(text, "--pruning-methods")
    for m in methods:
        _check_pruning(m, "--pruning-methods")
    return tuple(dict.fromkeys(methods))


def default_methods(has_draft: bool, has_head: bool) -> str:
    names = ["target"]
    names += ["hf-assisted", "sd-chain", "sd-static", "sd-dynamic", "prune"] if has_draft else ["self", "self-prune"]
    names += ["eagle"] if has_head else []
    return ",".join(names)


def parse_methods(
    text: str,
    *,
    keep_ratios=DEFAULT_KEEP_RATIOS,
    pruning_methods=DEFAULT_PRUNING_METHODS,
    has_draft: bool = True,
    has_head: bool = False,
    chain_tree: str = "chain",
    tree: str = "static",
) -> list[Run]:
    """The runs for a --methods list, in order, target first (added when missing: speedups are measured against
    it). `tree` is the draft shape of prune / self runs (default the video paper's static tree)."""
    runs: list[Run] = []
    for item in _items(text, "--methods"):
        family, _, pruning = item.partition(":")
        if family in PRUNED_FAMILIES:
            drafter = PRUNED_FAMILIES[family]
            if pruning:
                _check_pruning(pruning, f"--methods {item}")
            for method in [pruning] if pruning else pruning_methods:
                runs += [
                    Run(f"{family}:{method}", drafter, "dynamic" if drafter == "head" else tree, method, r)
                    for r in keep_ratios
                ]
            continue
        if pruning or item not in BASE_METHODS:
            known = ", ".join(BASE_METHODS + tuple(f"{f}[:<method>]" for f in PRUNED_FAMILIES))
            raise SpecVLMError(f"--methods: unknown method {item!r}; known: {known}")
        runs.append(
            {
                "target": Run("target", "none"),
                "hf-assisted": Run("hf-assisted", "hf"),
                "sd-chain": Run("sd-chain", "draft", chain_tree),
                "sd-chain-conf": Run("sd-chain-conf", "draft", "chain", confidence=HF_CONFIDENCE),
                "sd-static": Run("sd-static", "draft", "static"),
                "sd-dynamic": Run("sd-dynamic", "draft", "dynamic"),
                "self": Run("self", "self", tree),
                "eagle": Run("eagle", "head", "dynamic"),
            }[item]
        )
    runs = list(dict.fromkeys(runs))
    for run in runs:
        if run.drafter in ("draft", "hf") and not has_draft:
            raise SpecVLMError(f"method {run.method} needs a draft model: give --draft DIR")
        if run.drafter == "head" and not has_head:
            raise SpecVLMError(f"method {run.method} needs an EAGLE head: give --head DIR")
    target = [r for r in runs if r.drafter == "none"] or [Run("target", "none")]
    return target + [r for r in runs if r.drafter != "none"]


def generator_options(run: Run, num_draft_tokens: int, draft_positions: str | None = None) -> dict:
    """SpeculativeGenerator keywords for one of our runs."""
    options = dict(tree=run.tree, num_draft_tokens=num_draft_tokens, confidence_threshold=run.confidence)
    if run.pruning != "none":
        options.update(pruning=run.pruning, visual_keep_ratio=run.keep_ratio, draft_positions=draft_positions)
    return options


def _items(text: str, flag: str) -> list[str]:
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise SpecVLMError(f"{flag} is empty")
    return items


def _check_pruning(method: str, flag: str) -> None:
    if method not in PRUNING_METHODS:
        raise SpecVLMError(f"{flag}: unknown pruning method {method!r}; known: {', '.join(PRUNING_METHODS)}")
