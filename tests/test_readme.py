"""Every ```python block of the README runs as written, top to bottom in one namespace, on the bundled testbed
models; what it prints is the target's own answer."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_python_examples_run(capsys):
    blocks = python_blocks()
    assert blocks, "the README shows no Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out, inputs, target = namespace["out"], namespace["inputs"], namespace["target"]
    plain = target.generate(**inputs, do_sample=False, max_new_tokens=64)
    assert out.token_ids == plain[0, inputs["input_ids"].shape[1] :].tolist()
    printed = capsys.readouterr().out
    # the answer, then the same answer streamed, then the batch's shape and its rows' answers
    batched, batch = namespace["batched"], namespace["batch"]
    assert (
        out.text
        and printed.startswith(out.text + "\n")
        and f"{out.text}\nbatch: {tuple(batched.sequences.shape)}\n" in printed
    )
    assert printed.rstrip().endswith("\n".join(batched.text).rstrip())
    from specvlm.adapters import adapter_for
    from specvlm.engine.request import left_padding, strip_left_padding

    for row, tokens in zip(adapter_for(target).split_batch(batch), batched.token_ids):
        row = strip_left_padding(row, left_padding(row["attention_mask"]))
        assert (
            tokens
            == target.generate(**row, do_sample=False, max_new_tokens=64)[0, row["input_ids"].shape[1] :].tolist()
        )


def serving_script(port: int) -> str:
    """The README's "Serving" section's bash blocks, in order, as one script (the port swapped for a free one)."""
    section = README.read_text().split("## Serving\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "start the server, ask with curl, ask with the openai client"
    return "set -e\n" + "".join(blocks).replace("8000", str(port))


@pytest.mark.slow
def test_readme_serving_examples_run(tmp_path):
    """The curl and openai-client examples, run verbatim against the server the README starts: both print the
    answer `specvlm generate` gives for the same clip and question."""
    import contextlib
    import io
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys

    from specvlm.cli import main
    from specvlm.testbed.assets import SAMPLES_DIR, bundled_pair

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    shell = subprocess.Popen(
        ["bash", "-c", serving_script(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = shell.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server, if the script failed before `kill $SERVER`
            os.killpg(shell.pid, signal.SIGTERM)
    assert shell.returncode == 0, err[-3000:]
    target, draft = bundled_pair("qwen2_5_vl")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(
            [
                "generate",
                "--target",
                str(target),
                "--draft",
                str(draft),
                "--video",
                f"{SAMPLES_DIR}/clip_00009.mp4",
                "--prompt",
                "Describe the video in detail.",
                "--max-new-tokens",
                "64",
                "--json",
            ]
        )
    answer = json.loads(printed.getvalue())
    curl, streamed = out.split("\n", 1)
    assert json.loads(curl)["choices"][0]["message"]["content"] == answer["text"]
    assert streamed.startswith(answer["text"] + "\n") and f"{len(answer['token_ids'])} tokens, τ=" in streamed
