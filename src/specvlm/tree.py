"""Draft trees: the shapes, how a drafter grows them, and the attention masks that verify them.

A round starts from the *root*: the newest committed token, which neither model has in its KV cache yet. A tree
holds n draft nodes below it. Node i carries `tokens[i]` and `parents[i]` (-1 is the root); parents come before
children (parents[i] < i). A chain is the tree whose parents are -1, 0, 1, ...

Builders are pure bookkeeping around one callable, `expand(tree, feed) -> logprobs (len(feed), vocab)`, which runs
the drafter on the nodes `feed` of the partial `tree` and returns its next-token log-probabilities below each of
them. Tests drive the builders with hand-made tables instead of a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import SpecVLMError

# The EAGLE-1 static tree `mc_sim_7b_63` that the video-pruning paper drafts with: 25 nodes below the root, depth
# 5, 4/8/8/3/2 nodes per depth, 15 leaves. A path (r1, r2, ...) is "the r1-th best child of the root, then its
# r2-th best child, ...".
EAGLE1_TREE: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 2, 0), (0, 2, 1), (1, 0, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1),
)

# Log-probabilities are clamped here so that sums over a path never produce nan from (-inf) + (-inf) arithmetic.
_FLOOR = -1e9


@dataclass
class DraftTree:
    tokens: torch.Tensor                 # (n,) long
    parents: torch.Tensor                # (n,) long, -1 = root
    probs: torch.Tensor | None = None    # (n, vocab): distribution node i was sampled from (chains when sampling)
    origin: list[int] | None = None      # index of each node in the candidate pool it was chosen from (dynamic)

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def children(self) -> list[list[int]]:
        """children()[0] lists the root's children, children()[i + 1] those of node i, in node order."""
        kids: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for node, parent in enumerate(self.parents.tolist()):
            kids[parent + 1].append(node)
        return kids

    def path(self, node: int) -> list[int]:
        """Nodes from the root's child down to `node` (inclusive)."""
        parents = self.parents.tolist()
        out = []
        while node >= 0:
            out.append(node)
            node = parents[node]
        return out[::-1]

    @property
    def depths(self) -> torch.Tensor:
        return node_depths(self.parents)

    @property
    def is_chain(self) -> bool:
        return self.parents.tolist() == list(range(-1, len(self) - 1))


def node_depths(parents: torch.Tensor) -> torch.Tensor:
    depth: list[int] = []
    for parent in parents.tolist():
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return torch.tensor(depth, dtype=torch.long)


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """(n+1, n+1) bool; [i, j] is True when j is i or an ancestor of i. Index 0 is the root, node k is k+1."""
    n = parents.numel()
    visible = torch.eye(n + 1, dtype=torch.bool)
    for node, parent in enumerate(parents.tolist()):
        visible[node + 1] |= visible[parent + 1]
    return visible


