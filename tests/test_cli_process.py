"""The `specvlm` command as a user runs it, in a subprocess: --version, option errors that answer before torch is
imported (one line, exit 2), and Ctrl-C at any moment (one line, exit 130, no traceback)."""

import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from specvlm.testbed.assets import bundled_pair, sample_clips

SPECVLM = [sys.executable, "-m", "specvlm"]
# runs the CLI, then reports whether torch or transformers were imported on the way
PROBE = """import sys
from specvlm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:   # argparse's usage errors
    code = stop.code
print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))
sys.exit(code)"""


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def test_version_is_the_package_version():
    out = subprocess.run(SPECVLM + ["--version"], capture_output=True, text=True, env=_env())
    assert out.returncode == 0 and out.stdout.strip() == f"specvlm {version('specvlm')}"


BAD_OPTIONS = [  # argv -> what the one line must name
    (["generate", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "--temperature", "1", "--top-p", "2"], "--top-p"),
    (["generate", "--device", "foo"], "--device"),
    (["generate", "--dtype", "float8"], "--dtype"),
    (["generate", "--draft", "none", "--pruning", "specvlm"], "no draft is given"),
    (["generate", "--pruning", "specvlm"], "--draft self"),
    (["generate", "--temperature", "nan"], "--temperature"),
    (["generate", "--pruning", "none", "--visual-keep-ratio", "0.2"], "--pruning"),
    (["serve", "--device", "cuda:x"], "--device"),
    (["bench", "--dataset", "testbed:w", "--out", "o", "--device", "gpu"], "--device"),
    (["train-head", "--out", "o", "--target", "t", "--device", "foo"], "--device"),
]


@pytest.mark.parametrize("argv,flag", BAD_OPTIONS)
def test_bad_options_are_one_line_before_torch_loads(argv, flag):
    if argv[0] in ("generate", "serve"):
        argv = [argv[0], "--target", "some/model", "--prompt", "Q", *argv[1:]]
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=_env())
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in out.stderr, out.stderr
    # answers before the heavy imports (they take seconds; the answer alone a fraction of one): checked by what the
    # process imported, not by the clock, so a loaded machine cannot fail it
    assert out.stdout.strip() == "heavy: []", (argv, out.stdout)


def _interrupt(argv, wait_for: str | None, delay: float) -> subprocess.CompletedProcess:
    """Starts the CLI, waits for `wait_for` on stderr (or `delay` seconds), sends SIGINT, and returns the result."""
    # SIGINT as in a foreground terminal: a suite started in the background (`cmd &` without job control) hands its
    # children SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen(
        SPECVLM + argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    if wait_for == "answer":  # the first streamed text: generation has begun
        proc.stdout.read(1)
    elif wait_for is not None:
        for line in proc.stderr:
            seen += line
            if wait_for in line:
                break
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, seen + err)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment,wait_for,delay",
    [
        ("importing", None, 0.3),
        ("importing", None, 0.6),
        ("importing", None, 1.2),  # at some of these moments Python ended by SIGINT before cli.run (1 run in 16)
        ("loading", "loading target", 0.0),
        ("generating", "answer", 0.0),
    ],
)
def test_ctrl_c_is_one_line_and_exit_130(moment, wait_for, delay):
    target, draft = bundled_pair("qwen2_5_vl")
    clip = sample_clips(kind="caption")[0]["video"]
    argv = [
        "generate",
        "--target",
        str(target),
        "--draft",
        str(draft),
        "--video",
        str(clip),
        "--prompt",
        "Describe the video in detail.",
        "--max-new-tokens",
        "512",
        "--engine",
        "eager",
        "--tree",
        "chain",
        "--num-draft-tokens",
        "1",
    ]
    result = _interrupt(argv, wait_for, delay)
    assert result.returncode == 130, (moment, result.stderr)
    assert "Traceback" not in result.stderr, (moment, result.stderr)
    assert result.stderr.strip().splitlines()[-1] == "specvlm: interrupted", (moment, result.stderr)


def test_ctrl_c_while_torch_imports_waits_for_the_import_then_is_one_line(tmp_path):
    """A KeyboardInterrupt raised inside torch's import can abort the process from its C++ core (pybind11:
    "terminate called ...", status -6; seen once in CI-like runs): the CLI holds Ctrl-C until torch has imported.
    A stand-in torch interrupts itself midway and says whether its import ran to the end."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(0.3)  # a KeyboardInterrupt would land here\n"
        "print('torch imported to its end', flush=True)\n"
    )
    argv = ["generate", "--target", "some/model", "--prompt", "Q", "--max-new-tokens", "4"]
    result = subprocess.run(
        SPECVLM + argv,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "PYTHONPATH": str(tmp_path)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a foreground terminal
    )
    assert result.stdout.strip() == "torch imported to its end", result
    assert result.returncode == 130 and result.stderr.strip().splitlines() == ["specvlm: interrupted"], result


def test_python_m_specvlm_is_the_cli():
    out = subprocess.run(SPECVLM + ["--help"], capture_output=True, text=True, env=_env(), cwd=Path.home())
    assert out.returncode == 0 and out.stdout.startswith("usage: specvlm")
