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

import functools
import itertools
import time
import types
from contextlib import contextmanager

import torch

from .adapters import Prompt, VLMAdapter, keep_cache_entries
from .adapters.attention import additive_mask, gqa_attention, uses_gqa_attention
from .adapters.static_cache import SlotCache

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
    """Engine "eager": `DynamicCache` and the model's own forward."""

    def __init__(self, adapter: VLMAdapter):
        self.adapter = adapter
        self.cache = adapter.new_cache()
        self.length = 0      # entries in the cache
        self.offset = 0      # position of cache entry i is i + offset
        self.forwards = 0

    @property
    def next_position(self) -> int:
        return self.length + self.offset

    def prefill(self, prompt: Prompt, reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (1, V) after the prompt, and the prompt's hidden states (L, H). `reserve`: entries the session
        will append after the prompt at most (a static cache allocates them)."""
        with _observed(self, "prefill"):
            logits, hidden = self.adapter.forward(prompt.embeds, prompt.positions, self.cache, last_only=True)
        self._prefilled(prompt)
        return logits, hidden

    def _prefilled(self, prompt: Prompt) -> None:
        self.forwards += 1
        self.length = len(prompt)
        self.offset = prompt.next_position - len(prompt)

    def extend(self, ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor | None = None,
               prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Append tokens `ids` (n,) at 1-D `positions` (n,). Without `visible` they attend causally; with it, row r
        sees the first `prefix` cache entries plus the entries after them that `visible[r]` marks.
        Returns float32 logits (n, V) and final hidden states (n, H)."""
        mask = None
        if visible is not None and not _is_causal(visible):
            mask = additive_mask(visible, prefix, self.adapter.dtype, self.adapter.device)
        with _observed(self, "step"):
            logits, hidden = self.adapter.forward(self.adapter.embed(ids), self.adapter.positions(positions),
                                                  self.cache, mask)
        self.forwards += 1
        self.length += int(ids.shape[0])
        return logits, hidden

    def keep(self, prefix: int, extra=()) -> None:
        """Keep cache entries [0, prefix) and then `extra` (host ints >= prefix: called after the round's sync)."""
        keep_cache_entries(self.cache, prefix, extra)
        self.length = prefix + len(extra)

    def truncate(self, length: int) -> None:
        """Forget every entry from `length` on (a drafter sharing this session drops what it drafted)."""
        self.keep(length)


class StaticSession(ModelSession):
    """Engine "fast": a `SlotCache` and fixed-shape steps, compiled when `compile` is set (`mode`
    "reduce-overhead" gives CUDA graphs on CUDA). `compile_s` accumulates the first call of each new shape."""

    def __init__(self, adapter: VLMAdapter, compile: bool = False):
        self.adapter = adapter
        self.cache = SlotCache(adapter.num_layers)
        self.length = self.offset = self.forwards = 0
        self.compile_s = 0.0
        self.gqa = uses_gqa_attention(adapter.device, adapter.attention_config)
        self.cudagraphs = compile and adapter.device.type == "cuda"
        self.step = _compiled(self._step, adapter.device.type) if compile else self._step
        self.compiled = compile
        self._seen_shapes: set = set()

    def prefill(self, prompt: Prompt, reserve: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's own prefill into a DynamicCache (bit-identical to `generate`'s), copied into the slots."""
        staging = self.adapter.new_cache()
        with _observed(self, "prefill"):
            logits, hidden = self.adapter.forward(prompt.embeds, prompt.positions, staging, last_only=True)
        needed = len(prompt) + reserve
        capacity = self.cache.capacity if self.cache.capacity >= needed else -(-needed // 128) * 128
        if self.cache.load(staging, len(prompt), capacity):
            self._seen_shapes.clear()
        self._prefilled(prompt)
        return logits, hidden

    def extend(self, ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor | None = None,
               prefix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(ids.shape[0])
        rows, start = bucket(n), self.length
        if start + rows > self.cache.capacity:
            raise RuntimeError(f"static cache overflow: {start} + {rows} rows > {self.cache.capacity} slots")
        device = self.cache.start.device
        # allowed (rows, capacity): the committed prefix, then the window [prefix, start + n) as `visible` says
        # (causal when None); padding rows see the prefix only (their outputs and their K/V slots beyond
        # start + n are never read)
        allowed = torch.zeros(rows, self.cache.capacity, dtype=torch.bool, device=device)
        if visible is None:
            prefix = start
            allowed[:n, start: start + n] = _lower_triangle(n, device)
        else:
            allowed[:n, prefix: start + n] = visible.to(device)
        allowed[:, :prefix] = True
        ids, positions = ids.to(device), positions.to(device).reshape(-1)
        if rows > n:
            ids = torch.cat([ids, ids.new_zeros(rows - n, *ids.shape[1:])])
            positions = torch.cat([positions, positions[-1:].expand(rows - n)])
        self.cache.start.fill_(start)
        with _observed(self, "step"):
            logits, hidden = self._run(ids, self.adapter.positions(positions), allowed)
        self.forwards += 1
        self.length += n
        return logits[:n], hidden[:n]

    def keep(self, prefix: int, extra=()) -> None:
        self.cache.keep(prefix, extra)
        self.length = prefix + len(extra)

    def truncate(self, length: int) -> None:
        self.length = length

    # ---- the step ----------------------------------------------------------------------------------------------
    def _run(self, ids, positions, allowed):
        shape = (ids.shape[0], self.cache.capacity)
        first = shape not in self._seen_shapes
        started = time.perf_counter()
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with gqa_attention(self.adapter.attention_config, self.gqa):
            logits, hidden = self.step(ids, positions, allowed)
        if self.cudagraphs:   # graph outputs are overwritten by the next replay
            logits, hidden = logits.clone(), hidden.clone()
        if first and self.compiled:
            _synchronize(ids.device)
            self.compile_s += time.perf_counter() - started
        self._seen_shapes.add(shape)
        return logits, hidden

    def _step(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor):
        # ids (rows,) (or the rows' input vectors (rows, H) for a head), positions in the model's format for rows,
        # allowed (rows, capacity) bool
        dtype = self.adapter.dtype
        mask = torch.zeros((), dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        return self.adapter.forward(self.adapter.embed(ids), positions, self.cache, mask[None, None])


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
    own = types.MethodType(types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__,
                                              function.__closure__), method.__self__)
    options = {"guard_filter_fn": torch.compiler.keep_tensor_guards_unsafe}
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(own, dynamic=False, mode=mode, options=options)


_COPIES = itertools.count()


@functools.lru_cache(maxsize=64)
def _lower_triangle(n: int, device: torch.device) -> torch.Tensor:
    """(n, n) causal visibility, made once per size and device (read only)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


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
