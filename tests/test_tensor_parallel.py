"""Tensor parallelism (issue 26) on two CPU processes (gloo, `torchrun`): the target split by transformers' TP plan
decodes exactly what one process decodes, for every drafter, on every rank; sampled tokens agree across ranks even
when each rank's own RNG would draw differently (rank 0 decides, engine/distributed.py); the verifier's attention
scores for pruning sum every rank's heads into the single-process scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.adapters.capture import AttentionCapture
from specvlm.drafters.eagle import EagleHead
from specvlm.drafters.eagle3 import Eagle3Head
from specvlm.tiny import make_inputs

from helpers import model, reference

WORKER = Path(__file__).resolve().parent / "tensor_parallel_worker.py"
pytestmark = pytest.mark.xdist_group(name="tensor_parallel")  # one worker runs the two-process job once
FAMILIES = ("qwen2_5_vl", "llava_onevision")
TORCHRUN = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2"]  # a free port


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    for family in FAMILIES:
        model(family).save_pretrained(root / family)
        model(family, seed=1, hidden=32).save_pretrained(root / f"{family}_draft")
    out = root / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*TORCHRUN, str(WORKER), str(root), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def drafters(target, family):
    return {
        "draft": (model(family, seed=1, hidden=32), dict(tree="static", engine="fast")),
        "self-pruned": ("self", dict(pruning="specvlm", visual_keep_ratio=0.3)),
        "eagle2": (EagleHead.init_for(target, seed=0), dict(tree="dynamic")),
        "eagle3": (Eagle3Head.init_for(target, seed=0), dict(tree="chain", engine="fast")),
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_rank_decodes_what_one_process_decodes(ranks, family):
    target = model(family)
    assert all(rank[f"{family}/sharded"] for rank in ranks)  # the target really was split
    for kind in ("video", "image"):
        inputs = make_inputs(family, kind)
        expected = reference(target, inputs, max_new_tokens=12, do_sample=False)
        for name in drafters(target, family):
            assert ranks[0][f"{family}/{kind}/{name}"] == ranks[1][f"{family}/{kind}/{name}"] == expected, name
        assert ranks[0][f"{family}/{kind}/sampled"] == ranks[1][f"{family}/{kind}/sampled"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_scores_see_every_head(ranks, family):
    adapter = adapter_for(model(family))
    prompt = adapter.prepare(make_inputs(family, "video"))
    visual = prompt.visual_mask.nonzero().flatten()
    with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
        adapter.forward(prompt.embeds, prompt.positions, adapter.new_cache(), last_only=True)
    for rank in ranks:
        torch.testing.assert_close(torch.tensor(rank[f"{family}/scores"]), capture.scores, rtol=1e-4, atol=1e-6)


def test_a_generator_on_one_process_has_no_group():
    target = model("qwen2_5_vl")
    assert adapter_for(target).tp_group is None
    assert SpeculativeGenerator(target, "self").generate(**make_inputs("qwen2_5_vl"), max_new_tokens=2).token_ids


@pytest.mark.slow
def test_generate_under_torchrun_answers_once_as_one_process_does(folders, media, capsys):
    from specvlm.cli import main

    argv = ["generate", "--target", folders["qwen"], "--draft", folders["qwen_draft"], "--image"]
    argv = [
        str(a) for a in [*argv, media / "picture.png", "--prompt", "Describe it.", "--max-new-tokens", 10, "--json"]
    ]
    done = subprocess.run(
        [*TORCHRUN, "-m", "specvlm", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # rank 0 alone prints
    assert main(argv) == 0
    assert json.loads(lines[0])["token_ids"] == json.loads(capsys.readouterr().out)["token_ids"]


def test_serve_under_torchrun_is_refused_in_one_line(monkeypatch, capsys):
    from specvlm.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["serve", "--target", "some/model"]) != 0
    err = capsys.readouterr().err
    assert "does not run under torchrun yet" in err and len(err.strip().splitlines()) == 1
