"""Acceptance rules: which drafted nodes the target keeps, and the token it adds after them.

Per batch row b, position 0 of the target's outputs belongs to the root, position i+1 to tree node i: position j
is the target's next-token distribution *after* that node. Every rule returns a `Verdict` of device tensors,
computed for all rows and nodes at once (EAGLE's retrieve-indices idea: a node is accepted when every node on its
root path is, read off the ancestor matrix), so a round costs the host one synchronisation for the whole batch:
`Verdict.to_host()`. Nodes a row did not really propose (`DraftTree.valid`) are never accepted and never count as
tried.

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

from .sampling import sample_from, uniform
from .tree import DraftTree


@dataclass
class Verdict:
    count: torch.Tensor  # (B,) long: accepted draft tokens per row
    next_token: torch.Tensor  # (B,) long: the recovered or bonus token per row
    path: torch.Tensor  # (B, n) long: accepted nodes in root-to-leaf order in the first `count` entries

    def to_host(self, tree: DraftTree) -> list[Accepted]:
        """The round's one synchronisation: per row the count, next token, and the accepted nodes' ids, tokens and
        drafter slots, all rows in a single device-to-host copy."""
        n = len(tree)
        node = self.path.clamp_max(max(n - 1, 0))
        drafted = tree.valid.sum(-1) if tree.valid is not None else torch.full_like(self.count, n)
        parts = [self.count[:, None], self.next_token[:, None], drafted[:, None], self.path]
        if n:
            parts.append(tree.tokens.gather(1, node))
            if tree.fed is not None:
                parts.append(tree.fed.gather(1, node))
        rows = torch.cat([p.to(torch.long) for p in parts], 1).tolist()
        out = []
        for host in rows:
            count, head = host[0], 3
            tokens = host[head + n : head + n + count]
            fed = host[head + 2 * n : head + 2 * n + count] if tree.fed is not None else [-1] * count
            out.append(Accepted(host[head : head + count], tokens, fed, host[1], host[2]))
        return out


@dataclass
class Accepted:
    """A round's outcome for one row, on the host."""

    path: list[int]  # accepted nodes, root to leaf
    tokens: list[int]  # their tokens
    fed: list[int]  # their drafter slots (-1: never fed)
    next_token: int
    drafted: int | None = None  # nodes the row really proposed this round


