"""The contract between the decode loop and whoever proposes tokens.

Each round the loop calls `propose(root, max_depth, seen)` for a `DraftTree` below the root token, verifies it
with one target forward, then calls `commit(tree, path, next_token, target_hidden)` with the accepted nodes, the
target's next token (the new root) and the target's final hidden states for [root, *accepted] (what EAGLE-style
heads feed on). Between rounds a drafter's cache holds exactly the committed tokens it has processed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..adapters import Prompt
from ..sampling import Sampling, sample_from
from ..tree import DraftTree, TreeSpec


@dataclass
class DraftContext:
    inputs: dict                  # processor outputs for the drafter (its own visual inputs)
    target_prompt: Prompt         # what the target saw, positions included
    target_hidden: torch.Tensor   # (L, H) target's final hidden states over the prompt
    sampling: Sampling
    tree: TreeSpec
    vocab_size: int               # width of the target's logits; draft distributions are fitted to it
    generator: torch.Generator | None = None
    visual_keep: torch.Tensor | None = None   # pruning: indices of the visual tokens the draft keeps
    contiguous_positions: bool = False        # pruning: renumber the draft's shorter prompt 0..L'-1
    visual_scores: torch.Tensor | None = None  # the target's text->visual attention, captured in its prefill


class Drafter:
    forwards: int = 0
    prompt_tokens: int = 0
    default_tree: str = "static"   # the tree shape used when the caller names none (EAGLE heads: "dynamic")

    needs_visual_scores: bool = False   # True: begin() reads ctx.visual_scores (the target's attention capture)

    def begin(self, ctx: DraftContext) -> None:
        raise NotImplementedError

    def propose(self, root: int, max_depth: int, seen: torch.Tensor | None) -> DraftTree:
        raise NotImplementedError

    def commit(self, tree: DraftTree, path: list[int], next_token: int, target_hidden: torch.Tensor) -> None:
        raise NotImplementedError

    # Shared by drafters that keep `self.ctx` from begin(): the draft distribution a tree builder expands.
    def _logprobs(self, logits: torch.Tensor, seen: torch.Tensor | None) -> torch.Tensor:
        logits = fit_vocab(logits, self.ctx.vocab_size)
        sampling = self.ctx.sampling
        if self.ctx.tree.kind == "chain" and sampling.do_sample:
            return sampling.probs(logits, seen).log()   # the chain samples from exactly this q
        return sampling.logprobs(logits, seen)

    def _choose(self, logprobs: torch.Tensor) -> int:
        if self.ctx.sampling.do_sample:
            return sample_from(logprobs.exp(), self.ctx.generator)
        return int(logprobs.argmax())


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
