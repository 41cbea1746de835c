"""Tensor parallelism (issue 26): a target split over ranks by transformers' TP plan (`from_pretrained(...,
tp_plan="auto")` under `torchrun`). Every rank runs the same decode loop on the same requests; rank 0 decides and
the others follow.

Why that suffices: the target's logits and hidden states are the same on every rank (each sharded layer ends in an
all-reduce, whose result every rank receives). What could still differ is whatever a rank computes alone:
- draft trees (a replicated draft is deterministic, but nothing forces bitwise equality);
- sampling draws (a request without a generator draws from each rank's own global RNG);
- verifier attention scores for pruning (each rank sees only its own heads).
So rank 0's tree is broadcast before every verification, its verdict (accepted path and next token) and a row's
first token after them, and the attention capture sums its scores over the ranks' heads (`scores`). Every rank
then feeds the target identical inputs, which the collective forward requires, and commits identical tokens.
"""

from __future__ import annotations

import dataclasses
import functools

import torch


def _dist():
    import torch.distributed as dist

    return dist


@functools.cache  # once per process
def leave_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits, while it is still whole (transformers creates
    the group in `from_pretrained(tp_plan=...)` and never destroys it). A rank that exits with the group alive can
    abort in C++ as Python finalizes: gloo's threads still hold work objects whose tensors need the GIL then
    ("terminate called without an active exception", SIGABRT: pytorch#190489; seen in about one suite run in 20,
    on either rank). A no-op at exit when no group is left."""
    import atexit

    atexit.register(leave_group)


def leave_group() -> bool:
    """Destroys the default process group if this process holds one; whether it did."""
    dist = _dist()
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.destroy_process_group()
    return True


def leader(group) -> int:
    """The global rank of the group's first member: the one that decides."""
    return _dist().get_global_rank(group, 0) if group is not None else 0


def from_leader(group, value):
    """`value` as the group's rank 0 holds it (any picklable object; tensors travel via the host and come back on
    the caller's own device, since each rank has its own)."""
    if group is None:
        return value
    devices = _devices(value)
    box = [to_host(value)]
    _dist().broadcast_object_list(box, src=leader(group), group=group)
    return _to_device(box[0], devices)


def sum_over_ranks(group, tensor: torch.Tensor, device) -> torch.Tensor:
    """The element-wise sum of `tensor` over the group (on `device`, where the backend can reduce it)."""
    if group is None:
        return tensor
    total = tensor.to(device).clone()
    _dist().all_reduce(total, group=group)
    return total.to(tensor.device)


def _devices(value):
    if isinstance(value, torch.Tensor):
        return value.device
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _devices(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return None


def to_host(value):
    """`value` with every tensor in it (also inside dataclasses, dicts, lists and tuples) copied to the host: what
    may be pickled to another rank, whose own device differs."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.init]
        return dataclasses.replace(value, **{f.name: to_host(getattr(value, f.name)) for f in fields})
    if isinstance(value, dict):
        return {key: to_host(item) for key, item in value.items()}
    if type(value) in (list, tuple):  # not a named tuple, whose fields are its own
        return type(value)(to_host(item) for item in value)
    return value


def _to_device(value, devices):
    if isinstance(value, torch.Tensor) and devices is not None:
        return value.to(devices)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and isinstance(devices, dict):
        return dataclasses.replace(
            value, **{f.name: _to_device(getattr(value, f.name), devices[f.name]) for f in dataclasses.fields(value)}
        )
    return value
