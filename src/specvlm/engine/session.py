"""One model's decoding state: its KV cache and where the next committed token sits. The two engines differ here
and only here.

Committed token i of a session sits at cache index i and position i + offset, where the offset is fixed at
prefill (Qwen's rope delta; for a pruned draft prompt, the tokens it dropped). Tree nodes share positions by
depth: a node at depth d below a root at position P sits at P + d.

- `ModelSession` (engine "eager"): HF's `DynamicCache`, every forward through the model's eager path; keeping a
  tree path copies its rows down and cuts the cache.
- `StaticSession` (engine "fast"): a preallocated `SlotCache`; every step has a fixed shape (rows padded to a
  bucket, an explicit (rows, capacity) mask) so that it can be compiled once per bucket (`torch.compile`, CUDA
  graphs on CUDA) and replayed; rejected rows are never read and simply overwritten next round.

Both take token ids and positions as device tensors and never read a tensor back to the host.
"""

from __future__ import annotations

import itertools
import time
import types
from contextlib import contextmanager
from typing import Any

import torch

from ..adapters import Prompt, VLMAdapter, keep_cache_entries
from ..adapters.attention import additive_mask, gqa_attention, uses_gqa_attention
from ..adapters.static_cache import SlotCache

# Row counts a fast step is padded to: one compiled graph per bucket, at most 1/3 of a step wasted on padding.
BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket(n: int) -> int:
    return next((b for b in BUCKETS if b >= n), -(-n // 128) * 128)


_OBSERVERS: list = []


@contextmanager
def observe_forwards(callback):
    """Within the block, `callback(session, kind, seconds)` hears of every forward a session runs ("prefill" or
    "step"), timed between two device synchronisations: for benchmarks' forward clocks only, since the extra
    synchronisations are exactly what the decode loop otherwise avoids."""
    _OBSERVERS.append(callback)
    try:
        yield
    finally:
        _OBSERVERS.remove(callback)


@contextmanager
def _observed(session, kind: str):
    if not _OBSERVERS:
        yield
        return
    _synchronize(session.adapter.device)
    started = time.perf_counter()
    yield
    _synchronize(session.adapter.device)
    for callback in list(_OBSERVERS):
        callback(session, kind, time.perf_counter() - started)


class ModelSession:
    """Engine "eager": one `DynamicCache` per row and the model's own forward, row after row (the reference path;
    the fast engine batches rows into one forward)."""

    def __init__(self, adapter: VLMAdapter, features: tuple[int, ...] | None = None):
        self.adapter = adapter
        self.features = features  # hidden states the forwards return: None the final ones, else `adapter.forward`'s
        self.caches: list = []
        self.lengths: list[int] = []  # entries in each row's cache
        self.offsets: list[int] = []  # position of row b's cache entry i is i + offsets[b]
        self.forwards = 0

    @property
    def _features(self) -> dict:
        """`features=` for the adapter's forward, only when asked (a head's stepper takes no such keyword)."""
        return {} if self.features is None else {"features": self.features}

    @property
    def next_positions(self) -> list[int]:
        return [length + offset for length, offset in zip(self.lengths, self.offsets)]

    def reserve_rows(self, rows: int, fixed: bool = False) -> None:
        """The most rows this session will hold at once (a static cache allocates them; nothing to do here).
        `fixed`: rows only leave this batch, none joins (one `generate` call's batch)."""

    def prefill(self, row: int, prompt: Prompt, reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Row `row` (an existing row, replaced, or the next new one) starts with `prompt`, run alone: logits (1, V)
        after it and its hidden states (L, H). `reserve`: entries the row will append after the prompt at most (a
        static cache allocates them)."""
        cache = self.adapter.new_cache()
        with _observed(self, "prefill"):
            logits, hidden = self.adapter.forward(
                prompt.embeds, prompt.positions, cache, last_only=True, **self._features
            )
        self._set_row(row, cache, prompt)
        return logits[0], hidden[0]

    def _set_row(self, row: int, cache, prompt: Prompt) -> None:
        if row > len(self.lengths):
            raise IndexError(f"row {row} of a session holding {len(self.lengths)} rows")
        if row == len(self.lengths):
            self.lengths.append(0)
            self.offsets.append(0)
            self.caches.append(None)
        self.lengths[row], self.offsets[row] = len(prompt), prompt.next_position - len(prompt)
        self.caches[row] = cache
        self.forwards += 1

    def extend(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        counts: list[int] | None = None,
        visible: torch.Tensor | None = None,
        prefix: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append n positions to each of rows 0..B-1: `ids` (B, n) (or input vectors (B, n, H) for a draft head) at
        1-D `positions` (B, n). `counts[b]`: how many of row b's n are real (the rest is padding, never committed);
        default all. Without `visible` the new tokens attend causally; with it (B, n, w), row b's token r sees the
        first `prefix[b]` entries plus entries prefix[b] + j where visible[b, r, j] (w = the row's entries after its
        prefix, the new ones included). Returns float32 logits (B, n, V) and final hidden states (B, n, H); rows'
        padding positions hold zeros."""
        rows, n = ids.shape[0], ids.shape[1]
        logits: torch.Tensor | None = None
        hidden: torch.Tensor | None = None
        for b in range(rows):
            count = n if counts is None else counts[b]
            mask = None
            if visible is not None and not _is_causal(visible[b, :count]):
                assert prefix is not None  # a tree window is always given with the committed prefix it follows
                mask = additive_mask(visible[b, :count], prefix[b], self.adapter.dtype, self.adapter.device)
            with _observed(self, "step"):
                out, h = self.adapter.forward(
                    self.adapter.embed(ids[b : b + 1, :count]),
                    self.adapter.positions(positions[b : b + 1, :count]),
                    self.caches[b],
                    mask,
                    **self._features,
                )
            if logits is None or hidden is None:
                logits = out.new_zeros(rows, n, out.shape[-1])
                hidden = h.new_zeros(rows, n, h.shape[-1])
            logits[b, :count], hidden[b, :count] = out[0], h[0]
            self.lengths[b] += count
        self.forwards += 1
        assert logits is not None and hidden is not None  # rows >= 1
        return logits, hidden

    def keep(self, prefix: list[int], extra: list[list[int]]) -> None:
        """Row b keeps cache entries [0, prefix[b]) and then `extra[b]` (host ints >= prefix[b]: called after the
        round's sync), for rows 0..len(prefix)-1."""
        for b, (p, kept) in enumerate(zip(prefix, extra)):
            keep_cache_entries(self.caches[b], p, kept)
            self.lengths[b] = p + len(kept)

    def truncate(self, lengths: list[int]) -> None:
        """Forget every entry of row b from `lengths[b]` on (a drafter sharing this session drops what it drafted)."""
        self.keep(lengths, [[] for _ in lengths])

    def move_row(self, src: int, dst: int) -> None:
        """Row `src` becomes row `dst` (a batch fills the gap a finished row left with its last row)."""
        for state in (self.caches, self.lengths, self.offsets):
            state[dst] = state[src]

    def drop_rows(self, rows: int) -> None:
        """Forget rows `rows`, `rows` + 1, ... (after the batch moved what it keeps below them)."""
        for state in (self.caches, self.lengths, self.offsets):
            del state[rows:]


class StaticSession(ModelSession):
    """Engine "fast": a `SlotCache` with a row per sequence and fixed-shape steps over all rows at once, compiled
    when `compile` is set (`mode` "reduce-overhead" gives CUDA graphs on CUDA). `compile_s` accumulates the first
    call of each new shape."""

    def __init__(self, adapter: VLMAdapter, compile: bool = False, features: tuple[int, ...] | None = None):
        self.adapter = adapter
        self.features = features
        self.cache = SlotCache(adapter.num_layers)
        self.lengths, self.offsets = [], []
        self.caches: list = []  # unused: one SlotCache holds every row
        self.forwards = 0
        self.max_rows = 1
        self.row_floor = 1  # compiled steps pad the batch to at least this many rows (reserve_rows)
        self.compile_s = 0.0
        self.gqa = uses_gqa_attention(adapter.device, adapter.attention_config)
        self.cudagraphs = compile and adapter.device.type == "cuda"
        self.step = _compiled(self._step, adapter.device.type) if compile else self._step
        self.compiled = compile
        self._seen_shapes: set = set()

    def reserve_rows(self, rows: int, fixed: bool = False) -> None:
        # compiled steps pad the batch to a bucket, whose extra rows must exist (they write only their own slots)
        self.max_rows = max(self.max_rows, bucket(rows) if self.compiled else rows)
        # A fixed batch (one generate call: rows only leave) keeps the bucket it started with: as its rows finish at
        # different rounds, each smaller bucket would be a new graph to compile (a batch of 8 compiled 19 graphs
        # instead of 6 on CPU; ~15 s each with CUDA graphs on an H200), for a step that, memory-bound on a GPU, costs
        # about the same with the finished rows' padding in it. A batch that rows join (the server's) pads to the
        # bucket of the rows it holds: each bucket compiles once in the server's life.
        self.row_floor = bucket(rows) if fixed and self.compiled else 1

    def prefill(self, row: int, prompt: Prompt, reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own prefill into a DynamicCache (bit-identical to `generate`'s), copied into row `row`."""
        staging = self.adapter.new_cache()
        with _observed(self, "prefill"):
            logits, hidden = self.adapter.forward(
                prompt.embeds, prompt.positions, staging, last_only=True, **self._features
            )
        needed = len(prompt) + reserve
        capacity = self.cache.capacity if self.cache.capacity >= needed else -(-needed // 128) * 128
        if self.cache.load(staging, row, len(prompt), max(self.max_rows, row + 1), capacity):
            self._seen_shapes.clear()
        self._set_row(row, None, prompt)
        return logits[0], hidden[0]

    def extend(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        counts: list[int] | None = None,
        visible: torch.Tensor | None = None,
        prefix: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, n = ids.shape[0], ids.shape[1]
        width = bucket(n)
        padded_rows = max(bucket(rows), self.row_floor) if self.compiled else rows
        starts = self.lengths[:rows]
        if max(starts) + width > self.cache.capacity:  # a row outgrew what its prefill reserved
            self._grow(max(starts) + width)
        assert self.cache.start is not None  # set by the first prefill
        device = self.cache.start.device
        extra = padded_rows - rows
        host = torch.tensor([starts + [0] * extra, (prefix or starts) + [0] * extra], dtype=torch.long, device="cpu")
        start, seen_until = host.to(device)  # (Bp,) each
        # allowed (Bp, width, capacity): every row sees its committed prefix, then its window as `visible` says
        # (causal when None: position r sees slots up to start + r); padding rows of the batch see slot 0 only
        # (their outputs and their slots are never read)
        column = torch.arange(self.cache.capacity, device=device)
        if visible is None:
            allowed = column[None, None, :] <= (start[:, None] + torch.arange(width, device=device))[:, :, None]
        else:
            allowed = (column[None, None, :] < seen_until[:, None, None]).expand(padded_rows, width, -1).clone()
            w = visible.shape[-1]
            window = seen_until[:rows, None] + torch.arange(w, device=device)  # (B, w) slots
            allowed[:rows, :n].scatter_(2, window[:, None, :].expand(rows, n, w), visible.to(device))
        if extra:
            allowed[rows:] = column == 0
        ids = _pad(ids.to(device), padded_rows, width)
        positions = _pad(positions.to(device), padded_rows, width, edge=True)
        self.cache.start[:padded_rows].copy_(start)
        with _observed(self, "step"):
            logits, hidden = self._run(ids, self.adapter.positions(positions), allowed)
        self.forwards += 1
        for b in range(rows):
            self.lengths[b] += n if counts is None else counts[b]
        return logits[:rows, :n], hidden[:rows, :n]

    def _grow(self, needed: int) -> None:
        """More slots for every row: at least `needed`, and half again what there was, so that a long answer
        reallocates (and recompiles) a few times, not every 128 tokens."""
        grown = -(-max(needed, self.cache.capacity * 3 // 2) // 128) * 128
        self.cache.grow(grown)
        self._seen_shapes.clear()

    def keep(self, prefix: list[int], extra: list[list[int]]) -> None:
        self.cache.keep(prefix, extra)
        for b, (p, kept) in enumerate(zip(prefix, extra)):
            self.lengths[b] = p + len(kept)

    def truncate(self, lengths: list[int]) -> None:
        self.lengths[: len(lengths)] = lengths

    def move_row(self, src: int, dst: int) -> None:
        self.cache.move_row(src, dst, self.lengths[src])
        super().move_row(src, dst)

    # ---- the step ----------------------------------------------------------------------------------------------
    def _run(self, ids, positions, allowed):
        shape = (*ids.shape[:2], self.cache.capacity)
        first = shape not in self._seen_shapes
        started = time.perf_counter()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with gqa_attention(self.adapter.attention_config, self.gqa):
            logits, hidden = self.step(ids, positions, allowed)
        if self.cudagraphs:  # graph outputs are overwritten by the next replay
            logits, hidden = logits.clone(), hidden.clone()
        if first and self.compiled:
            _synchronize(ids.device)
            self.compile_s += time.perf_counter() - started
        self._seen_shapes.add(shape)
        return logits, hidden

    def _step(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor):
        # ids (Bp, width) (or the rows' input vectors (Bp, width, H) for a head), positions in the model's format,
        # allowed (Bp, width, capacity) bool -> additive mask (Bp, 1, width, capacity)
        dtype = self.adapter.dtype
        mask = torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        return self.adapter.forward(self.adapter.embed(ids), positions, self.cache, mask[:, None], **self._features)


def _pad(x: torch.Tensor, rows: int, width: int, edge: bool = False) -> torch.Tensor:
    """x (B, n, ...) padded to (rows, width, ...): new positions repeat the row's last one (`edge`, for positions)
    or are zeros; new rows are zeros."""
    b, n = x.shape[0], x.shape[1]
    if width > n:
        fill = x[:, -1:].expand(b, width - n, *x.shape[2:]) if edge else x.new_zeros(b, width - n, *x.shape[2:])
        x = torch.cat([x, fill], 1)
    if rows > b:
        x = torch.cat([x, x.new_zeros(rows - b, *x.shape[1:])])
    return x


def _compiled(method, device_type: str):
    """`method` (a bound `_step`) under torch.compile for fixed shapes: CUDA graphs on CUDA, inductor's C++ kernels
    on CPU. One graph per bucket and cache capacity. (Inductor's weight freezing, 1.2-1.5x faster GEMMs on CPU,
    is not used: it also froze what the steps read from the cache and changed the output from the 5th token on.)

    Dynamo would check some thousand guards per call (every module attribute and parameter of an HF model: ~0.6
    ms measured per call on the CPU machines, as much as a small draft's whole step). A session's step runs one
    model whose modules never change and whose config we set ourselves, so only the guards on the call's own
    tensors are kept (`keep_tensor_guards_unsafe`); to make that safe each session compiles its own copy of the
    function (dynamo caches graphs per code object), so a graph can only ever be chosen for the session, model
    and cache it was traced with, by the shapes of its inputs."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    function = method.__func__
    code = function.__code__.replace(co_name=f"{function.__name__}_{next(_COPIES)}")
    own = types.MethodType(
        types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__, function.__closure__),
        method.__self__,
    )
    options: dict[str, Any] = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}
    if device_type == "cuda":  # mode="reduce-overhead", which torch.compile refuses next to options
        options["triton.cudagraphs"] = True
    return torch.compile(own, dynamic=False, options=options)


_COPIES = itertools.count()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_causal(visible: torch.Tensor) -> bool:
    """True when the q new rows see exactly what a causal mask gives them (the newest q entries in order, and
    everything before): then no explicit mask is needed and attention can take its causal fast path. Only host
    (CPU) masks are inspected: reading a device mask back would cost a synchronisation (callers that know a
    feed is causal pass no mask at all)."""
    q, m = visible.shape
    if visible.device.type != "cpu":
        return False
    return torch.equal(visible, torch.ones(q, m, dtype=torch.bool, device="cpu").tril(m - q))
