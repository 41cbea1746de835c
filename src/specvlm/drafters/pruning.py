"""Which visual tokens the draft keeps: pure functions from scores and layout to sorted kept indices.

The target always verifies with every visual token; only the draft's prompt is pruned, so any choice here changes
speed, never output. N visual tokens are numbered in prompt order (all spans concatenated, each span frame-major
and raster-ordered inside a frame, then its tail such as LLaVA-OneVision's newline). The budget is
K = floor(N * keep_ratio).

- `specvlm` (Ji et al. 2025): Stage I keeps the highest-scoring tokens until they hold `stage1_mass` (λ) of the
  verifier's attention mass, at most K; Stage II fills the rest of K evenly (a uniform stride over the remaining
  indices in flattened order).
- baselines from the paper's comparisons: `uniform` (Stage II only), `random` (seeded), `attention` (top-K
  scores), `window-front|middle|back` (one contiguous run), `temporal` (DyCoke-style temporal merging: in groups of
  4 frames the first is the reference and is kept, the others keep the tokens that changed most from the same
  grid position in it), `frames` (drop whole frames, keep evenly spaced ones).
- `specvlm-grid`: Stage II as an even spatial grid per frame instead of the flattened stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecVLMError
from ..options import DEFAULT_KEEP_RATIO, DEFAULT_STAGE1_MASS, PRUNING_METHODS, check_keep_ratio


@dataclass(frozen=True)
class Layout:
    """Visual token layout: one (t, h, w) grid and tail count per span, or None for irregular spans."""

    grids: tuple[tuple[tuple[int, int, int] | None, int, int], ...]  # (grid, tail, length) per span

    @property
    def total(self) -> int:
        return sum(length for _, _, length in self.grids)

    def frames(self, tails: bool = True) -> list[tuple[torch.Tensor, int, int]]:
        """(indices, rows, cols) of each frame's tokens. A span without a grid counts as one frame of one row, and
        so does a span's tail (LLaVA-OneVision's newline token) unless `tails` is False."""
        out, offset = [], 0
        for grid, tail, length in self.grids:
            if grid is None:
                out.append((torch.arange(offset, offset + length, device="cpu"), 1, length))
            else:
                t, h, w = grid
                out += [
                    (torch.arange(offset + f * h * w, offset + (f + 1) * h * w, device="cpu"), h, w) for f in range(t)
                ]
                if tail and tails:
                    out.append((torch.arange(offset + t * h * w, offset + length, device="cpu"), 1, tail))
            offset += length
        return out

    @classmethod
    def flat(cls, n: int) -> Layout:
        return cls(((None, 0, n),))


def budget(n: int, keep_ratio: float) -> int:
    check_keep_ratio(keep_ratio)
    return min(n, math.floor(n * keep_ratio + 1e-9))


def evenly(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """k of `candidates` at a uniform stride (torch.linspace over their positions), as the paper's Stage II."""
    if k <= 0 or candidates.numel() == 0:
        return candidates[:0]
    if k >= candidates.numel():
        return candidates
    return candidates[torch.linspace(0, candidates.numel() - 1, k, device="cpu").long()]


def _sorted(index: torch.Tensor) -> torch.Tensor:
    return torch.unique(index.long()).sort().values


def select_uniform(n: int, k: int) -> torch.Tensor:
    return evenly(torch.arange(n, device="cpu"), k)


