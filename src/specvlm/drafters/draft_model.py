"""A VLM drafts for the target: a smaller model of its family seeing its own vision features, or the target
itself ("self") with a separate cache.

Bookkeeping per round: the drafter first feeds the tokens committed since its last round that it has not seen
(`pending`) plus the root, causally; then `TreeSpec.build` asks it to expand tree nodes, which it feeds with a
tree mask at positions root + depth. After verification the K/V of accepted nodes it already fed are kept in
place (no recompute); accepted nodes it never fed (leaves) become the next round's `pending`.
"""

from __future__ import annotations

import torch

from ..adapters import VLMAdapter
from ..errors import SpecVLMError
from ..session import ModelSession
from ..tree import DraftTree, node_depths
from .base import DraftContext, Drafter


def seen_rows(seen: torch.Tensor | None, paths: list[list[int]]) -> torch.Tensor | None:
    """Per row: the ids the repetition penalty applies to, i.e. everything committed plus the row's own path."""
    if seen is None:
        return None
    rows = seen.expand(len(paths), -1).clone()
    for r, tokens in enumerate(paths):
        if tokens:
            rows[r, tokens] = True
    return rows


class DraftModelDrafter(Drafter):
    def __init__(self, adapter: VLMAdapter, reuse_target_prompt: bool = False):
        self.adapter = adapter
        self.reuse_target_prompt = reuse_target_prompt  # "self": the target's own prompt, no second vision pass

    @property
    def forwards(self) -> int:
        return self.session.forwards

    def begin(self, ctx: DraftContext) -> None:
        self.ctx = ctx
        prompt = ctx.target_prompt if self.reuse_target_prompt else self.adapter.prepare(ctx.inputs)
        if ctx.visual_keep is not None:
            n_target = int(ctx.target_prompt.visual_mask.sum())
            if int(prompt.visual_mask.sum()) != n_target:
                raise SpecVLMError("visual pruning needs the draft to see the same visual tokens as the target: "
                                   f"it has {int(prompt.visual_mask.sum())}, the target {n_target}")
            prompt = prompt.keep_visual(ctx.visual_keep, ctx.contiguous_positions, self.adapter.positions)
        self.session = ModelSession(self.adapter)
        self.session.prefill(prompt)
        self.prompt_tokens = len(prompt)
        self.pending: list[int] = []

    def propose(self, root: int, max_depth: int, seen: torch.Tensor | None) -> DraftTree:
        session = self.session
        feed = self.pending + [root]
        start = session.next_position
        logits, _ = session.extend(torch.tensor(feed), torch.arange(start, start + len(feed)))
        root_end, root_position = session.length, session.next_position - 1
        fed: dict[int, int] = {}   # node (candidate numbering) -> cache index

        def expand(tree: DraftTree, nodes) -> torch.Tensor:
            nodes = list(nodes)
            order = list(fed) + nodes
            paths = [tree.path(n) for n in nodes]
            visible = torch.tensor([[g in set(p) for g in order] for p in paths], dtype=torch.bool)
            depths = node_depths(tree.parents)[nodes]
            out, _ = session.extend(tree.tokens[nodes], root_position + depths, visible, prefix=root_end)
            for i, node in enumerate(nodes):
                fed[node] = session.length - len(nodes) + i
            return self._logprobs(out, seen_rows(seen, [tree.tokens[p].tolist() for p in paths]))

        first = self._logprobs(logits[-1:], seen)[0]
        tree = self.ctx.tree.build(first, expand, self._choose, max_depth)
        origin = tree.origin or range(len(tree))
        self._fed = {new: fed[old] for new, old in enumerate(origin) if old in fed}
        self._root_end = root_end
        return tree

    def commit(self, tree: DraftTree, path: list[int], next_token: int, target_hidden: torch.Tensor) -> None:
        kept = []
        for node in path:
            if node not in self._fed:
                break
            kept.append(self._fed[node])
        self.session.keep(self._root_end, kept)
        self.pending = tree.tokens[path[len(kept):]].tolist()
