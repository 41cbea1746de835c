"""Which visual tokens the draft keeps: pure functions from scores and layout to sorted kept indices.

The target always verifies with every visual token; only the draft's prompt is pruned, so any choice here changes
speed, never output. N visual tokens are numbered in prompt order (all spans concatenated, each span frame-major
and raster-ordered inside a frame, then its tail such as LLaVA-OneVision's newline). The budget is
K = floor(N * keep_ratio).

- `specvlm` (Ji et al. 2025): Stage I keeps the highest-scoring tokens until they hold `stage1_mass` (λ) of the
  verifier's attention mass, at most K; Stage II fills the rest of K evenly (a uniform stride over the remaining
  indices in flattened order).
- baselines from the paper's comparisons: `uniform` (Stage II only), `random` (seeded), `attention` (top-K
  scores), `window-front|middle|back` (one contiguous run), `temporal` (DyCoke-style: drop tokens most similar to
  the same position in the frame before), `frames` (drop whole frames, keep evenly spaced ones).
- `specvlm-grid`: Stage II as an even spatial grid per frame instead of the flattened stride.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SpecVLMError


@dataclass(frozen=True)
class Layout:
    """Visual token layout: one (t, h, w) grid and tail count per span, or None for irregular spans."""
    grids: tuple[tuple[tuple[int, int, int] | None, int, int], ...]   # (grid, tail, length) per span

    @property
    def total(self) -> int:
        return sum(length for _, _, length in self.grids)

    def frames(self, tails: bool = True) -> list[tuple[torch.Tensor, int, int]]:
        """(indices, rows, cols) of each frame's tokens. A span without a grid counts as one frame of one row, and
        so does a span's tail (LLaVA-OneVision's newline token) unless `tails` is False."""
        out, offset = [], 0
        for grid, tail, length in self.grids:
            if grid is None:
                out.append((torch.arange(offset, offset + length), 1, length))
            else:
                t, h, w = grid
                out += [(torch.arange(offset + f * h * w, offset + (f + 1) * h * w), h, w) for f in range(t)]
                if tail and tails:
                    out.append((torch.arange(offset + t * h * w, offset + length), 1, tail))
            offset += length
        return out

    @classmethod
    def flat(cls, n: int) -> "Layout":
        return cls(((None, 0, n),))


def budget(n: int, keep_ratio: float) -> int:
    if not 0 < keep_ratio <= 1:
        raise SpecVLMError(f"visual_keep_ratio must be in (0, 1], got {keep_ratio}")
    return min(n, math.floor(n * keep_ratio + 1e-9))


def evenly(candidates: torch.Tensor, k: int) -> torch.Tensor:
    """k of `candidates` at a uniform stride (torch.linspace over their positions), as the paper's Stage II."""
    if k <= 0 or candidates.numel() == 0:
        return candidates[:0]
    if k >= candidates.numel():
        return candidates
    return candidates[torch.linspace(0, candidates.numel() - 1, k).long()]


def _sorted(index: torch.Tensor) -> torch.Tensor:
    return torch.unique(index.long()).sort().values


def select_uniform(n: int, k: int) -> torch.Tensor:
    return evenly(torch.arange(n), k)


def select_random(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
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


def select_specvlm(scores: torch.Tensor, k: int, mass: float = 0.4) -> torch.Tensor:
    first = stage1(scores, k, mass)
    rest = torch.ones(scores.numel(), dtype=torch.bool)
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
        rows, cols = torch.arange(h * w) // w, torch.arange(h * w) % w
        lattice = tokens[(rows % stride == stride // 2) & (cols % stride == stride // 2)]
        lattice = lattice[torch.isin(lattice, free)]
        chosen = evenly(lattice, q)
        if chosen.numel() < q:
            others = free[~torch.isin(free, chosen)]
            chosen = torch.cat([chosen, evenly(others, q - chosen.numel())])
        picked.append(chosen)
    return torch.cat(picked) if picked else taken[:0]


def select_specvlm_grid(scores: torch.Tensor, layout: Layout, k: int, mass: float = 0.4) -> torch.Tensor:
    first = stage1(scores, k, mass)
    return _sorted(torch.cat([first, grid_fill(layout, first, k - first.numel())]))


def select_window(n: int, k: int, where: str = "middle") -> torch.Tensor:
    start = {"front": 0, "middle": (n - k) // 2, "back": n - k}[where]
    return torch.arange(start, start + k)


def select_temporal(features: torch.Tensor, layout: Layout, k: int) -> torch.Tensor:
    """DyCoke-style: a token that looks like the same position in the previous frame is redundant. First frames
    and irregular spans count as maximally novel; keep the K most novel tokens."""
    novelty = torch.full((features.shape[0],), 2.0)
    offset = 0
    for grid, tail, length in layout.grids:
        if grid is not None and grid[0] > 1:
            t, h, w = grid
            frames = features[offset: offset + t * h * w].float().reshape(t, h * w, -1)
            similarity = torch.nn.functional.cosine_similarity(frames[1:], frames[:-1], dim=-1)
            novelty[offset + h * w: offset + t * h * w] = 1 - similarity.flatten()
        offset += length
    return select_attention(novelty, k)


def select_frames(layout: Layout, k: int) -> torch.Tensor:
    """Whole frames at an even stride (the last one may be cut to the budget); a budget left over when frames
    run out (tails, uneven sizes) goes to the other tokens evenly."""
    frames = [tokens for tokens, _, _ in layout.frames(tails=False)]
    per_frame = max(1, round(sum(f.numel() for f in frames) / max(len(frames), 1)))
    chosen = evenly(torch.arange(len(frames)), min(len(frames), math.ceil(k / per_frame)))
    kept = torch.cat([frames[i] for i in chosen.tolist()])[:k] if chosen.numel() else torch.zeros(0, dtype=torch.long)
    rest = torch.ones(layout.total, dtype=torch.bool)
    rest[kept] = False
    return _sorted(torch.cat([kept, evenly(rest.nonzero().flatten(), k - kept.numel())]))


METHODS = ("specvlm", "specvlm-grid", "uniform", "random", "attention", "window-front", "window-middle",
           "window-back", "temporal", "frames")
NEEDS_SCORES = {"specvlm", "specvlm-grid", "attention"}


def select(method: str, n: int, keep_ratio: float, *, scores: torch.Tensor | None = None,
           layout: Layout | None = None, features: torch.Tensor | None = None, stage1_mass: float = 0.4,
           seed: int = 0) -> torch.Tensor:
    """Kept indices (sorted) among n visual tokens."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {', '.join(METHODS)}")
    k = budget(n, keep_ratio)
    layout = layout or Layout.flat(n)
    if method in NEEDS_SCORES and scores is None:
        raise ValueError(f"pruning {method!r} needs the verifier's attention scores")
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
            raise ValueError("pruning 'temporal' needs the visual features")
        return select_temporal(features, layout, k)
    return select_frames(layout, k)
