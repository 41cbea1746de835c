"""DecodeBatch: sequences decoding together, one round for all of them per step.

    add(request)  prefill the row ALONE (bit-identical to `generate` for it), pick its first token, prefill the
                  drafter's row; the row joins the running batch at the next round
    step()        every row: draft (one batched drafter forward per tree level), verify all rows' trees in ONE
                  target forward (B, nodes + 1) with a per-row mask and positions, accept per row on the device,
                  one host synchronisation for the whole batch, keep each row's accepted path in place
    remove(row)   a finished, cancelled or timed-out row leaves; the last row moves into its place

Each row has its own committed length and position offset (Qwen's M-RoPE delta, a pruned draft's shorter prompt),
so rows never realign: rejected slots simply lie past a row's length until overwritten. A row's tokens are those
of `target.generate` on that row alone (greedy), or drawn from its distribution (sampling), whatever else is in the
batch: every row has its own sampling settings, stop tokens, token budget and random generator.

`SpeculativeGenerator.generate` runs a batch for its call (all rows join, then steps until all have finished);
`specvlm serve` keeps one running and adds requests as they come (continuous batching).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..adapters.capture import AttentionCapture
from ..drafters.base import DraftContext, DraftSetup
from ..drafters.pruning import Layout
from .distributed import from_leader
from .request import Request
from .sampling import RowRandom, RowSampling, TokenHistory, device_generator, history_rows, token_logprobs
from .session import bucket
from .stats import SpecStats
from .verify import accept_chain_sampled, accept_greedy, accept_tree_sampled

RESERVE_AHEAD = 1024  # new tokens a row's slots are reserved for at its prefill; more are grown when needed


@dataclass(eq=False)
class Row:
    """One sequence in a batch: its request, what it generated, and its statistics."""

    request: Request
    tag: object = None  # the caller's handle (the server's job)
    tokens: list[int] = field(default_factory=list)
    stats: SpecStats = field(default_factory=SpecStats)
    root: int = 0  # the newest committed token, which no cache holds yet
    generator: torch.Generator | None = None  # on the target's device
    done: bool = False
    started: float = 0.0

    @property
    def room(self) -> int:
        return self.request.max_new - len(self.tokens)


class DecodeBatch:
    """Rows decoding together under one `SpeculativeGenerator` (its target, drafter, tree and engine). At most
    `max_rows` at once. Not thread-safe: one thread owns a batch and its generator, and a generator runs one batch at
    a time (the batch decodes in the generator's sessions; a new batch, or a `generate` call, starts them afresh)."""

    def __init__(self, gen, max_rows: int, fixed: bool = False):
        """`fixed`: the rows all join before the first round and only leave (one `generate` call's batch)."""
        self.gen, self.max_rows = gen, max_rows
        self.tp = gen.target.tp_group  # tensor parallel: rank 0 decides (engine/distributed.py)
        self.target = gen.session(gen.target)
        self.target.drop_rows(0)
        self.target.reserve_rows(max_rows, fixed)
        self.rows: list[Row] = []
        self.vocab = gen.target.vocab_size
        self.device = gen.target.device
        self.history = TokenHistory(max_rows, self.vocab, self.device)  # what the repetition penalty applies to
        self._generators: dict[int, torch.Generator | None] = {}
        self.forwards = 0  # target forwards: prefills and rounds
        self.setup = DraftSetup(
            tree=gen.tree,
            vocab_size=self.vocab,
            max_rows=max_rows,
            fixed_rows=fixed,
            new_session=gen.session,
            target_session=self.target,
            view=gen.draft_view,
        )
        gen.drafter.start(self.setup)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.max_rows

    # ---- joining ----------------------------------------------------------------------------------------------
    def add(self, request: Request, tag=None) -> tuple[Row, list[int]]:
        """Prefill `request` on its own and return its row with its first token. A row that is finished by its
        first token (EOS, max_new_tokens 1) is returned done and never joins the running rounds."""
        if self.full:
            raise RuntimeError(f"the batch holds {self.max_rows} rows already")
        gen, index = self.gen, len(self.rows)
        row = Row(request, tag, started=time.perf_counter())
        stats = row.stats
        stats.mode = gen.mode
        compiled_before = gen.compile_seconds
        prompt = gen.target.prepare(request.inputs)
        # entries a row writes beyond its prompt: the answer, then one round's padded feeds past it; a long answer's
        # slots are reserved only in part and grown as it gets there (a request's max_new_tokens alone must not
        # allocate every row's cache up to it)
        reserve = min(request.max_new, RESERVE_AHEAD) + 2 * bucket(gen.tree.max_nodes + 2) + gen.tree.max_fed
        logits, hidden, keep, scores = self._prefill(index, prompt, reserve, stats)
        self.forwards += 1
        row.generator = self._device_generator(request.generator)
        sampling = request.sampling
        seen = None
        if sampling.uses_history:  # the repetition penalty: ids in the prompt and everything generated so far
            seen = self.history.start_row(index, prompt.input_ids[0])
        random = None if row.generator is None else RowRandom([row.generator])
        first = from_leader(self.tp, int(sampling.pick(logits, seen, random)))  # logits (1, V)
        if request.keeps_rows:
            _keep_rows(request, logits, sampling.processed(logits, seen), [0])
        if request.logprobs is not None:
            request.token_logprobs += token_logprobs(logits, [first], request.logprobs)
        stats.target_prompt_tokens, stats.new_tokens, stats.target_forwards = len(prompt), 1, 1
        stats.draft_forwards = gen.drafter.forwards
        row.tokens, row.root = [first], first
        row.done = first in request.eos or request.max_new <= 1
        if not row.done:
            ctx = DraftContext(
                inputs=request.draft_inputs,
                target_prompt=prompt,
                target_hidden=hidden,
                sampling=sampling,
                visual_keep=keep,
                visual_scores=scores,
                reserve=reserve,
            )
            stats.draft_prompt_tokens = gen.drafter.add_row(index, ctx)
            if seen is not None:
                seen[first] = True
            self.rows.append(row)
        else:
            self.target.drop_rows(index)
        stats.draft_forwards = gen.drafter.forwards - stats.draft_forwards
        stats.prefill_s = time.perf_counter() - row.started
        stats.compile_s = gen.compile_seconds - compiled_before
        return row, [first]

    def _prefill(self, row: int, prompt, reserve: int, stats: SpecStats):
        """Row `row`'s target prefill; the verifier's attention scores when pruning or the drafter needs them
        (captured in this one prefill, never a second); with pruning, the draft's kept visual tokens."""
        gen, view = self.gen, self.gen.draft_view
        visual = prompt.visual_mask.nonzero().flatten()
        scores = None
        if visual.numel() and (view.needs_scores or gen.drafter.needs_visual_scores):
            with AttentionCapture(gen.target, int(visual.max()) + 1, visual) as capture:
                logits, hidden = self.target.prefill(row, prompt, reserve)
            scores, stats.scoring_s = capture.scores, capture.scoring_s
        else:
            logits, hidden = self.target.prefill(row, prompt, reserve)
        stats.visual_tokens = stats.kept_visual_tokens = visual.numel()  # the draft sees them all unless pruned
        if not view.prunes or visual.numel() == 0:
            return logits, hidden, None, scores
        started = time.perf_counter()
        layout = Layout(tuple((span.grid, span.tail, span.length) for span in prompt.spans))
        keep = view.keep(visual.numel(), scores, layout, prompt.embeds[0, visual.to(prompt.embeds.device)])
        stats.selection_s = time.perf_counter() - started
        stats.pruning, stats.kept_visual_tokens = view.method, keep.numel()
        return logits, hidden, keep, scores

    def _device_generator(self, generator):
        """The request's generator on the target's device, one per user generator (a library call's rows share
        theirs, so they draw together)."""
        key = id(generator)
        if key not in self._generators:
            self._generators[key] = device_generator(generator, self.device)
        return self._generators[key]

    # ---- a round ----------------------------------------------------------------------------------------------
    def step(self) -> list[tuple[Row, list[int]]]:
        """One round for every row: each row's new tokens (cut at EOS / its budget). Rows that finished are
        removed from the batch (their `done` is set)."""
        rows, gen, device = self.rows, self.gen, self.device
        count = len(rows)
        if not count:
            return []
        started = time.perf_counter()
        compiled_before, drafted_before = gen.compile_seconds, gen.drafter.forwards
        sampling = RowSampling([row.request.sampling for row in rows])
        generators = [row.generator for row in rows]
        random = None if all(g is None for g in generators) else RowRandom(generators)
        seen = self.history.rows(count) if sampling.uses_history else None
        host = torch.tensor(
            [[row.root for row in rows], self.target.next_positions[:count]], dtype=torch.long, device="cpu"
        ).to(device)
        roots, next_positions = host[0], host[1]  # (B,) each
        tree = gen.drafter.propose(roots, max(row.room for row in rows), seen, sampling, random)  # n nodes a row
        tree = from_leader(self.tp, tree)  # tensor parallel: every rank verifies rank 0's proposals
        prefix = self.target.lengths[:count]
        logits, hidden = self._extend(roots, next_positions, tree, prefix)
        processed, verdict = _accept(logits, tree, sampling, seen, random)
        accepted = from_leader(self.tp, verdict.to_host(tree))  # the round's one sync; rank 0's verdict
        self.forwards += 1
        self._keep_and_commit(tree, accepted, hidden, prefix)
        out = self._finish_round(tree, accepted, logits, processed, seen is not None)
        drafted = gen.drafter.forwards - drafted_before
        elapsed, compiled = time.perf_counter() - started, gen.compile_seconds - compiled_before
        for row, _ in out:
            row.stats.target_forwards += 1
            row.stats.draft_forwards += drafted
            row.stats.decode_s += elapsed
            row.stats.compile_s += compiled
        self._remove_finished()
        return out

    def _extend(self, roots, next_positions, tree, prefix: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The verification forward: every row's [root, *tree] after its committed prefix, positions root + depth,
        seeing its ancestors only. Returns logits (B, n+1, V) float32 and hidden (B, n+1, H): position 0 follows
        the root, i+1 node i."""
        device = self.device
        depths = torch.cat([torch.zeros(len(prefix), 1, dtype=torch.long, device=device), tree.depths.to(device)], 1)
        return self.target.extend(
            torch.cat([roots[:, None], tree.tokens.to(device)], 1),
            next_positions[:, None] + depths,
            visible=tree.verify_mask,
            prefix=prefix,
        )

    def _keep_and_commit(self, tree, accepted: list, hidden: torch.Tensor, prefix: list[int]) -> None:
        """The target's cache keeps [root, *accepted path] per row (rejected slots dropped); the next roots and the
        accepted positions' hidden states go to the drafter."""
        self.target.keep([p + 1 for p in prefix], [[p + 1 + node for node in a.path] for p, a in zip(prefix, accepted)])
        for row, a in zip(self.rows, accepted):
            row.root = a.next_token
        next_roots = torch.tensor([a.next_token for a in accepted], dtype=torch.long, device="cpu").to(self.device)
        kept = [hidden[b, [0] + [node + 1 for node in a.path]] for b, a in enumerate(accepted)]
        self.gen.drafter.commit(tree, accepted, next_roots, kept)

    def _finish_round(self, tree, accepted, logits, processed, penalised: bool) -> list[tuple[Row, list[int]]]:
        out, seen_rows, seen_tokens = [], [], []
        for b, (row, a) in enumerate(zip(self.rows, accepted)):
            request = row.request
            row.stats.record_round(a.drafted if a.drafted is not None else len(tree), len(a.path))
            new = a.tokens + [a.next_token]
            if penalised:
                seen_rows += [b] * len(new)
                seen_tokens += new
            new = _cut(new, request.eos, row.room)
            producers = ([0] + [node + 1 for node in a.path])[: len(new)]  # the positions whose logits chose `new`
            if request.keeps_rows:
                _keep_rows(request, logits[b], processed[b], producers)
            if request.logprobs is not None:
                request.token_logprobs += token_logprobs(logits[b, producers], new, request.logprobs)
            row.tokens += new
            row.stats.new_tokens += len(new)
            row.done = new[-1] in request.eos or row.room <= 0
            out.append((row, new))
        self.history.add(seen_rows, seen_tokens)
        return out

    # ---- leaving ----------------------------------------------------------------------------------------------
    def remove(self, row: Row) -> None:
        """`row` leaves the batch (finished, cancelled, timed out): the last row moves into its place."""
        index = self.rows.index(row)
        last = len(self.rows) - 1
        if index != last:
            self.target.move_row(last, index)
            self.gen.drafter.move_row(last, index)
            self.history.move_row(last, index)
            self.rows[index] = self.rows[last]
        self.rows.pop()
        self.target.drop_rows(last)
        self.gen.drafter.drop_rows(last)

    def _remove_finished(self) -> None:
        for row in [row for row in self.rows if row.done]:
            self.remove(row)


def _accept(logits: torch.Tensor, tree, sampling: RowSampling, seen, random):
    """(processed scores (B, n+1, V), Verdict) for `logits` (B, n+1, V): per row, position 0 follows the root,
    i+1 node i; each position's repetition history is its path. Greedy rows take the greedy rule, sampling rows
    the sampled one (both computed when a batch mixes them)."""
    rows = logits.shape[0]
    rows_seen = None
    if seen is not None:
        paths = torch.where(tree.ancestors, tree.tokens[:, None, :], -1).to(logits.device)  # (B, n, n)
        rows_seen = history_rows(seen, torch.cat([paths.new_full((rows, 1, paths.shape[2]), -1), paths], 1))
    processed = sampling.processed(logits, rows_seen)
    if not sampling.any_sample:
        return processed, accept_greedy(processed.argmax(-1), tree)
    p = processed.softmax(-1)
    rule = accept_chain_sampled if tree.chain and tree.probs is not None else accept_tree_sampled
    sampled = rule(p, tree, random)
    if all(s.do_sample for s in sampling.rows):
        return processed, sampled
    greedy = accept_greedy(processed.argmax(-1), tree)
    do_sample = sampling.do_sample(logits.device)
    for name in ("count", "next_token", "path"):
        mine, theirs = getattr(sampled, name), getattr(greedy, name)
        flag = do_sample.reshape(-1, *[1] * (mine.dim() - 1))
        setattr(sampled, name, torch.where(flag, mine, theirs))
    return processed, sampled


def _keep_rows(request: Request, logits: torch.Tensor, processed: torch.Tensor, rows: list[int]) -> None:
    """output_scores / output_logits: the rows that produced the new tokens, one (1, V) tensor per token."""
    for row in rows:
        request.scores.append(processed[row : row + 1])
        request.logits.append(logits[row : row + 1])


def _cut(new: list[int], eos: set[int], room: int) -> list[int]:
    for i, token in enumerate(new):
        if token in eos:
            new = new[: i + 1]
            break
    return new[:room]
