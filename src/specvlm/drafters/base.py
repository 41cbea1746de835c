"""The contract between the decode loop and whoever proposes tokens.

Each round the loop calls `propose(root, max_depth, seen)` for a `DraftTree` below the root token (a (1,) tensor
on the device), verifies it with one target forward, then calls `commit(tree, accepted, next_token,
target_hidden)` with the round's outcome on the host (`verify.Accepted`: the accepted nodes, their tokens and
slots), the target's next token (the new root, still on the device) and the target's final hidden states for
[root, *accepted] (what EAGLE-style heads feed on). Between rounds a drafter's cache holds exactly the committed
tokens it has processed. `propose` never reads a tensor back to the host.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch

from ..adapters import Prompt
from ..sampling import Sampling, history_rows, sample_from
from ..tree import DraftTree, TreeSpec


@dataclass
class DraftContext:
    inputs: dict                  # processor outputs for the drafter (its own visual inputs)
    target_prompt: Prompt         # what the target saw, positions included
    target_hidden: torch.Tensor   # (L, H) target's final hidden states over the prompt
    sampling: Sampling
    tree: TreeSpec
    vocab_size: int               # width of the target's logits; draft distributions are fitted to it
    generator: torch.Generator | None = None  # on the drafter's device
    visual_keep: torch.Tensor | None = None   # pruning: indices of the visual tokens the draft keeps
    contiguous_positions: bool = False        # pruning: renumber the draft's shorter prompt 0..L'-1
    visual_scores: torch.Tensor | None = None  # the target's text->visual attention, captured in its prefill
    new_session: Callable | None = None       # adapter -> a session of the generator's engine
    target_session: object = None             # the target's session ("self" without pruning drafts in it)
    reserve: int = 0                          # entries a session may append after its prompt this generation


class Drafter:
    forwards: int = 0
    prompt_tokens: int = 0
    default_tree: str = "static"   # the tree shape used when the caller names none (EAGLE heads: "dynamic")

    needs_visual_scores: bool = False   # True: begin() reads ctx.visual_scores (the target's attention capture)

    def begin(self, ctx: DraftContext) -> None:
        raise NotImplementedError

    def propose(self, root: torch.Tensor, max_depth: int, seen: torch.Tensor | None) -> DraftTree:
        raise NotImplementedError

    def commit(self, tree: DraftTree, accepted, next_token: torch.Tensor, target_hidden: torch.Tensor) -> None:
        raise NotImplementedError

    # Shared by drafters that keep `self.ctx` from begin(): the draft distribution a tree builder expands.
    def _logprobs(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        logits = fit_vocab(logits, self.ctx.vocab_size)
        sampling = self.ctx.sampling
        if self.ctx.tree.kind == "chain" and sampling.do_sample:
            return sampling.probs(logits, seen).log()   # the chain samples from exactly this q
        return sampling.logprobs(logits, seen)

    def _choose(self, logprobs: torch.Tensor) -> torch.Tensor:
        if self.ctx.sampling.do_sample:
            return sample_from(logprobs.exp(), self.ctx.generator)
        return logprobs.argmax(-1)


class RoundSlots:
    """What a drafter tracks about the nodes fed within one round (see `tree.Expand`): node j of the round sits
    at slot j, sees the nodes of its own path only, and its repetition history is the committed ids plus that
    path. Fixed-size device buffers with one extra all-empty last row, which parent slot -1 (the root) indexes,
    so feeding w nodes costs three small tensor operations and never synchronises."""

    def __init__(self, spec: TreeSpec, device: torch.device, seen: torch.Tensor | None):
        size = max(spec.max_fed, 1)
        self.count = 0
        self.visible = torch.zeros(size + 1, size, dtype=torch.bool, device=device)   # [slot, slot]: own path
        self.seen = seen
        self.paths = None if seen is None else \
            torch.full((size + 1, spec.max_depth), -1, dtype=torch.long, device=device)   # [slot, depth-1]: tokens

    def add(self, tokens: torch.Tensor, parent_slots: torch.Tensor, depth: int):
        """Register w nodes fed next; returns their visibility over the round's fed window (w, count) and their
        repetition histories (w, V) (None without a penalty)."""
        w, first = tokens.numel(), self.count
        rows = self.visible[parent_slots]                                 # (w, size): the parents' paths
        rows[:, first: first + w] |= _identity(w, rows.device)            # ... and the node itself
        self.visible[first: first + w] = rows
        self.count += w
        history = None
        if self.paths is not None:
            paths = self.paths[parent_slots]
            paths[:, depth - 1] = tokens
            self.paths[first: first + w] = paths
            history = history_rows(self.seen, paths)
        return rows[:, : self.count], history


@functools.lru_cache(maxsize=32)
def _identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(n, dtype=torch.bool, device=device)


def fit_vocab(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Draft logits over the target's ids: ids the target lacks are cut, ids the draft lacks get -inf.
    (Padded vocabularies of one family differ only in never-used rows, e.g. 151936 vs 152064.)"""
    width = logits.shape[-1]
    if width > vocab_size:
        return logits[..., :vocab_size]
    if width < vocab_size:
        pad = logits.new_full((*logits.shape[:-1], vocab_size - width), float("-inf"))
        return torch.cat([logits, pad], dim=-1)
    return logits
