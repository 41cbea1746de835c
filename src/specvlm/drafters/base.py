"""The contract between the decode loop and whoever proposes tokens, for a batch of rows.

Per batch the loop calls `start(setup)` (what every row shares: tree shape, vocabulary, sessions), then
`add_row(row, ctx)` for each sequence as it joins (its own prompt, prefilled on its own). Each round it calls
`propose(roots, max_depth, seen, sampling, random)` for a batched `DraftTree` below every active row's root token
(`roots` (B,) on the device), verifies all rows with one target forward, then calls `commit(tree, accepted,
next_tokens, target_hidden)` with the round's outcome per row on the host (`verify.Accepted`: the accepted nodes,
their tokens and slots), the target's next tokens (the new roots, still on the device) and per row the target's
final hidden states for [root, *accepted] (what EAGLE-style heads feed on). Active rows are rows 0..B-1; when a
row leaves, the loop moves the last row into its place (`move_row`) and drops the tail (`drop_rows`). Between
rounds a drafter's cache holds exactly the committed tokens it has processed, per row. `propose` never reads a
tensor back to the host (except a draft with another vocabulary: its roots reach it through text, `vocab.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..adapters import Prompt
from ..engine.sampling import RowRandom, RowSampling, Sampling, history_rows, sample_from
from ..engine.tree import DraftTree, TreeSpec
from .pruning import DraftView


@dataclass
class DraftSetup:
    """What every row of a batch shares."""

    tree: TreeSpec
    vocab_size: int  # width of the target's logits; draft distributions are fitted to it
    max_rows: int  # the most rows the batch holds at once
    fixed_rows: bool = False  # rows only leave the batch (one generate call's): sessions keep its padded shape
    new_session: Callable | None = None  # (adapter, role) -> a session of the generator's engine
    target_session: object = None  # the target's session ("self" without pruning drafts in it)
    view: DraftView = DraftView()  # the draft-prompt policy: pruning, and how a pruned prompt is numbered


@dataclass
class DraftContext:
    """One row, as it joins the batch."""

    inputs: dict  # processor outputs for the drafter (its own visual inputs), batch of one
    target_prompt: Prompt  # what the target saw, positions included
    target_hidden: torch.Tensor  # (L, H) target's final hidden states over the prompt (or its `target_features`)
    sampling: Sampling
    visual_keep: torch.Tensor | None = None  # pruning: indices of the visual tokens the draft keeps
    visual_scores: torch.Tensor | None = None  # the target's text->visual attention, captured in its prefill
    reserve: int = 0  # entries the row may append after its prompt this generation


class Drafter:
    forwards: int = 0
    default_tree: str = "static"  # the tree shape used when the caller names none (EAGLE heads: "dynamic")

    needs_visual_scores: bool = False  # True: add_row() reads ctx.visual_scores (the target's attention capture)
    # the target hidden states add_row / commit receive: None the final (post-norm) ones; else indices into HF's
    # `hidden_states` (i: the input of decoder layer i), concatenated (an EAGLE-3 head's low / middle / high)
    target_features: tuple[int, ...] | None = None

    def start(self, setup: DraftSetup) -> None:
        raise NotImplementedError

    def add_row(self, row: int, ctx: DraftContext) -> int:
        """Prefill row `row` (the next free one); returns the draft prompt's length."""
        raise NotImplementedError

    def propose(
        self,
        roots: torch.Tensor,
        max_depth: int,
        seen: torch.Tensor | None,
        sampling: RowSampling,
        random: RowRandom | None,
    ) -> DraftTree:
        raise NotImplementedError

    def commit(
        self, tree: DraftTree, accepted: list, next_tokens: torch.Tensor, target_hidden: list[torch.Tensor]
    ) -> None:
        raise NotImplementedError

    def move_row(self, src: int, dst: int) -> None:
        raise NotImplementedError

    def drop_rows(self, rows: int) -> None:
        raise NotImplementedError

    # Shared by drafters that keep `self.setup`, `self.sampling` and `self.random` for the round.
    def _logprobs(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        """The draft distribution a tree builder expands, per row (B, ..., V): log q exactly as a sampled chain
        draws from it, else the temperature-scaled log-probabilities that rank candidates."""
        chain = self.setup.tree.kind == "chain"

        def rows(sampling: Sampling, x, history, _random):
            if chain and sampling.do_sample:
                return sampling.probs(x, history).log()  # the chain samples from exactly this q
            return sampling.logprobs(x, history)

        return self.sampling.map(rows, fit_vocab(logits, self.setup.vocab_size), seen)

    def _choose(self, logprobs: torch.Tensor) -> torch.Tensor:
        """A chain's next token per row (B,): sampled from q when the row samples, else its argmax."""

        def rows(sampling: Sampling, x, _history, random):
            return sample_from(x.exp(), random) if sampling.do_sample else x.argmax(-1)

        return self.sampling.map(rows, logprobs, None, self.random)


class RoundSlots:
    """What a drafter tracks about the nodes fed within one round (see `tree.Expand`), per row: node j of the round
    sits at slot j, sees the nodes of its own path only, and its repetition history is the row's committed ids plus
    that path. Fixed-size device buffers with one extra all-empty last slot, which parent slot -1 (the root)
    indexes, so feeding w nodes per row costs a few small tensor operations and never synchronises."""

    def __init__(self, spec: TreeSpec, rows: int, device: torch.device, seen: torch.Tensor | None):
        size = max(spec.max_fed, 1)
        self.count = 0
        self.batch = torch.arange(rows, device=device)[:, None]
        self.visible = torch.zeros(rows, size + 1, size, dtype=torch.bool, device=device)  # [b, slot, slot]
        self.seen = seen
        self.paths = (
            None if seen is None else torch.full((rows, size + 1, spec.max_depth), -1, dtype=torch.long, device=device)
        )  # [b, slot, depth-1]

    def add(self, tokens: torch.Tensor, parent_slots: torch.Tensor, depth: int):
        """Register w nodes per row fed next, `tokens` and `parent_slots` (B, w); returns their visibility over the
        round's fed window (B, w, count) and their repetition histories (B, w, V) (None without a penalty)."""
        w, first = tokens.shape[1], self.count
        rows = self.visible[self.batch, parent_slots]  # (B, w, size): the parents' paths
        rows[:, :, first : first + w] |= _identity(w, rows.device)  # ... and the node itself
        self.visible[:, first : first + w] = rows
        self.count += w
        history = None
        if self.paths is not None:
            paths = self.paths[self.batch, parent_slots]  # (B, w, max_depth)
            paths[:, :, depth - 1] = tokens
            self.paths[:, first : first + w] = paths
            history = history_rows(self.seen, paths)
        return rows[:, :, : self.count], history


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


def onto_target_ids(logits: torch.Tensor, target_ids: torch.Tensor, width: int) -> torch.Tensor:
    """Logits over a draft's own ids (..., k) as logits over the target's `width` ids: column j lands on
    `target_ids[j]` (k,), every other target id gets -inf (q = 0 after the softmax). A draft vocabulary of its own
    (an EAGLE-3 head's d2t, a tokenizer bridged through text) reaches the tree builder this way."""
    out = logits.new_full((*logits.shape[:-1], width), float("-inf"))
    out[..., target_ids] = logits
    return out


class NoDraft(Drafter):
    """Proposes nothing: every round verifies the root alone and commits the target's next token, i.e. plain
    target-only decoding through the same batched engine (cache, compiled steps, batching) as speculation."""

    default_tree = "chain"

    def start(self, setup: DraftSetup) -> None:
        self.setup, self.forwards = setup, 0

    def add_row(self, row: int, ctx: DraftContext) -> int:
        return 0

    def propose(self, roots, max_depth, seen, sampling, random) -> DraftTree:
        empty = roots.new_zeros(roots.shape[0], 0)
        return DraftTree(empty, empty, empty, fed=empty, max_depth=0, chain=True)

    def commit(self, tree, accepted, next_tokens, target_hidden) -> None:
        pass

    def move_row(self, src: int, dst: int) -> None:
        pass

    def drop_rows(self, rows: int) -> None:
        pass