def _verdict(ok: torch.Tensor, tree: DraftTree) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From `ok` (B, n) bool, per row the nodes whose whole root path is accepted: (count (B,), row of the deepest
    one's outputs (B,) (0 = the root when none), path (B, n) in node order, padded with n)."""
    n = len(tree)
    order = torch.arange(n, device=ok.device)
    assert tree.depths is not None  # filled in by DraftTree.__post_init__
    best_depth, best = torch.where(ok, tree.depths, 0).max(-1)  # (B,), (B,)
    on_path = tree.ancestors.gather(1, best[:, None, None].expand(-1, 1, n))[:, 0] & (best_depth > 0)[:, None]
    path = torch.sort(torch.where(on_path, order, n + order), -1).values.clamp_max(n)  # the path, then n's
    return best_depth, torch.where(best_depth > 0, best + 1, 0), path


def _accepted_along_paths(step_ok: torch.Tensor, tree: DraftTree) -> torch.Tensor:
    """(B, n) bool: every node from the root's child down to node i passed its own test `step_ok` (B, n)."""
    return ~(tree.ancestors & ~step_ok[:, None, :]).any(-1)


def _nothing_drafted(rows: torch.Tensor) -> Verdict:
    """A round without draft nodes (target-only decoding): no acceptance, `rows` (B,) is the next token."""
    zeros = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
    return Verdict(zeros, rows, zeros[:, None][:, :0])


def accept_greedy(target_choice: torch.Tensor, tree: DraftTree) -> Verdict:
    """`target_choice` (B, n+1) long: the target's argmax after each row's root and nodes."""
    if len(tree) == 0:
        return _nothing_drafted(target_choice[:, 0])
    matches = tree.tokens == target_choice.gather(1, tree.parents + 1)
    if tree.valid is not None:
        matches &= tree.valid
    count, row, path = _verdict(_accepted_along_paths(matches, tree), tree)
    return Verdict(count, target_choice.gather(1, row[:, None])[:, 0], path)


def accept_chain_sampled(p: torch.Tensor, tree: DraftTree, random=None) -> Verdict:
    """p: (B, n+1, V) target probabilities per row; tree.probs: (B, n, V) draft probabilities q each token came
    from. `random`: a `sampling.RowRandom` (None: torch's global generator)."""
    n = len(tree)
    if n == 0:
        return _nothing_drafted(sample_from(p[:, 0], random))
    assert tree.probs is not None, "a sampled draft tree carries the distributions its tokens were drawn from"
    q = tree.probs.to(p.device, torch.float32)
    tokens = tree.tokens.to(p.device)
    rows = torch.arange(n, device=p.device)
    batch = torch.arange(p.shape[0], device=p.device)[:, None]
    px, qx = p[batch, rows, tokens], q[batch, rows, tokens]  # (B, n): p(x), q(x) at each node
    u = uniform((p.shape[0], n), p.device, torch.float32, random)
    rejected = u * qx > px  # u > p(x) / q(x), with q(x) > 0
    if tree.valid is not None:
        rejected |= ~tree.valid  # the row's chain ended: stop there
    first = torch.where(rejected.any(-1), rejected.int().argmax(-1), n)  # (B,) accepted count
    at = first.clamp_max(n - 1)
    p_at = p.gather(1, at[:, None, None].expand(-1, 1, p.shape[-1]))[:, 0]  # (B, V)
    q_at = q.gather(1, at[:, None, None].expand(-1, 1, q.shape[-1]))[:, 0]
    residual = (p_at - q_at).clamp_min(0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_at)  # p == q up to rounding: draw p
    bonus = p.gather(1, first[:, None, None].expand(-1, 1, p.shape[-1]))[:, 0]  # the row after the last node
    real = first < n
    if tree.valid is not None:
        real &= tree.valid.gather(1, at[:, None])[:, 0]  # stopped by the end of the chain: no rejection there
    final = torch.where(real[:, None], residual, bonus)
    path = torch.where(rows[None, :] < first[:, None], rows[None, :], n)
    return Verdict(first, sample_from(final, random), path)


def accept_tree_sampled(p: torch.Tensor, tree: DraftTree, random=None) -> Verdict:
    """p: (B, n+1, V) target probabilities per row. Children are tried in node order."""
    n, device, vocab = len(tree), p.device, p.shape[-1]
    if n == 0:
        return _nothing_drafted(sample_from(p[:, 0], random))
    tokens, parents = tree.tokens.to(device), tree.parents.to(device)
    order = torch.arange(n, device=device)
    batch = torch.arange(p.shape[0], device=device)[:, None]
    px = p[batch, parents + 1, tokens].double()  # (B, n) p(x) under the parent's row
    proposed = tree.valid if tree.valid is not None else torch.ones_like(tokens, dtype=torch.bool)
    px = torch.where(proposed, px, 0.0)  # not proposed: never tried
    earlier_sibling = (parents[:, None, :] == parents[:, :, None]) & (order[None, :] < order[:, None])[None]
    total = p.sum(-1, dtype=torch.float64).gather(1, parents + 1)  # (B, n) mass of each node's row
    mass = total - (earlier_sibling.double() * px[:, None, :]).sum(-1)
    u = uniform((p.shape[0], n), device, torch.float64, random)
    coin = (px > 0) & (mass > 0) & (u * mass < px)
    chosen = coin & ~(earlier_sibling & coin[:, None, :]).any(-1)  # the first sibling whose coin came up
    count, row, path = _verdict(_accepted_along_paths(chosen, tree), tree)
    # stopped at `row`: every proposed child of it was tried and rejected, so draw from p there without them
    rejected_children = torch.where((parents + 1 == row[:, None]) & proposed, tokens, vocab)
    dropped = torch.zeros(p.shape[0], vocab + 1, dtype=torch.bool, device=device).scatter_(1, rejected_children, True)
    p_row = p.gather(1, row[:, None, None].expand(-1, 1, vocab))[:, 0]
    left = p_row.masked_fill(dropped[:, :-1], 0.0)
    left = torch.where(left.sum(-1, keepdim=True) > 0, left, p_row)  # every token was a rejected child
    return Verdict(count, sample_from(left, random), path)