def select_random(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return _sorted(torch.randperm(n, generator=g)[:k])


def select_attention(scores: torch.Tensor, k: int) -> torch.Tensor:
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return _sorted(order[:k])


def stage1(scores: torch.Tensor, k: int, mass: float) -> torch.Tensor:
    """The smallest top-scored set holding `mass` of the total score ("top-p retention"), at most k tokens."""
    if k <= 0 or mass <= 0:
        return scores.new_zeros(0, dtype=torch.long)
    s = scores.float().clamp_min(0)
    order = torch.sort(s, descending=True, stable=True).indices
    cumulative = s[order].cumsum(0)
    total = float(cumulative[-1]) if cumulative.numel() else 0.0
    if total <= 0:
        return scores.new_zeros(0, dtype=torch.long)
    count = int((cumulative < mass * total - 1e-12).sum()) + 1
    return order[: min(count, k)]


def select_specvlm(scores: torch.Tensor, k: int, mass: float = DEFAULT_STAGE1_MASS) -> torch.Tensor:
    first = stage1(scores, k, mass)
    rest = torch.ones(scores.numel(), dtype=torch.bool, device="cpu")
    rest[first] = False
    return _sorted(torch.cat([first, evenly(rest.nonzero().flatten(), k - first.numel())]))


def grid_fill(layout: Layout, taken: torch.Tensor, k: int) -> torch.Tensor:
    """Stage II as an even spatial grid per frame: k is split over frames in proportion to their untaken tokens;
    inside a frame, the untaken points of a 2-D lattice with stride s (rows and columns) are taken evenly, topped
    up from the frame's other untaken tokens when the lattice is too sparse."""
    frames = [(f, h, w, f[~torch.isin(f, taken)]) for f, h, w in layout.frames()]
    left = sum(free.numel() for *_, free in frames)
    if k <= 0 or left == 0:
        return taken[:0]
    quota = [math.floor(k * free.numel() / left) for *_, free in frames]
    for i in sorted(range(len(frames)), key=lambda i: -(k * frames[i][3].numel() / left - quota[i])):
        if sum(quota) >= k:
            break
        quota[i] += 1
    picked = []
    for (tokens, h, w, free), q in zip(frames, quota):
        if q <= 0:
            continue
        stride = max(1, math.floor(math.sqrt(h * w / q)))
        rows, cols = torch.arange(h * w, device="cpu") // w, torch.arange(h * w, device="cpu") % w
        lattice = tokens[(rows % stride == stride // 2) & (cols % stride == stride // 2)]
        lattice = lattice[torch.isin(lattice, free)]
        chosen = evenly(lattice, q)
        if chosen.numel() < q:
            others = free[~torch.isin(free, chosen)]
            chosen = torch.cat([chosen, evenly(others, q - chosen.numel())])
        picked.append(chosen)
    return torch.cat(picked) if picked else taken[:0]


def select_specvlm_grid(
    scores: torch.Tensor, layout: Layout, k: int, mass: float = DEFAULT_STAGE1_MASS
) -> torch.Tensor:
    first = stage1(scores, k, mass)
    return _sorted(torch.cat([first, grid_fill(layout, first, k - first.numel())]))


def select_window(n: int, k: int, where: str = "middle") -> torch.Tensor:
    start = {"front": 0, "middle": (n - k) // 2, "back": n - k}[where]
    return torch.arange(start, start + k, device="cpu")


def shares(sizes: list[int], k: int) -> list[int]:
    """k (at most sum(sizes)) split over parts in proportion to their sizes. Cumulative rounding: part i gets
    round(k*C_i/S) - round(k*C_(i-1)/S), C the running size and S the total, so every part gets the floor or the
    ceiling of its exact share k*size/S (never more than its size), the shares add up to k exactly, and the
    parts that get the extra token are spread evenly instead of all at the front."""
    total, out, before, running = sum(sizes), [], 0, 0
    for size in sizes:
        running += size
        upto = (2 * k * running + total) // (2 * total) if total else 0  # round half up, in integers
        out.append(upto - before)
        before = upto
    return out


TEMPORAL_GROUP = 4  # DyCoke's window: frames that share one reference frame (the first of them)


def temporal_frames(layout: Layout, group: int = TEMPORAL_GROUP) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(tokens, reference) per frame in prompt order: `reference` holds the tokens at the same grid positions in
    the first frame of the frame's group of `group`, or is None when the frame is a reference itself. A span's
    tail and a span without a grid have nothing to be compared with, so they count as references."""
    out, offset = [], 0
    for grid, tail, length in layout.grids:
        if grid is None:
            out.append((torch.arange(offset, offset + length, device="cpu"), None))
        else:
            t, h, w = grid
            frame = [torch.arange(offset + f * h * w, offset + (f + 1) * h * w, device="cpu") for f in range(t)]
            out += [(frame[f], None if f % group == 0 else frame[f - f % group]) for f in range(t)]
            if tail:
                out.append((torch.arange(offset + t * h * w, offset + length, device="cpu"), None))
        offset += length
    return out


def novelty(features: torch.Tensor, tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine distance 1 - cos(x_i, x_ref(i)) in [0, 2] of each token to the same grid position in its reference
    frame: near 0 means the token repeats what the reference already shows (DyCoke merges it away)."""
    return 1 - torch.nn.functional.cosine_similarity(features[tokens].float(), features[reference].float(), dim=-1)


def most_changed(features: torch.Tensor, tokens: torch.Tensor, reference: torch.Tensor, q: int) -> torch.Tensor:
    """The q tokens of a frame least similar to their reference positions (ties: the earlier token). The
    distances are computed where the features live; the selection, like all of this module, on the host."""
    distance = novelty(features, tokens.to(features.device), reference.to(features.device)).cpu()
    order = torch.sort(distance, descending=True, stable=True).indices
    return tokens[order[:q]]


def temporal_quotas(frames: list[tuple[torch.Tensor, torch.Tensor | None]], k: int) -> list[int]:
    """Tokens each frame keeps, k in all. When k covers the reference frames, they are kept whole (DyCoke) and
    the rest of k is shared by the other frames in proportion to their sizes. Below that a whole reference frame
    is unaffordable, so every frame (references included) gets its proportional share of k, which keeps the
    choice spread over the video instead of spending it all on the first frames."""
    needed = sum(tokens.numel() for tokens, reference in frames if reference is None)
    if k < needed:
        return shares([tokens.numel() for tokens, _ in frames], k)
    rest = shares([0 if reference is None else tokens.numel() for tokens, reference in frames], k - needed)
    return [tokens.numel() if reference is None else q for (tokens, reference), q in zip(frames, rest)]


def select_temporal(features: torch.Tensor, layout: Layout, k: int, group: int = TEMPORAL_GROUP) -> torch.Tensor:
    """DyCoke-style temporal token merging, budget-exact: per frame, its quota (`temporal_quotas`) of tokens;
    a reference frame spreads its quota evenly over its raster, any other frame keeps its most changed tokens."""
    frames = temporal_frames(layout, group)
    picked = [
        evenly(tokens, q) if reference is None else most_changed(features, tokens, reference, q)
        for (tokens, reference), q in zip(frames, temporal_quotas(frames, k))
    ]
    return _sorted(torch.cat(picked)) if picked else torch.zeros(0, dtype=torch.long, device="cpu")


def frames_to_keep(count: int, k: int, per_frame: int) -> list[int]:
    """Which of `count` frames hold a budget of k tokens: ceil(k / per_frame) of them at an even stride; a single
    frame is the middle one (the stride's first point, frame 0, would be the least representative choice)."""
    needed = min(count, math.ceil(k / per_frame))
    if needed == 1:
        return [count // 2]
    return evenly(torch.arange(count, device="cpu"), needed).tolist()


def select_frames(layout: Layout, k: int) -> torch.Tensor:
    """Whole frames at an even stride; the last chosen frame is cut to the budget by keeping its tokens evenly
    (so k below one frame keeps k tokens spread over the middle frame). A budget left over when frames run out
    (tails, uneven sizes) goes to the other tokens evenly."""
    frames = [tokens for tokens, _, _ in layout.frames(tails=False)]
    per_frame = max(1, round(sum(f.numel() for f in frames) / max(len(frames), 1)))
    kept, left = [torch.zeros(0, dtype=torch.long, device="cpu")], k
    for i in frames_to_keep(len(frames), k, per_frame) if k > 0 else []:
        kept.append(evenly(frames[i], min(left, frames[i].numel())))
        left -= kept[-1].numel()
    kept = torch.cat(kept)
    rest = torch.ones(layout.total, dtype=torch.bool, device="cpu")
    rest[kept] = False
    return _sorted(torch.cat([kept, evenly(rest.nonzero().flatten(), k - kept.numel())]))


METHODS = PRUNING_METHODS
NEEDS_SCORES = {"specvlm", "specvlm-grid", "attention"}


@dataclass(frozen=True)
class DraftView:
    """The draft-prompt policy, one value: which of the target's visual tokens a draft reads (`method`, `keep_ratio`,
    Stage I mass λ `stage1_mass`, `seed` for "random") and how its shorter prompt is numbered
    (`contiguous_positions`: 0..L'-1 instead of the kept tokens' own positions). A generator builds it once from its
    options; the loop asks it for each row's kept tokens, drafters read `prunes` and `contiguous_positions`."""

    method: str = "none"
    keep_ratio: float = DEFAULT_KEEP_RATIO
    stage1_mass: float = DEFAULT_STAGE1_MASS
    seed: int = 0
    contiguous_positions: bool = False

    @property
    def prunes(self) -> bool:
        return self.method != "none"

    @property
    def needs_scores(self) -> bool:
        """Whether choosing needs the verifier's text->visual attention (captured in the target's prefill)."""
        return self.method in NEEDS_SCORES

    def keep(self, n: int, scores: torch.Tensor | None, layout: Layout, features: torch.Tensor | None) -> torch.Tensor:
        """Sorted indices of the kept tokens among a row's n visual tokens (host)."""
        return select(
            self.method,
            n,
            self.keep_ratio,
            scores=scores,
            layout=layout,
            features=features,
            stage1_mass=self.stage1_mass,
            seed=self.seed,
        )


def select(
    method: str,
    n: int,
    keep_ratio: float,
    *,
    scores: torch.Tensor | None = None,
    layout: Layout | None = None,
    features: torch.Tensor | None = None,
    stage1_mass: float = DEFAULT_STAGE1_MASS,
    seed: int = 0,
) -> torch.Tensor:
    """Kept indices (sorted) among n visual tokens."""
    if method not in METHODS:
        raise SpecVLMError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    k = budget(n, keep_ratio)
    layout = layout or Layout.flat(n)
    if method in NEEDS_SCORES and scores is None:
        raise SpecVLMError(f"pruning {method!r} needs the verifier's attention scores")
    scores = scores.cpu() if scores is not None else None  # selection is host bookkeeping
    if method == "specvlm":
        return select_specvlm(scores, k, stage1_mass)
    if method == "specvlm-grid":
        return select_specvlm_grid(scores, layout, k, stage1_mass)
    if method == "attention":
        return select_attention(scores, k)
    if method == "uniform":
        return select_uniform(n, k)
    if method == "random":
        return select_random(n, k, seed)
    if method.startswith("window-"):
        return select_window(n, k, method.split("-", 1)[1])
    if method == "temporal":
        if features is None:
            raise SpecVLMError("pruning 'temporal' needs the visual features")
        return select_temporal(features, layout, k)
    return select_frames(layout, k)
