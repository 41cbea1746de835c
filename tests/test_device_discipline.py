"""Device discipline, checked on CPU: every tensor specvlm creates names its device, so nothing lands on the host
by default when the models live on a GPU (the dynamic tree once built its values on the CPU and crashed on CUDA).

A TorchFunctionMode watches the factory functions (`torch.tensor`, `zeros`, `arange`, ...) while generation runs;
a call made from specvlm's own source without a `device=` argument is a violation. Host bookkeeping says
`device="cpu"`; everything else follows the tensor or module it works with. HF's own code is not checked."""

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from specvlm import SpeculativeGenerator
from specvlm.drafters.eagle import EagleHead
from specvlm.tiny import make_inputs

from helpers import model

SOURCE = str(Path(__import__("specvlm").__file__).parent)
FACTORIES = {
    torch.tensor,
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.eye,
    torch.rand,
    torch.randn,
    torch.randint,
    torch.linspace,
    torch.as_tensor,
}


class RequireDevice(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.violations: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and kwargs.get("device") is None:
            frame = sys._getframe(1)
            while frame is not None and "/torch/" in frame.f_code.co_filename:
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(SOURCE):
                self.violations.add(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


def test_the_checker_catches_a_host_tensor_made_without_a_device():
    with RequireDevice() as mode:
        torch.zeros(3)  # the test's own code: not specvlm's
        from specvlm.engine.tree import node_depths

        node_depths(torch.tensor([-1, 0], device="cpu"))  # names the parents' device: fine
    assert not mode.violations
    import specvlm.engine.tree as tree

    source = "def bad():\n    return torch.zeros(2)\n"
    namespace = {"torch": torch}
    exec(compile(source, tree.__file__, "exec"), namespace)  # a function "defined" in specvlm's tree.py
    with RequireDevice() as mode:
        namespace["bad"]()
    assert mode.violations == {"tree.py:2 zeros"}


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_generation_names_every_device(family):
    target = model(family)
    drafters = {
        "small": model(family, seed=1, hidden=32, layers=1),
        "self": "self",
        "head": EagleHead.init_for(target, seed=0),
        "compressed head": EagleHead.init_for(target, compressor=dict(mode="select", heads=4), seed=0),
    }
    with RequireDevice() as mode:
        for kind in ("image", "video"):
            inputs = make_inputs(family, kind)
            for name, draft in drafters.items():
                for tree in ("chain", "static", "dynamic"):
                    for engine in ("fast", "eager"):
                        for pruning in ("none", "specvlm", "temporal") if name != "compressed head" else ("none",):
                            gen = SpeculativeGenerator(
                                target, draft, tree=tree, engine=engine, pruning=pruning, num_draft_tokens=3
                            )
                            gen.generate(**inputs, do_sample=False, max_new_tokens=6)
                            gen.generate(**inputs, do_sample=True, max_new_tokens=6, repetition_penalty=1.2)
    assert not mode.violations, sorted(mode.violations)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_batched_generation_names_every_device(family):
    """The batch paths too: splitting a batch, per-row prefills, batched drafting and verification, rows that
    finish early and leave, mixed sampling settings and per-row generators."""
    from specvlm.tiny import make_batch, special_ids

    target = model(family)
    rows = [
        make_inputs(family, "video"),
        make_inputs(family, "image", prompt_len=7, seed=1),
        make_inputs(family, "text", prompt_len=5, seed=2),
    ]
    batch = make_batch(rows, family, special_ids(1024)["pad"])
    drafters = {
        "small": model(family, seed=1, hidden=32, layers=1),
        "self": "self",
        "none": None,
        "head": EagleHead.init_for(target, seed=0),
    }
    with RequireDevice() as mode:
        for draft in drafters.values():
            for tree in ("chain", "static", "dynamic"):
                gen = SpeculativeGenerator(
                    target, draft, tree=tree, num_draft_tokens=3, confidence_threshold=0.3 if tree == "chain" else 0.0
                )
                gen.generate(**batch, do_sample=False, max_new_tokens=6)
                gen.generate(
                    **batch,
                    do_sample=True,
                    max_new_tokens=6,
                    repetition_penalty=1.2,
                    generator=torch.Generator(device="cpu").manual_seed(0),
                )
                running = gen.batch(2)
                for i, (row, sample) in enumerate(zip(rows[:2], (False, True))):
                    running.add(
                        gen.request(
                            **row,
                            do_sample=sample,
                            max_new_tokens=4,
                            eos_token_id=-1,
                            generator=torch.Generator(device="cpu").manual_seed(i),
                        )
                    )
                while len(running):
                    running.step()
    assert not mode.violations, sorted(mode.violations)
