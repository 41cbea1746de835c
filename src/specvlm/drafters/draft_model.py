"""A VLM drafts for the target: a smaller model of its family seeing its own vision features, or the target
itself ("self").

Bookkeeping per round: the drafter first feeds the tokens committed since its last round that it has not seen
(`pending`) plus the root, causally; then `TreeSpec.build` asks it to expand tree nodes, which it feeds with a
tree mask at positions root + depth. After verification the K/V of accepted nodes it already fed are kept in
place (no recompute); accepted nodes it never fed (leaves) become the next round's `pending`.

"self" without pruning drafts in the target's own session (no second prefill, no second cache): each round it
writes the root and its tree after the committed entries and cuts them off again before the target verifies,
which rewrites the same slots; the target's accepted entries are then exactly what the draft would have kept.
"""

from __future__ import annotations

import torch

from ..adapters import VLMAdapter
from ..errors import SpecVLMError
from ..tree import DraftTree
from .base import DraftContext, Drafter, RoundSlots


class DraftModelDrafter(Drafter):
    def __init__(self, adapter: VLMAdapter, reuse_target_prompt: bool = False):
        self.adapter = adapter
        self.reuse_target_prompt = reuse_target_prompt  # "self": the target's own prompt, no second vision pass

    def begin(self, ctx: DraftContext) -> None:
        self.ctx = ctx
        self.forwards, self.pending = 0, []
        self.shared = self.reuse_target_prompt and ctx.visual_keep is None and ctx.target_session is not None
        if self.shared:
            self.session = ctx.target_session
            self.prompt_tokens = len(ctx.target_prompt)
            return
        prompt = ctx.target_prompt if self.reuse_target_prompt else self.adapter.prepare(ctx.inputs)
        if ctx.visual_keep is not None:
            n_target = int(ctx.target_prompt.visual_mask.sum())
            if int(prompt.visual_mask.sum()) != n_target:
                raise SpecVLMError("visual pruning needs the draft to see the same visual tokens as the target: "
                                   f"it has {int(prompt.visual_mask.sum())}, the target {n_target}")
            prompt = prompt.keep_visual(ctx.visual_keep, ctx.contiguous_positions, self.adapter.positions)
        self.session = ctx.new_session(self.adapter)
        self.session.prefill(prompt, ctx.reserve)
        self.forwards += 1
        self.prompt_tokens = len(prompt)

    def propose(self, root: torch.Tensor, max_depth: int, seen: torch.Tensor | None) -> DraftTree:
        session = self.session
        self.base = session.length
        feed = torch.cat([torch.tensor(self.pending, dtype=torch.long, device=root.device), root])
        start = session.next_position
        logits, _ = session.extend(feed, torch.arange(start, start + feed.numel(), device=root.device))
        self.forwards += 1
        root_end, root_position = session.length, session.next_position - 1
        slots = RoundSlots(self.ctx.tree, root.device, seen)

        def expand(tokens: torch.Tensor, parent_slots: torch.Tensor, depth: int) -> torch.Tensor:
            visible, history = slots.add(tokens, parent_slots, depth)
            positions = torch.full((tokens.numel(),), root_position + depth, device=tokens.device)
            out, _ = session.extend(tokens, positions, visible, prefix=root_end)
            self.forwards += 1
            return self._logprobs(out, history)

        tree = self.ctx.tree.build(self._logprobs(logits[-1:], seen)[0], expand, self._choose, max_depth)
        self.root_end = root_end
        if self.shared:   # the target verifies from the same slots
            session.truncate(self.base)
        return tree

    def commit(self, tree: DraftTree, accepted, next_token: torch.Tensor, target_hidden: torch.Tensor) -> None:
        if self.shared:   # the target's own entries for the accepted tokens are already in place
            return
        kept = []
        for slot in accepted.fed:
            if slot < 0:
                break
            kept.append(self.root_end + slot)
        self.session.keep(self.root_end, kept)
        self.pending = accepted.tokens[len(kept):]
