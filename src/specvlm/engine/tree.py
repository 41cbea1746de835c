"""Draft trees: the shapes, how a drafter grows them on its device, and the masks that verify them.

A round starts from the *root*: the newest committed token, which neither model has in its KV cache yet. Every
row of a batch has its own root and its own tree of n draft nodes below it (the same n for all rows; a static tree
even has the same shape). Node i of row b carries `tokens[b, i]`, `parents[b, i]` (-1 is the root; parents come
before children, parents[b, i] < i) and `depths[b, i]` (1 for the root's children). A chain is the tree whose
parents are -1, 0, 1, ...

Builders are pure bookkeeping around one callable,

    expand(tokens (B, w) long, parent_slots (B, w) long, depth: int) -> logprobs (B, w, V)

which feeds w new nodes per row, all at `depth` below the root, to the drafter (one batched forward) and returns
its next-token log-probabilities below each of them. Within a round the drafter numbers the nodes it is fed in
order (slot 0, 1, ..., the same slots in every row), and `parent_slots[b, j]` is the slot of node j's parent
(-1: the root). Every tensor stays on the drafter's device: no
builder reads one back to the host, so a whole round is queued without a synchronisation (the chain's confidence
stop excepted: deciding to stop is a host decision by nature). Tests drive the builders with hand-made tables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache

import torch

from ..options import DecodeConfig, check_tree

# The EAGLE-1 static tree `mc_sim_7b_63` that the video-pruning paper drafts with: 25 nodes below the root, depth
# 5, 4/8/8/3/2 nodes per depth, 15 leaves. A path (r1, r2, ...) is "the r1-th best child of the root, then its
# r2-th best child, ...".
EAGLE1_TREE: tuple[tuple[int, ...], ...] = (
    (0,),
    (1,),
    (2,),
    (3,),
    (0, 0),
    (0, 1),
    (0, 2),
    (1, 0),
    (1, 1),
    (2, 0),
    (2, 1),
    (3, 0),
    (0, 0, 0),
    (0, 0, 1),
    (0, 0, 2),
    (0, 1, 0),
    (0, 1, 1),
    (0, 2, 0),
    (0, 2, 1),
    (1, 0, 0),
    (0, 0, 0, 0),
    (0, 0, 0, 1),
    (0, 0, 0, 2),
    (0, 0, 0, 0, 0),
    (0, 0, 0, 0, 1),
)

# Log-probabilities are clamped here so that sums over a path never produce nan from (-inf) + (-inf) arithmetic.
_FLOOR = -1e9

Expand = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


@dataclass
class DraftTree:
    """One round's proposals for a batch of rows: every row's tree has the same number of nodes n (its shape may
    differ). Tensors are (B, n) on the drafter's device; `valid` marks nodes a row really proposed (a chain that
    stopped early, or a row that asked for fewer tokens, pads the rest with never-acceptable nodes)."""

    tokens: torch.Tensor  # (B, n) long
    parents: torch.Tensor  # (B, n) long, -1 = root
    depths: torch.Tensor | None = None  # (B, n) long; derived from parents when not given
    probs: torch.Tensor | None = None  # (B, n, V): distribution node i was sampled from (chains when sampling)
    fed: torch.Tensor | None = None  # (B, n) long: the drafter slot node i was fed at this round, -1 if never
    max_depth: int | None = None  # an upper bound of depths (host), when the builder knows it
    chain: bool = False  # host knowledge that this is a chain (verified causally, without a mask)
    valid: torch.Tensor | None = None  # (B, n) bool, None = every node is a real proposal

    def __post_init__(self):
        if self.depths is None:
            self.depths = node_depths(self.parents)

    def __len__(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def rows(self) -> int:
        return int(self.tokens.shape[0])

    @cached_property
    def ancestors(self) -> torch.Tensor:
        """(B, n, n) bool on the tree's device; [b, i, j] is True when j is i or an ancestor of i in row b."""
        if self.chain:
            return _chain_ancestors(len(self) + 1, self.tokens.device)[1:, 1:].expand(self.rows, -1, -1)
        mask = self.verify_mask
        assert mask is not None  # not a chain
        return mask[:, 1:, 1:]

    @cached_property
    def verify_mask(self) -> torch.Tensor | None:
        """(B, n+1, n+1) visibility of [root, *nodes] for the target's verification, None for a chain (causal)."""
        return None if self.chain else ancestor_matrix(self.parents, self.max_depth)

    # ---- host views (they synchronise; for tests and debugging, never on the decode path) ----------------------
    def children(self, row: int = 0) -> list[list[int]]:
        """children(b)[0] lists the root's children in row b, children(b)[i + 1] those of node i, in node order."""
        kids: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for node, parent in enumerate(self.parents[row].tolist()):
            kids[parent + 1].append(node)
        return kids

    def path(self, node: int, row: int = 0) -> list[int]:
        """Nodes of row `row` from the root's child down to `node` (inclusive)."""
        parents = self.parents[row].tolist()
        out = []
        while node >= 0:
            out.append(node)
            node = parents[node]
        return out[::-1]

    @property
    def is_chain(self) -> bool:
        return self.chain or all(row == list(range(-1, len(self) - 1)) for row in self.parents.tolist())


