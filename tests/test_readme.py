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
    out, gen, inputs = namespace["out"], namespace["gen"], namespace["inputs"]
    plain = namespace["target"].generate(**inputs, do_sample=False, max_new_tokens=64)
    assert out.token_ids == plain[0, inputs["input_ids"].shape[1]:].tolist()
    printed = capsys.readouterr().out
    assert out.text and printed.startswith(out.text) and printed.rstrip().endswith(out.text.rstrip())
    assert gen.stats.new_tokens == len(out.token_ids)
