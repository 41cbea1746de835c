"""Serving a target split over torchrun's ranks (tensor parallelism, issue 26).

Rank 0 is the whole server: HTTP, the queue, the prepare threads and the model thread. The other ranks (followers)
hold their shards and repeat what rank 0's model thread does to its running batch, in the same order: every
operation is broadcast before rank 0 performs it (`LeaderBatch`), and a follower performs the same operation on its
own `DecodeBatch` (`follow`). The collective target forward then sees the same rows on every rank, and the engine's
own broadcasts (engine/distributed.py) make every rank commit rank 0's tokens.

    ("batch", max_rows)   a new running batch (the server's first, after warm-up, after a failed round)
    ("add", request)      a request joins (its model inputs, sampling settings and seed, through the host)
    ("remove", index)     the row at `index` leaves (finished, cancelled, timed out)
    ("step",)             one round for every row
    ("idle",)             nothing: sent every KEEP_ALIVE_S while no request runs, so that a follower blocked in the
                          broadcast never reaches the process group's timeout
    ("stop",)             the server is shutting down: followers return

Failures. A `SpecVLMError` (the request's own fault, found identically on every rank) leaves the batch as it was on
every rank, and serving goes on. Anything else (a rank that died, a collective that failed, a bug) leaves the ranks
in unknown, possibly different states, and a split target cannot decode without every rank: the rank that sees it
prints one line and exits at once (`lost`), and the launcher stops the others.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..engine.distributed import from_leader, to_host
from ..errors import SpecVLMError

KEEP_ALIVE_S = 60.0  # well under any process group timeout (torch's shortest default is NCCL's 10 minutes)


class LeaderBatch:
    """Rank 0's running batch: `DecodeBatch`'s interface, each operation broadcast to the followers first."""

    def __init__(self, generator, group, max_rows: int):
        self.group = group
        self._send("batch", max_rows)
        self.inner = self._run(lambda: generator.batch(max_rows))

    @property
    def rows(self):
        return self.inner.rows

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def full(self) -> bool:
        return self.inner.full

    def add(self, request, tag=None):
        self._send("add", to_host(request))
        return self._run(lambda: self.inner.add(request, tag))

    def remove(self, row) -> None:
        index = self.inner.rows.index(row)
        self._send("remove", index)
        self._run(lambda: self.inner.remove(row))

    def step(self):
        self._send("step")
        return self._run(self.inner.step)

    def keep_alive(self) -> None:
        self._send("idle")

    def close(self) -> None:
        try:
            from_leader(self.group, ("stop",))
        except Exception:  # the followers are gone already (the launcher stops the job when one dies): nothing to stop
            pass

    def _send(self, *op) -> None:
        self._run(lambda: from_leader(self.group, op))

    def _run(self, work):
        try:
            return work()
        except SpecVLMError:
            raise
        except Exception as err:
            lost(err)


def follow(generator, group) -> int:
    """A follower's whole serving life: repeat rank 0's batch operations until it stops the server."""
    batch: Any = None  # rank 0's first operation makes it
    while True:
        op, *args = _received(group)
        if op == "stop":
            return 0
        try:
            if op == "batch":
                batch = generator.batch(args[0])
            elif op == "add":
                batch.add(args[0])
            elif op == "remove":
                batch.remove(batch.rows[args[0]])
            elif op == "step":
                batch.step()
        except SpecVLMError:  # the request's own fault: rank 0 met it too and goes on
            continue
        except Exception as err:
            lost(err)


def _received(group):
    try:
        return from_leader(group, None)
    except Exception as err:
        lost(err)


def lost(err: Exception):
    """A split target cannot decode without every rank: one line, and this rank ends now (its threads with it)."""
    rank = os.environ.get("RANK", "0")
    first = (str(err).strip().splitlines() or [""])[0]
    print(
        f"specvlm serve: rank {rank} stops: {type(err).__name__}: {first[:300]} (with tensor parallelism every rank "
        "is needed; the job ends)",
        file=sys.stderr,
        flush=True,
    )
    os._exit(1)
