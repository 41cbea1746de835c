"""Acceptance rules: which drafted nodes the target keeps, and the token it adds after them.

Row 0 of the target's outputs belongs to the root, row i+1 to tree node i: row j is the target's next-token
distribution *after* that node. Every rule returns a `Verdict` of device tensors, computed for all nodes at once
(EAGLE's retrieve-indices idea: a node is accepted when every node on its root path is, read off the ancestor
matrix), so a round costs the host one synchronisation: `Verdict.to_host()`.

Glossary (vLLM's): *accepted* = draft tokens kept; *recovered* = the token drawn from the residual at the first
rejection; *bonus* = the token the target adds after a fully accepted path. `next_token` is whichever of the
two the round produced.

Each rule reproduces the target's own distribution exactly:
- greedy: follow the child equal to the target's argmax until none matches;
- chain sampling (Leviathan et al. 2023): accept x with probability min(1, p(x)/q(x)); at the first rejection
  draw from the residual norm(max(p - q, 0));
- tree sampling (EAGLE-2): each child is a deterministic one-hot proposal; try children in order, accepting x
  with probability p'(x), else set p'(x) = 0 and renormalise. This is sampling from p without replacement, so the
  token that comes out is distributed exactly as p; if every child is rejected, draw from what is left of p'.
  Vectorised: a child tried after siblings of total mass S is accepted with p(x) / (mass - S), and the first
  accepted sibling wins, which is the sequential rule with the coins drawn up front.
Draws use the exponential trick (argmax p / E, E ~ Exp(1)), which samples p exactly without a host round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample_from
from .tree import DraftTree


@dataclass
class Verdict:
    count: torch.Tensor        # () long: accepted draft tokens
    next_token: torch.Tensor   # (1,) long: the recovered or bonus token
    path: torch.Tensor         # (n,) long: accepted nodes in root-to-leaf order in the first `count` entries

    def to_host(self, tree: DraftTree) -> "Accepted":
        """The round's one synchronisation: count, next token, and the accepted nodes' ids, tokens and drafter
        slots, in a single device-to-host copy."""
        node = self.path.clamp_max(len(tree) - 1)
        parts = [self.count.reshape(1), self.next_token.reshape(1), self.path, tree.tokens[node]]
        if tree.fed is not None:
            parts.append(tree.fed[node])
        host = torch.cat([p.to(torch.long) for p in parts]).tolist()
        count, n = host[0], len(tree)
        fed = host[2 + 2 * n: 2 + 2 * n + count] if tree.fed is not None else [-1] * count
        return Accepted(host[2: 2 + count], host[2 + n: 2 + n + count], fed, host[1])


@dataclass
class Accepted:
    """A round's outcome on the host."""
    path: list[int]      # accepted nodes, root to leaf
    tokens: list[int]    # their tokens
    fed: list[int]       # their drafter slots (-1: never fed)
    next_token: int


def _verdict(ok: torch.Tensor, tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From `ok` (n,) bool, the nodes whose whole root path is accepted: (count, row of the deepest one's outputs
    (0 = the root when none), path in node order)."""
    n = len(tree)
    order = torch.arange(n, device=ok.device)
    best_depth, best = torch.where(ok, tree.depths, 0).max(0)
    on_path = tree.ancestors[best] & (best_depth > 0)
    path = torch.sort(torch.where(on_path, order, n + order)).values.clamp_max(n)   # the path, then n's
    return best_depth, torch.where(best_depth > 0, best + 1, 0), path


def _accepted_along_paths(step_ok: torch.Tensor, tree: DraftTree) -> torch.Tensor:
    """(n,) bool: every node from the root's child down to node i passed its own test `step_ok`."""
    return ~(tree.ancestors & ~step_ok[None, :]).any(-1)


def accept_greedy(target_choice: torch.Tensor, tree: DraftTree) -> Verdict:
    """`target_choice` (n+1,) long: the target's argmax after each row."""
    choice = target_choice.reshape(-1)
    matches = tree.tokens == choice[tree.parents + 1]
    count, row, path = _verdict(_accepted_along_paths(matches, tree), tree)
    return Verdict(count, choice[row].reshape(1), path)


def accept_chain_sampled(p: torch.Tensor, tree: DraftTree, generator=None) -> Verdict:
    """p: (n+1, V) target probabilities per row; tree.probs: (n, V) draft probabilities q each token came from."""
    q = tree.probs.to(p.device, torch.float32)
    n, rows = len(tree), torch.arange(len(tree), device=p.device)
    tokens = tree.tokens.to(p.device)
    u = torch.rand(n, generator=generator, device=p.device)
    rejected = u * q[rows, tokens] > p[rows, tokens]                       # u > p(x) / q(x), with q(x) > 0
    first = torch.where(rejected.any(), rejected.int().argmax(), n)   # accepted count
    at = first.clamp_max(n - 1)
    residual = (p[at] - q[at]).clamp_min(0)
    residual = torch.where(residual.sum() > 0, residual, p[at])           # p == q up to rounding: draw from p
    final = torch.where(first < n, residual, p[n])
    path = torch.where(rows < first, rows, n)
    return Verdict(first, sample_from(final, generator).reshape(1), path)


def accept_tree_sampled(p: torch.Tensor, tree: DraftTree, generator=None) -> Verdict:
    """p: (n+1, V) target probabilities per row. Children are tried in node order."""
    n, device = len(tree), p.device
    tokens, parents = tree.tokens.to(device), tree.parents.to(device)
    order = torch.arange(n, device=device)
    px = p[parents + 1, tokens].double()                                   # (n,) p(x) under the parent's row
    earlier_sibling = (parents[None, :] == parents[:, None]) & (order[None, :] < order[:, None])    # (n, n)
    mass = p.sum(-1, dtype=torch.float64)[parents + 1] - (earlier_sibling.double() * px[None, :]).sum(-1)
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    coin = (px > 0) & (mass > 0) & (u * mass < px)
    chosen = coin & ~(earlier_sibling & coin[None, :]).any(-1)             # the first sibling whose coin came up
    count, row, path = _verdict(_accepted_along_paths(chosen, tree), tree)
    # stopped at `row`: every child of it was tried and rejected, so draw from p there without them
    rejected_children = torch.where(parents + 1 == row, tokens, p.shape[-1])
    dropped = torch.zeros(p.shape[-1] + 1, dtype=torch.bool, device=device).scatter_(0, rejected_children, True)
    left = p[row].masked_fill(dropped[:-1], 0.0)
    left = torch.where(left.sum() > 0, left, p[row])                       # every token was a rejected child
    return Verdict(count, sample_from(left, generator).reshape(1), path)
