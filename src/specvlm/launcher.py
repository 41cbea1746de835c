"""`--tensor-parallel N` (generate, serve): the target split over N processes, one a GPU, by transformers' TP plan.

Launched by hand (`torchrun --nproc-per-node N -m specvlm ...`), every process finds its rank in torchrun's
environment and the flag may be left out. Given without torchrun, specvlm is the launcher: it starts the N processes
through torch's own elastic agent (what `torchrun --standalone` runs), on this machine, and waits. Then a rank that
dies (killed, out of memory, a crash) ends the job with one line naming it, instead of torchrun's report; a rank that
failed with its own one-line error has already said why. Several machines need torchrun's rendezvous flags: launch
by hand there (README).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid

from .errors import SpecVLMError


def launched_ranks() -> int:
    """How many processes torchrun started for this job (1 when not launched by it)."""
    try:
        return max(int(os.environ.get("WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def is_leader() -> bool:
    """This process prints and serves: rank 0 of a torchrun job, or the only process."""
    return os.environ.get("RANK", "0") == "0"


# how long a rank other than 0 waits before saying a user's mistake itself (`say_error`)
LEADER_GRACE_S = 15.0


def say_error(message: str) -> None:
    """A user's mistake, said once per job. Every rank meets one alike (a missing file), and rank 0 says it. Another
    rank waits first: the launcher stops the job on the first rank that ends, and a rank ending at once could have
    rank 0 stopped before its line was out (a job that failed with status 2 and said nothing, under load). If the job
    is still running after `LEADER_GRACE_S`, the mistake was this rank's alone, and it says it, naming itself."""
    if is_leader() or launched_ranks() == 1:
        print(f"specvlm: error: {message}", file=sys.stderr)
        return
    time.sleep(LEADER_GRACE_S)
    print(f"specvlm: rank {os.environ.get('RANK')}: error: {message}", file=sys.stderr)


def launched_here(args) -> int | None:
    """None: this process goes on (no --tensor-parallel, 1, or already one of torchrun's ranks); otherwise the exit
    code of the N-rank job this call launched and waited for. One-line errors for an impossible count."""
    asked, ranks = args.tensor_parallel, launched_ranks()
    if asked is None:
        return None
    if asked < 1:
        raise SpecVLMError(f"--tensor-parallel must be >= 1, got {asked}")
    if ranks > 1:
        if asked != ranks:
            raise SpecVLMError(
                f"--tensor-parallel {asked}, but torchrun started {ranks} processes: give the same count, or leave "
                "the flag out under torchrun"
            )
        return None
    if asked == 1:
        return None
    check_devices(asked, args.device)
    return run_ranks(asked, args.argv)


def check_devices(count: int, device: str) -> None:
    """N ranks on CUDA need N GPUs (one each); CPU ranks (gloo) are only for trying it out."""
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        if device not in ("auto", "cpu"):
            raise SpecVLMError(f"--tensor-parallel {count} with --device {device}: split targets run on cuda or cpu")
        return
    found = torch.cuda.device_count()
    if found < count:
        raise SpecVLMError(f"--tensor-parallel {count} needs {count} GPUs (one a rank); this machine has {found}")


def run_ranks(count: int, argv: list[str]) -> int:
    """Runs `python -m specvlm ARGV` as `count` ranks on this machine and returns the job's exit code; a rank that
    ended without its own one-line error (a signal, a crash) is named in one line."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its report is ours to give
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=count,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "specvlm", *argv)
    except SignalException:  # Ctrl-C or a SIGTERM reached the launcher: the agent has stopped the ranks
        raise KeyboardInterrupt from None
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode in (1, 2):  # a specvlm error: the rank printed its one line
            return failure.exitcode
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
        print(
            f"specvlm: error: rank {rank} of {count} {how}; the other ranks were stopped (a split target needs all)",
            file=sys.stderr,
        )
        return 1
    return 0
