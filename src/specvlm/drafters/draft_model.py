"""A VLM drafts for the target: a smaller model seeing its own vision features (of the target's family, or of
another family reading the request through its own processor: `own_inputs`), or the target itself ("self"). A
draft with a vocabulary of its own proposes and reads through a `vocab.VocabBridge` (`bridge`).

Bookkeeping per round: the drafter first feeds the tokens committed since its last round that it has not seen
(`pending`) plus the root, causally; then `TreeSpec.build` asks it to expand tree nodes, which it feeds with a
tree mask at positions root + depth. After verification the K/V of accepted nodes it already fed are kept in
place (no recompute); accepted nodes it never fed (leaves) become the next round's `pending`.

"self" without pruning drafts in the target's own session (no second prefill, no second cache): each round it
writes the root and its tree after the committed entries and cuts them off again before the target verifies,
which rewrites the same slots; the target's accepted entries are then exactly what the draft would have kept.

Through a bridge, the tree is built over the target's ids (the draft's distribution mapped onto them), its nodes
are fed as their draft twins, `pending` holds target ids, converted when fed (`VocabBridge.to_draft`; that reads the
roots back to the host, once a round), and an accepted node without a twin ends what is kept.
"""

from __future__ import annotations

import torch

from ..adapters import VLMAdapter
from ..engine.tree import DraftTree
from ..errors import SpecVLMError
from .base import DraftContext, Drafter, DraftSetup, RoundSlots
from .vocab import VocabBridge