def additive_mask(visible: torch.Tensor, prefix_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """4-D attention mask (1, 1, q, prefix_len + m) for q new rows: the whole committed prefix is visible, and among
    the m tree entries in the cache only those `visible` (q, m) marks. 0 = attend, dtype-min = blocked."""
    q, m = visible.shape
    allowed = torch.cat([torch.ones(q, prefix_len, dtype=torch.bool), visible.cpu()], dim=1)
    mask = torch.zeros(q, prefix_len + m, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


Expand = Callable[[DraftTree, Sequence[int]], torch.Tensor]


def _partial(tokens: list[int], parents: list[int]) -> DraftTree:
    return DraftTree(torch.tensor(tokens, dtype=torch.long), torch.tensor(parents, dtype=torch.long))


def build_chain(first: torch.Tensor, expand: Expand, length: int, choose: Callable[[torch.Tensor], int],
                min_prob: float = 0.0) -> DraftTree:
    """Up to γ = `length` tokens one after another. `first` and each expansion are log-probabilities; `choose` picks
    a token from them (argmax when greedy, a sample when not). The chosen-from distributions are kept as `probs`
    (q). The chain stops early after a token the draft gave probability q(x) < `min_prob` (HF assisted generation's
    confidence threshold): a token the draft doubts is likely rejected, and every token after it wasted. The stop
    depends on the draft's own draws only, so the acceptance rules stay exact."""
    tokens: list[int] = []
    rows = []
    logprobs = first
    for i in range(length):
        rows.append(logprobs.float().exp())
        tokens.append(choose(logprobs))
        if i + 1 == length or rows[-1][tokens[-1]] < min_prob:
            break
        logprobs = expand(_partial(tokens, list(range(-1, i))), [i])[0]
    tree = _partial(tokens, list(range(-1, len(tokens) - 1)))
    tree.probs = torch.stack(rows) if rows else None
    return tree


def static_shape(paths: Sequence[Sequence[int]], max_depth: int | None = None) -> tuple[list[int], list[int]]:
    """Parents and child ranks for a list of rank paths, nodes sorted by depth (then lexicographically)."""
    kept = sorted({tuple(p) for p in paths if p and (max_depth is None or len(p) <= max_depth)},
                  key=lambda p: (len(p), p))
    index = {p: i for i, p in enumerate(kept)}
    missing = [p for p in kept if len(p) > 1 and p[:-1] not in index]
    if missing:
        raise ValueError(f"static tree paths {missing} have no parent path")
    parents = [index[p[:-1]] if len(p) > 1 else -1 for p in kept]
    return parents, [p[-1] for p in kept]


def build_static_tree(first: torch.Tensor, expand: Expand, paths=EAGLE1_TREE, max_depth: int | None = None) -> DraftTree:
    """EAGLE-1 style: a fixed shape filled with the drafter's top-ranked tokens, one drafter call per depth that
    has children (only nodes with children are fed)."""
    parents, ranks = static_shape(paths, max_depth)
    tokens = [0] * len(parents)
    depth = node_depths(torch.tensor(parents, dtype=torch.long)).tolist() if parents else []
    logprobs_of = {-1: first}
    for level in range(1, max(depth, default=0) + 1):
        level_nodes = [i for i, d in enumerate(depth) if d == level]
        feed = sorted({parents[i] for i in level_nodes} - set(logprobs_of))
        if feed:
            rows = expand(_partial(tokens, parents), feed)
            logprobs_of.update(zip(feed, rows))
        for node in level_nodes:
            row = logprobs_of[parents[node]]
            top = torch.topk(row.float(), min(ranks[node] + 1, row.numel())).indices
            tokens[node] = int(top[min(ranks[node], top.numel() - 1)])
    return _partial(tokens, parents)


def build_dynamic_tree(first: torch.Tensor, expand: Expand, top_k: int, depth: int, total_tokens: int) -> DraftTree:
    """EAGLE-2: grow `depth` layers, each time expanding the `top_k` frontier nodes with the highest cumulative
    draft log-probability into top_k children each; then keep the `total_tokens - 1` best of all candidates.

    A node's value (sum of log-probs on its path) never exceeds its parent's, and a stable sort puts the parent
    (smaller index) first on ties, so the kept set is always a connected tree."""
    k = min(top_k, first.numel())
    values, tokens, parents = [], [], []
    top = torch.topk(first.float().clamp_min(_FLOOR), k)
    values += top.values.tolist()
    tokens += top.indices.tolist()
    parents += [-1] * k
    frontier = list(range(k))
    for _ in range(depth - 1):
        rows = expand(_partial(tokens, parents), frontier).float().clamp_min(_FLOOR)
        child = torch.topk(rows, k, dim=-1)
        cumulative = torch.tensor([values[f] for f in frontier])[:, None] + child.values
        base = len(tokens)
        values += cumulative.flatten().tolist()
        tokens += child.indices.flatten().tolist()
        parents += [f for f in frontier for _ in range(k)]
        best = torch.topk(cumulative.flatten(), k).indices.tolist()
        frontier = [base + b for b in best]
    order = torch.sort(torch.tensor(values), descending=True, stable=True).indices
    keep = sorted(order[: max(total_tokens - 1, 0)].tolist())
    new_index = {old: new for new, old in enumerate(keep)}
    tree = _partial([tokens[i] for i in keep], [new_index[parents[i]] if parents[i] >= 0 else -1 for i in keep])
    tree.origin = keep
    return tree


@dataclass(frozen=True)
class TreeSpec:
    """How a drafter shapes its proposal each round. `depth` is the longest path in draft tokens (EAGLE's code
    counts one less); `total_tokens` counts the root too, i.e. it is the number of tokens the target verifies."""
    kind: str = "static"
    num_draft_tokens: int = 5
    top_k: int = 10
    depth: int = 6
    total_tokens: int = 60
    confidence_threshold: float = 0.0   # chain: stop after a draft token with q(x) below it (0: always γ tokens)
    paths: tuple = EAGLE1_TREE

    def __post_init__(self):
        if self.kind not in ("chain", "static", "dynamic"):
            raise SpecVLMError(f"tree must be 'chain', 'static' or 'dynamic', got {self.kind!r}")
        if min(self.num_draft_tokens, self.top_k, self.depth, self.total_tokens - 1) < 1:
            raise SpecVLMError("num_draft_tokens, tree_top_k and tree_depth must be >= 1 and tree_total_tokens >= 2, "
                               f"got {self.num_draft_tokens}, {self.top_k}, {self.depth} and {self.total_tokens}")
        if not 0 <= self.confidence_threshold < 1:
            raise SpecVLMError(f"confidence_threshold must be in [0, 1), got {self.confidence_threshold}")

    @property
    def max_depth(self) -> int:
        return {"chain": self.num_draft_tokens, "dynamic": self.depth}.get(self.kind) or max(map(len, self.paths))

    def build(self, first: torch.Tensor, expand: Expand, choose: Callable[[torch.Tensor], int],
              max_depth: int) -> DraftTree:
        """A tree no deeper than `max_depth` (the tokens still wanted this generation)."""
        if self.kind == "chain":
            return build_chain(first, expand, min(self.num_draft_tokens, max_depth), choose, self.confidence_threshold)
        if self.kind == "static":
            return build_static_tree(first, expand, self.paths, max_depth)
        return build_dynamic_tree(first, expand, self.top_k, min(self.depth, max_depth), self.total_tokens)
