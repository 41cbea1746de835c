"""Tensor parallelism (issue 26) on two CPU processes (gloo, `torchrun`): the target split by transformers' TP plan
decodes exactly what one process decodes, for every drafter, on every rank; sampled tokens agree across ranks even
when each rank's own RNG would draw differently (rank 0 decides, engine/distributed.py); the verifier's attention
scores for pruning sum every rank's heads into the single-process scores. `specvlm generate` and `serve` on two
ranks, a killed rank, and the other split (a device_map's dispatch hooks)."""

import json
import os
import subprocess
import sys
import warnings
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


@pytest.fixture(scope="session")  # not "module": a worker that ran another module's tests in between set it up twice
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    for family in FAMILIES:
        model(family).save_pretrained(root / family)
        model(family, seed=1, hidden=32).save_pretrained(root / f"{family}_draft")
    out = root / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for attempt in (1, 2):
        done = subprocess.run(
            [*TORCHRUN, str(WORKER), str(root), str(out)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        # twice in loaded suite runs (2026-12-04) a rank aborted in C++ ("terminate called without an active
        # exception", SIGABRT), once here and once in the CLI test below, after the rank's last Python frame;
        # ranks now end without finalization (cli._end_a_rank). Until that is seen to hold, one more try for that
        # only, said as a warning so the suite's summary shows it (a wrong token still fails: the comparisons are
        # the tests')
        if done.returncode == 0 or "(SIGABRT)" not in done.stderr or attempt == 2:
            break
        warnings.warn(f"tensor-parallel job: a rank aborted, retried once: {done.stderr[-1500:]}", stacklevel=1)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def drafters(target, family):
    names = {
        "draft": (model(family, seed=1, hidden=32), dict(tree="static", engine="fast")),
        "self-pruned": ("self", dict(pruning="specvlm", visual_keep_ratio=0.3)),
        "eagle2": (EagleHead.init_for(target, seed=0), dict(tree="dynamic")),
        "eagle3": (Eagle3Head.init_for(target, seed=0), dict(tree="chain", engine="fast")),
    }
    if family == "qwen2_5_vl":
        names["compiled"] = names["draft"]
    return names


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
    batch = [reference(target, make_inputs(family, k), max_new_tokens=12, do_sample=False) for k in ("video", "image")]
    assert ranks[0][f"{family}/batch"] == ranks[1][f"{family}/batch"] == batch  # rows of different lengths


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


def test_the_process_group_is_destroyed_at_exit_while_python_is_whole(tmp_path):
    """A rank that loaded a split target leaves its process group before the interpreter finalizes (gloo's threads
    could otherwise abort it then); registering twice registers once, and with no group left exit does nothing."""
    script = f"""
import atexit
import torch.distributed as dist
from specvlm.engine.distributed import leave_group_at_exit

dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
before = atexit._ncallbacks()
leave_group_at_exit()
leave_group_at_exit()
print("handlers added:", atexit._ncallbacks() - before)
atexit._run_exitfuncs()  # what exit runs, here where the result can still be printed
print("group after exit handlers:", dist.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["handlers added: 1", "group after exit handlers: False"]


def test_a_generator_on_one_process_has_no_group():
    target = model("qwen2_5_vl")
    assert adapter_for(target).tp_group is None
    assert SpeculativeGenerator(target, "self").generate(**make_inputs("qwen2_5_vl"), max_new_tokens=2).token_ids


@pytest.mark.slow
@pytest.mark.parametrize("launch", ["torchrun", "--tensor-parallel"])
def test_generate_on_two_ranks_answers_once_as_one_process_does(folders, media, capsys, launch):
    """By hand under torchrun, or launched by specvlm itself (`--tensor-parallel 2`)."""
    from specvlm.cli import main

    argv = ["generate", "--target", folders["qwen"], "--draft", folders["qwen_draft"], "--image"]
    argv = [
        str(a) for a in [*argv, media / "picture.png", "--prompt", "Describe it.", "--max-new-tokens", 10, "--json"]
    ]
    command = [*TORCHRUN, "-m", "specvlm", *argv]
    if launch == "--tensor-parallel":
        command = [sys.executable, "-m", "specvlm", *argv, "--tensor-parallel", "2"]
    done = subprocess.run(
        command,
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


@pytest.mark.parametrize(
    "command, world, says",
    [
        ("generate", "2", "--tensor-parallel 3, but torchrun started 2 processes"),
        ("serve", "2", "--tensor-parallel 3, but torchrun started 2 processes"),
        ("generate", "1", "--tensor-parallel must be >= 1, got 0"),
    ],
)
def test_a_tensor_parallel_count_that_cannot_be_is_one_line(folders, monkeypatch, capsys, command, world, says):
    from specvlm.cli import main

    monkeypatch.setenv("WORLD_SIZE", world)
    count = "0" if "got 0" in says else "3"
    argv = [command, "--target", str(folders["qwen"]), "--tensor-parallel", count]
    assert main([*argv, "--prompt", "Hi."] if command == "generate" else argv) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def chat(url: str, prompt: str) -> str:
    import urllib.request

    body = dict(model="tp", messages=[dict(role="user", content=prompt)], max_tokens=12, temperature=0)
    request = urllib.request.Request(
        url + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def rank_pid(launcher: int, rank: int) -> int:
    """The pid of the launcher's child that torchrun's agent started as `rank`."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    for pid in children:
        if f"RANK={rank}" in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0"):
            return int(pid)
    raise AssertionError(f"no rank {rank} among {children}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks through /proc")
def test_serve_on_two_ranks_answers_as_one_process_and_ends_in_one_line_when_a_rank_dies(folders, tmp_path, capsys):
    """`specvlm serve --tensor-parallel 2`: rank 0 serves, rank 1 follows its batch (serve/ranks.py). Two requests at
    once (a batch of rows of different lengths) get what one process's `specvlm generate` prints; then rank 1 is
    killed, and the job ends at once with one line naming it."""
    import re
    import signal
    import threading
    import time

    from specvlm.cli import main

    models = ["--target", str(folders["qwen"]), "--draft", str(folders["qwen_draft"])]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "specvlm", "serve", *models, "--served-model-name", "tp", "--port", "0"]
            + ["--max-batch", "2", "--tensor-parallel", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
    try:
        end = time.monotonic() + 300
        while not (found := re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
            assert proc.poll() is None and time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.2)
        prompts = ["Hello there.", "Tell me a long story about a red dog and a small blue cat, please."]
        answers = {}
        threads = [threading.Thread(target=lambda p=p: answers.update({p: chat(found.group(1), p)})) for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for prompt in prompts:
            assert main(["generate", *models, "--prompt", prompt, "--max-new-tokens", "12", "--json"]) == 0
            assert answers[prompt] == json.loads(capsys.readouterr().out)["text"]
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        assert proc.wait(60) == 1
        text = log.read_text()
        assert text.strip().splitlines()[-1] == (
            "specvlm: error: rank 1 of 2 was killed by SIGKILL; the other ranks were stopped (a split target needs all)"
        )
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("kind", ["video", "image"])
def test_a_target_dispatched_by_a_device_map_decodes_what_it_does_whole(tmp_path, kind):
    """The other split (device_map, accelerate's pipeline dispatch) through the same machinery a multi-GPU map uses:
    hooks at every placed module that move its inputs to where its weights are. With one CPU, the deep half of the
    layers is offloaded to disk (weights loaded by the hooks at each forward); the engine must not notice."""
    from transformers import AutoModelForImageTextToText

    whole = model("qwen2_5_vl")
    whole.save_pretrained(tmp_path / "target")
    layers = whole.config.text_config.num_hidden_layers
    placement = {f"model.language_model.layers.{i}": "disk" if i >= layers // 2 else "cpu" for i in range(layers)}
    for name in ("model.visual", "model.language_model.embed_tokens", "model.language_model.norm", "lm_head"):
        placement[name] = "cpu"
    placement["model.language_model.rotary_emb"] = "cpu"
    split = AutoModelForImageTextToText.from_pretrained(
        tmp_path / "target", dtype=torch.float32, device_map=placement, offload_folder=tmp_path / "offload"
    )
    assert "disk" in split.hf_device_map.values()
    inputs = make_inputs("qwen2_5_vl", kind)
    expected = reference(whole, inputs, max_new_tokens=12, do_sample=False)
    draft = model("qwen2_5_vl", seed=1, hidden=32)
    for options in (dict(tree="static"), dict(engine="fast", tree="chain")):
        out = SpeculativeGenerator(split, draft, **options).generate(**inputs, max_new_tokens=12, do_sample=False)
        assert out.token_ids == expected, options


def test_a_users_mistake_is_said_by_rank_0_and_by_another_rank_only_if_the_job_goes_on(monkeypatch, capsys):
    """`launcher.say_error`: rank 0 (or a lone process) says it at once; another rank first gives rank 0 the time to
    say it and end the job, then says it naming itself (the mistake was its own)."""
    from specvlm import launcher

    waited = []
    monkeypatch.setattr(launcher.time, "sleep", waited.append)
    for rank, world, said in (("0", "2", "specvlm: error: no such file"), ("5", "1", "specvlm: error: no such file")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", world)
        launcher.say_error("no such file")
        assert capsys.readouterr().err.strip() == said and not waited
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    launcher.say_error("no such file")
    assert capsys.readouterr().err.strip() == "specvlm: rank 1: error: no such file"
    assert waited == [launcher.LEADER_GRACE_S]


@pytest.mark.slow
def test_a_bad_input_on_two_ranks_is_said_once(folders):
    """Every rank meets a user's mistake alike (a missing file): rank 0 says it, in one line, and the job ends with
    its status (the launcher adds nothing)."""
    argv = ["generate", "--target", str(folders["qwen"]), "--video", "no-such-clip.mp4", "--prompt", "Hi."]
    done = subprocess.run(
        [sys.executable, "-m", "specvlm", *argv, "--tensor-parallel", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-clip.mp4" in lines[0], done.stderr