@lru_cache(maxsize=64)
def _chain_ancestors(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def node_depths(parents: torch.Tensor) -> torch.Tensor:
    """Depths from parents ((n,) or (B, n)), on their device (parents[i] < i, so one pass in node order)."""
    rows = []
    for row in parents.reshape(-1, parents.shape[-1]).tolist():
        depth: list[int] = []
        for parent in row:
            depth.append(1 if parent < 0 else depth[parent] + 1)
        rows.append(depth)
    return torch.tensor(rows, dtype=torch.long, device=parents.device).reshape(parents.shape)


def ancestor_matrix(parents: torch.Tensor, max_depth: int | None = None) -> torch.Tensor:
    """(..., n+1, n+1) bool on the parents' device for parents (..., n); [i, j] is True when j is i or an ancestor
    of i. Index 0 is the root, node k is k+1. Built by `max_depth` rounds of "inherit the parent's row" (n rounds
    when the depth is unknown)."""
    n = parents.shape[-1]
    flat = parents.reshape(-1, n).long()  # (B, n)
    visible = torch.eye(n + 1, dtype=torch.bool, device=parents.device).repeat(flat.shape[0], 1, 1)
    rows = (flat + 1)[:, :, None].expand(-1, -1, n + 1)  # each node's parent row
    for _ in range(n if max_depth is None else max_depth):
        visible[:, 1:] |= visible.gather(1, rows)
    return visible.reshape(*parents.shape[:-1], n + 1, n + 1)


# ---- builders ----------------------------------------------------------------------------------------------------
def build_chain(
    first: torch.Tensor,
    expand: Expand,
    length: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    min_prob: float = 0.0,
) -> DraftTree:
    """Up to γ = `length` tokens one after another, per row. `first` (B, V) and each expansion are
    log-probabilities; `choose` picks a token per row from them, (B,) (argmax when greedy, a sample when not). The
    chosen-from distributions are kept as `probs` (q). A row's chain stops early after a token its draft gave
    probability q(x) < `min_prob` (HF assisted generation's confidence threshold): a token the draft doubts is
    likely rejected, and every token after it wasted. Drafting goes on while any row goes on; a stopped row's later
    nodes are not `valid`. The stop depends on the draft's own draws only, so the acceptance rules stay exact; it
    reads q(x) on the host, one synchronisation per drafted token, which is why it is off (0) by default."""
    rows, device = first.shape[0], first.device
    tokens, dists, live = [], [], []
    logprobs, log_min = first, math.log(min_prob) if min_prob > 0 else None
    going = torch.ones(rows, dtype=torch.bool, device=device)
    for i in range(length):
        dists.append(logprobs)
        tokens.append(choose(logprobs).reshape(rows))
        live.append(going)
        if log_min is not None:
            going = going & (logprobs.gather(1, tokens[-1][:, None])[:, 0] >= log_min)
        if i + 1 == length or (log_min is not None and not bool(going.any())):
            break
        parent = torch.full((rows, 1), i - 1, dtype=torch.long, device=device)
        logprobs = expand(tokens[-1][:, None], parent, i + 1)[:, 0]
    n = len(tokens)
    fed = torch.arange(n, device=device).expand(rows, n).clone()
    fed[:, -1] = -1  # the last token is proposed but never fed to the drafter
    positions = torch.arange(n, device=device)
    return DraftTree(
        torch.stack(tokens, 1),
        (positions - 1).expand(rows, n),
        (positions + 1).expand(rows, n),
        probs=torch.stack(dists, 1).float().exp(),
        fed=fed,
        max_depth=n,
        chain=True,
        valid=torch.stack(live, 1) if log_min is not None else None,
    )


@dataclass(frozen=True)
class StaticShape:
    """A static tree's structure, computed once on the host: node order (by depth, then rank path), which nodes
    are fed (those with children), in which slot, and where each child's token comes from."""

    parents: tuple[int, ...]
    ranks: tuple[int, ...]
    depths: tuple[int, ...]
    levels: tuple[tuple[int, ...], ...]  # levels[d-1]: the nodes at depth d
    fed: tuple[int, ...]  # per node: its slot, -1 for leaves
    _on_device: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # device -> tensors()

    @property
    def max_depth(self) -> int:
        return len(self.levels)

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The shape's index tensors on `device`, made once (the only host-to-device copies a static tree needs)."""
        if device not in self._on_device:
            self._on_device[device] = self._make_tensors(device)
        return self._on_device[device]

    def _make_tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        long = lambda values: torch.tensor(values, dtype=torch.long, device=device)
        out = dict(parents=long(self.parents), depths=long(self.depths), fed=long(self.fed))
        for d, level in enumerate(self.levels, start=1):
            out[f"level{d}"] = long(level)
            out[f"rank{d}"] = long([self.ranks[i] for i in level])
            if d < len(self.levels):
                feed = [i for i in level if self.fed[i] >= 0]
                out[f"feed{d}"] = long(feed)
                out[f"feed_parent_slot{d}"] = long(
                    [self.fed[self.parents[i]] if self.parents[i] >= 0 else -1 for i in feed]
                )
                out[f"child_row{d + 1}"] = long([feed.index(self.parents[i]) for i in self.levels[d]])
        return out


@cache
def static_shape(paths: tuple = EAGLE1_TREE, max_depth: int | None = None) -> StaticShape:
    """The structure of a static tree given as rank paths, nodes sorted by depth (then lexicographically)."""
    kept = sorted(
        {tuple(p) for p in paths if p and (max_depth is None or len(p) <= max_depth)}, key=lambda p: (len(p), p)
    )
    index = {p: i for i, p in enumerate(kept)}
    missing = [p for p in kept if len(p) > 1 and p[:-1] not in index]
    if missing:
        raise ValueError(f"static tree paths {missing} have no parent path")
    parents = tuple(index[p[:-1]] if len(p) > 1 else -1 for p in kept)
    depth = max((len(p) for p in kept), default=0)
    levels = tuple(tuple(i for i, p in enumerate(kept) if len(p) == d) for d in range(1, depth + 1))
    has_children = set(parents)
    fed, slot = [-1] * len(kept), 0
    for level in levels[:-1]:
        for node in level:
            if node in has_children:
                fed[node], slot = slot, slot + 1
    return StaticShape(parents, tuple(p[-1] for p in kept), tuple(len(p) for p in kept), levels, tuple(fed))


def build_static_tree(
    first: torch.Tensor, expand: Expand, paths=EAGLE1_TREE, max_depth: int | None = None
) -> DraftTree:
    """EAGLE-1 style: a fixed shape filled with each row's top-ranked tokens, one drafter call per depth that has
    children (only nodes with children are fed). `first` (B, V)."""
    shape = static_shape(tuple(paths), max_depth)
    t = shape.tensors(first.device)
    rows = first.shape[0]
    tokens = torch.zeros(rows, len(shape.parents), dtype=torch.long, device=first.device)
    dists = first[:, None]  # (B, 1, V): the root's distribution
    child_row = torch.zeros(len(shape.levels[0]) if shape.levels else 0, dtype=torch.long, device=first.device)
    for d in range(1, shape.max_depth + 1):
        ranks = t[f"rank{d}"]
        k = min(max(shape.ranks[i] for i in shape.levels[d - 1]) + 1, dists.shape[-1])
        top = torch.topk(dists.float(), k, dim=-1).indices  # (B, fed parents, k)
        tokens[:, t[f"level{d}"]] = top[:, child_row, ranks.clamp_max(k - 1)]
        if d < shape.max_depth:
            feed = t[f"feed{d}"]
            dists = expand(tokens[:, feed], t[f"feed_parent_slot{d}"].expand(rows, -1), d)
            child_row = t[f"child_row{d + 1}"]
    expand_rows = lambda name: t[name].expand(rows, -1)
    return DraftTree(
        tokens, expand_rows("parents"), expand_rows("depths"), fed=expand_rows("fed"), max_depth=shape.max_depth
    )


def build_dynamic_tree(first: torch.Tensor, expand: Expand, top_k: int, depth: int, total_tokens: int) -> DraftTree:
    """EAGLE-2, per row: grow `depth` layers, each time expanding the `top_k` frontier nodes with the highest
    cumulative draft log-probability into top_k children each; then keep the `total_tokens - 1` best of all
    candidates. `first` (B, V).

    A node's value (sum of log-probs on its path) never exceeds its parent's, and a stable sort puts the parent
    (smaller index) first on ties, so the kept set is always a connected tree. Every step is a fixed-shape tensor
    operation on the drafter's device; the frontier is fed at slots (layer - 1)·k ... layer·k - 1."""
    device, rows = first.device, first.shape[0]
    k = min(top_k, first.shape[-1])
    count = k + (depth - 1) * k * k  # candidates: k root children, then k² per layer
    values = torch.empty(rows, count, dtype=torch.float32, device=device)
    tokens = torch.empty(rows, count, dtype=torch.long, device=device)
    parents = torch.full((rows, count), -1, dtype=torch.long, device=device)
    depths = torch.ones(rows, count, dtype=torch.long, device=device)
    slots = torch.full((rows, count), -1, dtype=torch.long, device=device)
    top = torch.topk(first.float().clamp_min(_FLOOR), k)
    values[:, :k], tokens[:, :k] = top.values, top.indices
    frontier, base = torch.arange(k, device=device).expand(rows, k), k  # (B, k) candidate ids
    for layer in range(1, depth):
        slots.scatter_(1, frontier, torch.arange((layer - 1) * k, layer * k, device=device).expand(rows, k))
        parent = parents.gather(1, frontier)
        parent_slots = torch.where(parent >= 0, slots.gather(1, parent.clamp_min(0)), -1)
        dists = expand(tokens.gather(1, frontier), parent_slots, layer).float().clamp_min(_FLOOR)  # (B, k, V)
        child = torch.topk(dists, k, dim=-1)  # (B, k, k)
        cumulative = (values.gather(1, frontier)[:, :, None] + child.values).flatten(1)  # (B, k²)
        new = slice(base, base + k * k)
        values[:, new], tokens[:, new] = cumulative, child.indices.flatten(1)
        parents[:, new], depths[:, new] = frontier.repeat_interleave(k, dim=1), layer + 1
        frontier = base + torch.topk(cumulative, k).indices
        base += k * k
    kept = torch.sort(values, descending=True, stable=True).indices[:, : min(total_tokens - 1, count)]
    kept = kept.sort(-1).values  # candidate order: parents before children
    new_index = torch.full((rows, count), -1, dtype=torch.long, device=device)
    new_index.scatter_(1, kept, torch.arange(kept.shape[1], device=device).expand_as(kept))
    parent = parents.gather(1, kept)
    return DraftTree(
        tokens.gather(1, kept),
        torch.where(parent >= 0, new_index.gather(1, parent.clamp_min(0)), -1),
        depths.gather(1, kept),
        fed=slots.gather(1, kept),
        max_depth=depth,
    )


@dataclass(frozen=True)
class TreeSpec:
    """How a drafter shapes its proposal each round. `depth` is the longest path in draft tokens (EAGLE's code
    counts one less); `total_tokens` counts the root too, i.e. it is the number of tokens the target verifies."""

    kind: str = "static"  # the defaults are DecodeConfig's (written once, there)
    num_draft_tokens: int = DecodeConfig.num_draft_tokens
    top_k: int = DecodeConfig.tree_top_k
    depth: int = DecodeConfig.tree_depth
    total_tokens: int = DecodeConfig.tree_total_tokens
    # chain: stop after a draft token with q(x) below it (0: always γ tokens)
    confidence_threshold: float = DecodeConfig.confidence_threshold
    paths: tuple = EAGLE1_TREE

    def __post_init__(self):
        check_tree(
            self.kind, self.num_draft_tokens, self.top_k, self.depth, self.total_tokens, self.confidence_threshold
        )

    @property
    def max_depth(self) -> int:
        return {"chain": self.num_draft_tokens, "dynamic": self.depth}.get(self.kind) or max(map(len, self.paths))

    @property
    def max_nodes(self) -> int:
        """The most draft nodes one round can hold (the target verifies one more: the root)."""
        if self.kind == "chain":
            return self.num_draft_tokens
        if self.kind == "static":
            return len(static_shape(tuple(self.paths)).parents)
        return min(self.total_tokens - 1, self.top_k + (self.depth - 1) * self.top_k**2)

    @property
    def max_fed(self) -> int:
        """The most nodes a drafter is fed in one round, beyond the root."""
        if self.kind == "chain":
            return self.num_draft_tokens - 1
        if self.kind == "static":
            return sum(1 for slot in static_shape(tuple(self.paths)).fed if slot >= 0)
        return (self.depth - 1) * self.top_k

    def build(
        self, first: torch.Tensor, expand: Expand, choose: Callable[[torch.Tensor], torch.Tensor], max_depth: int
    ) -> DraftTree:
        """Trees below each row's root (`first` (B, V): the draft's log-probabilities after it), no deeper than
        `max_depth` (the most tokens any row still wants this generation)."""
        if self.kind == "chain":
            return build_chain(first, expand, min(self.num_draft_tokens, max_depth), choose, self.confidence_threshold)
        if self.kind == "static":
            return build_static_tree(first, expand, self.paths, max_depth)
        return build_dynamic_tree(first, expand, self.top_k, min(self.depth, max_depth), self.total_tokens)
