"""`specvlm` command line: generate | demo | train-head | bench | serve | testbed build. Every command has --help; bad
input is one line on stderr and a non-zero exit (set SPECVLM_DEBUG=1 to see tracebacks of unexpected errors); Ctrl-C
is one line and exit 130. Parsing and checking the options imports neither torch nor transformers (package
`__init__`s export lazily), so option errors, --help and --version answer in a fraction of a second.

This module only builds the root parser and mounts the subcommands (commands.py: generate, demo; train/command.py;
bench/command.py; serve/command.py; testbed/build.py); their shared options live in arguments.py."""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import os
import signal
import sys
import threading

from .errors import SpecVLMError
from .launcher import is_leader, launched_ranks, say_error


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage of `specvlm generate` alone is a screenful) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("specvlm")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="specvlm", description="Lossless speculative decoding for VLMs.")
    parser.add_argument("--version", action="version", version=f"specvlm {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    from .commands import add_demo_parser, add_generate_parser

    add_generate_parser(sub)
    add_demo_parser(sub)

    from .train.command import add_train_head_parser

    add_train_head_parser(sub)

    from .bench.command import add_bench_parser

    add_bench_parser(sub)

    from .serve.command import add_serve_parser

    add_serve_parser(sub)

    testbed = sub.add_parser(
        "testbed",
        help="the synthetic testbed: build its tiny trained model pairs",
        description="Tools for the synthetic video testbed (see `specvlm testbed build --help`).",
    )
    from .testbed.build import add_build_command

    add_build_command(testbed)
    return parser


class _TorchImportHoldsCtrlC(importlib.abc.MetaPathFinder):
    """Ctrl-C while torch imports waits for the import to end, then interrupts as anywhere else: a KeyboardInterrupt
    raised inside a Python callback that torch's C++ core (pybind11) is running aborts the process instead
    ("terminate called after throwing an instance of 'pybind11::error_already_set'", status -6). The first import
    of `torch` runs its loader with a SIGINT handler that only takes note (blocking SIGINT in the main thread would
    not do: the kernel hands it to another, such as a BLAS pool's); the module keeps its own loader. Options are
    checked before torch imports, so the hook costs nothing until then."""

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once, and the other finders find the real spec
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _HoldingCtrlC(spec.loader)
        return spec


class _HoldingCtrlC(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # as if imported plainly, from the start
        if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
            return self.loader.exec_module(module)
        caught: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
        try:
            self.loader.exec_module(module)
        finally:
            signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):  # Python's own handler: KeyboardInterrupt, now that torch has imported
            previous(signal.SIGINT, None)


def run() -> None:
    """The `specvlm` command (its console script and `python -m specvlm`): main's status is the process's."""
    if "torch" not in sys.modules:
        sys.meta_path.insert(0, _TorchImportHoldsCtrlC())
    code = main()
    if code != 130 and "torch.distributed" in sys.modules:
        _end_a_rank(code)
    if code == 130:
        # Interrupted, and said so. When Ctrl-C lands while the heavy modules import, the interpreter sometimes
        # ends the process by SIGINT anyway (status -2, its exit for an unhandled KeyboardInterrupt; ~1 run in 16
        # with the interrupt 0.1-2 s after start), though main caught it and SIGINT is ignored by then. Leaving
        # at once, once what was printed is out, gives 130 every time (0 in 80).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _end_a_rank(code: int) -> None:
    """A rank of a split target ends here, without Python's finalization: its process group destroyed
    (`engine.distributed.leave_group`) and its logs and output flushed, os._exit. At finalization a rank could
    still abort in C++ ("terminate called without an active exception", SIGABRT, after its last Python frame: about
    1 run in 36 of `generate --tensor-parallel 2` under load, with or without the group destroyed), failing a job
    whose answer was already out. Returns (nothing done) when this process holds no process group."""
    import logging

    from .engine.distributed import leave_group

    if not leave_group():
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # what --tensor-parallel relaunches on every rank
        return args.func(args) or 0
    except SpecVLMError as err:  # the user's to fix: with several ranks each meets it alike, and rank 0 says it
        say_error(str(err))
        return 2
    except KeyboardInterrupt:  # Ctrl-C at any moment: importing, loading, generating
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the way out
        if is_leader():
            print("specvlm: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: one line unless asked for the traceback
        if os.environ.get("SPECVLM_DEBUG"):
            raise
        rank = "" if launched_ranks() == 1 else f"rank {os.environ.get('RANK', '0')}: "  # perhaps that rank's own
        print(
            f"specvlm: {rank}error: {type(err).__name__}: {err} (set SPECVLM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
