"""Acceptance rules: which drafted nodes the target keeps, and the token it adds after them.

Row 0 of the target's outputs belongs to the root, row i+1 to tree node i: row j is the target's next-token
distribution *after* that node. Every rule returns (path, next_token): the accepted nodes from the root downwards,
and the token the target contributes after the last of them (the "bonus"; the correction after a rejection).

Each rule reproduces the target's own distribution exactly:
- greedy: follow the child equal to the target's argmax until none matches;
- chain sampling (Leviathan et al. 2023): accept x with probability min(1, p(x)/q(x)); at the first rejection
  draw from the residual norm(max(p - q, 0));
- tree sampling (EAGLE-2): each child is a deterministic one-hot proposal; try children in order, accepting x
  with probability p'(x), else set p'(x) = 0 and renormalise. This is sampling from p without replacement, so the
  token that comes out is distributed exactly as p; if every child is rejected, draw from what is left of p'.
"""

from __future__ import annotations

import torch

from .sampling import sample_from
from .tree import DraftTree


def accept_greedy(target_choice: list[int], tree: DraftTree) -> tuple[list[int], int]:
    """`target_choice[j]` is the target's argmax after row j."""
    tokens, kids = tree.tokens.tolist(), tree.children()
    path: list[int] = []
    row = 0
    while True:
        want = target_choice[row]
        match = next((c for c in kids[row] if tokens[c] == want), None)
        if match is None:
            return path, want
        path.append(match)
        row = match + 1


def accept_chain_sampled(p: torch.Tensor, tree: DraftTree, generator=None) -> tuple[list[int], int]:
    """p: (n+1, V) target probabilities per row; tree.probs: (n, V) draft probabilities q each token came from."""
    q = tree.probs.to(p.device, torch.float32)
    tokens = tree.tokens.to(p.device)
    n = tokens.numel()
    if n:
        rows = torch.arange(n, device=p.device)
        ratio = p[rows, tokens] / q[rows, tokens]
        u = torch.rand(n, generator=generator, device="cpu").to(p.device)
        rejected = (u > ratio).nonzero()
        if rejected.numel():
            first = int(rejected[0])
            residual = (p[first] - q[first]).clamp_min(0)
            if residual.sum() <= 0:  # only from rounding: p and q equal up to float error
                residual = p[first]
            return list(range(first)), sample_from(residual / residual.sum(), generator)
    return list(range(n)), sample_from(p[n], generator)


def accept_tree_sampled(p: torch.Tensor, tree: DraftTree, generator=None) -> tuple[list[int], int]:
    """p: (n+1, V) target probabilities per row. Children are tried in node order."""
    tokens, kids = tree.tokens.tolist(), tree.children()
    path: list[int] = []
    row = 0
    while True:
        left = p[row].double().clone()
        accepted = None
        for child in kids[row]:
            x = tokens[child]
            mass = left.sum()
            if left[x] <= 0 or mass <= 0:
                continue
            if float(torch.rand((), generator=generator)) * float(mass) < float(left[x]):
                accepted = child
                break
            left[x] = 0.0
        if accepted is None:
            if left.sum() <= 0:  # every remaining token was a rejected child up to rounding
                left = p[row].double()
            return path, sample_from(left / left.sum(), generator)
        path.append(accepted)
        row = accepted + 1