class DraftModelDrafter(Drafter):
    def __init__(
        self,
        adapter: VLMAdapter,
        reuse_target_prompt: bool = False,
        own_inputs: bool = False,
        bridge: VocabBridge | None = None,
    ):
        self.adapter = adapter
        self.reuse_target_prompt = reuse_target_prompt  # "self": the target's own prompt, no second vision pass
        self.own_inputs = own_inputs  # of another family: reads the request through its own processor
        self.bridge = bridge  # another vocabulary: tokens cross through text

    def start(self, setup: DraftSetup) -> None:
        self.setup = setup
        self.forwards = 0
        self.pending: list[list[int]] = []  # per row: accepted tokens it has not been fed yet (target ids)
        self.shared = self.reuse_target_prompt and not setup.view.prunes and setup.target_session is not None
        if self.shared:
            self.session = setup.target_session
        else:
            self.session = setup.new_session(self.adapter, "draft")
            self.session.drop_rows(0)
            self.session.reserve_rows(setup.max_rows, setup.fixed_rows)

    def add_row(self, row: int, ctx: DraftContext) -> int:
        self._set(self.pending, row, [])
        if self.shared:
            return len(ctx.target_prompt)
        prompt = ctx.target_prompt if self.reuse_target_prompt else self.adapter.prepare(ctx.inputs)
        if ctx.visual_keep is not None:
            n_target = int(ctx.target_prompt.visual_mask.sum())
            if int(prompt.visual_mask.sum()) != n_target:
                raise SpecVLMError(
                    "visual pruning needs the draft to see the same visual tokens as the target: "
                    f"it has {int(prompt.visual_mask.sum())}, the target {n_target}"
                )
            prompt = prompt.keep_visual(ctx.visual_keep, self.setup.view.contiguous_positions, self.adapter.positions)
        self.session.prefill(row, prompt, ctx.reserve)
        self.forwards += 1
        return len(prompt)

    @staticmethod
    def _set(state: list, row: int, value) -> None:
        if row == len(state):
            state.append(value)
        else:
            state[row] = value

    def propose(self, roots, max_depth, seen, sampling, random) -> DraftTree:
        session, rows, device = self.session, roots.shape[0], roots.device
        self.sampling, self.random = sampling, random
        self.base = session.lengths[:rows]
        feed, counts, last = self._feed(roots)  # (B, width) right-padded, per row real count, (B, 1) root index
        width = feed.shape[1]
        starts = torch.tensor(session.next_positions[:rows], dtype=torch.long, device="cpu").to(device)
        logits, _ = session.extend(feed, starts[:, None] + torch.arange(width, device=device), counts=counts)
        self.forwards += 1
        root_logits = logits.gather(1, last[:, :, None].expand(-1, 1, logits.shape[-1]))[:, 0]  # (B, Vd)
        root_end = session.lengths[:rows]
        root_position = starts + last[:, 0]  # (B,)
        slots = RoundSlots(self.setup.tree, rows, device, seen)

        def expand(tokens: torch.Tensor, parent_slots: torch.Tensor, depth: int) -> torch.Tensor:
            visible, history = slots.add(tokens, parent_slots, depth)
            positions = (root_position + depth)[:, None].expand(-1, tokens.shape[1])
            out, _ = session.extend(self._draft_ids(tokens), positions, visible=visible, prefix=root_end)
            self.forwards += 1
            return self._logprobs(self._target_space(out), history)

        tree = self.setup.tree.build(
            self._logprobs(self._target_space(root_logits), seen), expand, self._choose, max_depth
        )
        self.root_end = root_end
        if self.shared:  # the target verifies from the same slots
            session.truncate(self.base)
        return tree

    def _feed(self, roots: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Each row's pending tokens then its root, as the draft's ids, right-padded to the longest: (B, width);
        the real count per row; the root's index (B, 1). Without a bridge the roots stay on the device."""
        rows, device = roots.shape[0], roots.device
        if self.bridge is None:
            pending = self.pending[:rows]
            counts = [len(p) + 1 for p in pending]
        else:  # the root's text decides its draft tokens: read back, once a round
            pending = [self._bridged(p + [root]) for p, root in zip(self.pending[:rows], roots.tolist())]
            counts = [len(p) for p in pending]
        width = max(counts)
        host = torch.tensor([p + [0] * (width - len(p)) for p in pending], dtype=torch.long, device="cpu")
        feed = host.to(device)
        last = torch.tensor([c - 1 for c in counts], dtype=torch.long, device="cpu").to(device)[:, None]  # (B, 1)
        if self.bridge is None:
            feed.scatter_(1, last, roots[:, None])
        return feed, counts, last

    def _bridged(self, target_ids: list[int]) -> list[int]:
        assert self.bridge is not None
        return self.bridge.to_draft(target_ids) or [self.bridge.filler]  # a text of no draft token: the filler

    def _draft_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tree nodes (target ids) as the draft reads them."""
        if self.bridge is None:
            return tokens
        return self.bridge.draft_ids(tokens, self.setup.vocab_size, self.adapter.vocab_size)

    def _target_space(self, logits: torch.Tensor) -> torch.Tensor:
        """The draft's logits over the target's ids (`fit_vocab` cuts or pads a shared vocabulary)."""
        if self.bridge is None:
            return logits
        return self.bridge.target_logits(logits, self.setup.vocab_size)

    def commit(self, tree: DraftTree, accepted, next_tokens, target_hidden) -> None:
        if self.shared:  # the target's own entries for the accepted tokens are already in place
            return
        kept = []
        for row, outcome in enumerate(accepted):
            fed = []
            for slot, token in zip(outcome.fed, outcome.tokens):
                if slot < 0 or (self.bridge is not None and self.bridge.draft_of(token) is None):
                    break  # never fed, or fed as the filler: the rest is fed again from its text
                fed.append(self.root_end[row] + slot)
            kept.append(fed)
            self.pending[row] = outcome.tokens[len(fed) :]
        self.session.keep(self.root_end, kept)

    def move_row(self, src: int, dst: int) -> None:
        self.pending[dst] = self.pending[src]
        if not self.shared:  # a shared session is the target's, which the loop moves itself
            self.session.move_row(src, dst)

    def drop_rows(self, rows: int) -> None:
        del self.pending[rows:]
        if not self.shared:
            self.session.drop_rows(rows)
