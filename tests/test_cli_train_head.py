"""`specvlm train-head` end to end on a model folder and a miniature testbed world (2 clips): it trains, writes a
head that `load_drafter` loads and that drafts losslessly, `--resume` gives exactly the uninterrupted run, and every
bad input is one line on stderr with a non-zero exit; `--arch eagle3` trains a head `generate --head` drafts with."""

import json
from types import SimpleNamespace

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.cli import main
from specvlm.compat import IncompatibleDraft
from specvlm.drafters import is_eagle_head, load_drafter
from specvlm.drafters.eagle import EagleHead
from specvlm.errors import SpecVLMError
from specvlm.inputs.testing import save_tiny_processor
from specvlm.loading import load_tokenizer
from specvlm.testbed import generate_world
from specvlm.train.data import load_examples

from helpers import model, reference

FAMILY = "qwen2_5_vl"
COMMON = [
    "--steps",
    "4",
    "--lr",
    "3e-3",
    "--num-frames",
    "4",
    "--compressor",
    "select",
    "--budget-weight",
    "0.1",
    "--noise",
    "0.1",
    "--no-progress",
    "--json",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_head_cli")
    target = model(FAMILY, init=0.3)
    target.save_pretrained(root / "target")
    save_tiny_processor(root / "target", FAMILY, target)
    generate_world(root / "world", 2, seed=0, frames=(16, 20), size=64)
    return root, target


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def straight(setup, tmp_path_factory):
    """One uninterrupted 4-step run (shared by the tests below)."""
    root, _ = setup
    out = tmp_path_factory.mktemp("straight") / "head"
    code = main(
        [
            "train-head",
            "--target",
            str(root / "target"),
            "--data",
            str(root / "world" / "train.jsonl"),
            "--out",
            str(out),
            *COMMON,
        ]
    )
    assert code == 0
    return out


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trains_on_the_world_and_writes_a_loadable_head(setup, straight):
    root, target = setup
    state = torch.load(straight / "trainer_state.pt", weights_only=False)
    assert state["step"] == 4 and len(state["losses"]) == 4 and sum(state["picks"].values()) == 4
    assert is_eagle_head(straight)
    head = load_drafter(str(straight), target)
    assert isinstance(head, EagleHead) and head.compressor.mode == "select"
    inputs = load_examples(root / "world", root / "target", num_frames=4)[0].inputs  # a world prompt...
    length = int((~load_examples(root / "world", root / "target", num_frames=4)[0].response).sum())
    prompt = {
        k: (v[:, :length] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v)
        for k, v in inputs.items()
    }  # ...without its answer
    out = SpeculativeGenerator(target, head, tree="dynamic").generate(**prompt, do_sample=False, max_new_tokens=12)
    assert out.token_ids == reference(target, prompt, do_sample=False, max_new_tokens=12)


def test_resume_equals_the_uninterrupted_run(setup, straight, tmp_path, capsys):
    root, _ = setup
    args = ["train-head", "--target", root / "target", "--data", root / "world", "--out", tmp_path / "head"]
    first = ["--steps", "2", *COMMON[2:]]  # the same run, stopped after 2 steps
    assert run(capsys, *args, *first, "--save-every", "1")[0] == 0
    (tmp_path / "head" / "trainer_state.pt").unlink()  # "interrupted": only checkpoints remain
    code, out, err = run(capsys, *args, *COMMON, "--resume", "--cache-target")  # caching changes nothing
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    a = torch.load(straight / "trainer_state.pt", weights_only=False)
    b = torch.load(tmp_path / "head" / "trainer_state.pt", weights_only=False)
    assert a["losses"] == b["losses"] and a["picks"] == b["picks"]
    from safetensors.torch import load_file

    assert same_weights(load_file(straight / "model.safetensors"), load_file(tmp_path / "head" / "model.safetensors"))


def test_bad_inputs_are_one_line_errors(setup, straight, tmp_path, capsys):
    root, _ = setup
    target, world = root / "target", root / "world" / "train.jsonl"
    rows = [json.loads(line) for line in world.read_text().splitlines()]
    bad = {
        "broken.jsonl": "{not json\n",
        "nomedia.jsonl": json.dumps(dict(rows[0], video="videos/missing.mp4")) + "\n",
        "noanswer.jsonl": json.dumps(dict(rows[0], conversation=rows[0]["conversation"][:1])) + "\n",
        "data.txt": "hello\n",
    }
    for name, text in bad.items():
        (root / "world" / name).write_text(text)
    cases = [  # (extra arguments, expected part of the message)
        (["--data", tmp_path / "none.jsonl"], "does not exist"),
        (["--data", root / "world" / "broken.jsonl"], "line 1: malformed JSON"),
        (["--data", root / "world" / "nomedia.jsonl"], "missing.mp4 does not exist"),
        (["--data", root / "world" / "noanswer.jsonl"], "assistant turn"),
        (["--data", root / "world" / "data.txt"], "must be a .jsonl"),
        (["--data", world, "--steps", "0"], "--steps must be >= 1"),
        (["--data", world, "--lr", "0"], "--lr must be > 0"),
        (["--data", world, "--compressor", "blur:3"], "unknown compressor branch"),
        (["--data", world, "--compressor", "conv:9"], "1..5"),
        (["--data", world, "--num-frames", "0"], "--num-frames"),
        (["--data", world, "--resume"], "nothing to resume"),
        (["--data", world, "--resume", "--overwrite"], "give one"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, "train-head", "--target", target, "--out", tmp_path / "fresh", *extra)
        assert code == 2 and message in err and err.count("\n") == 1, (extra, err)
    code, _, err = run(capsys, "train-head", "--target", tmp_path / "nope", "--data", world, "--out", tmp_path / "x")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    # an existing run is never overwritten silently, nor resumed with other settings
    code, _, err = run(capsys, "train-head", "--target", target, "--data", world, "--out", straight, *COMMON)
    assert code == 2 and "already holds" in err and "--resume" in err
    changed = [a if a != "3e-3" else "1e-3" for a in COMMON]
    code, _, err = run(
        capsys, "train-head", "--target", target, "--data", world, "--out", straight, *changed, "--resume"
    )
    assert code == 2 and "other settings" in err and "lr" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = run(
        capsys, "train-head", "--target", target, "--data", world, "--out", tmp_path / "mine", "--overwrite"
    )
    assert code == 2 and "refusing" in err and (tmp_path / "mine" / "notes.txt").exists()


def test_load_drafter(setup, straight, tmp_path):
    root, target = setup
    assert load_drafter("self", target) == "self"
    assert load_drafter("none", target) is None  # no drafter: target-only decoding
    tokenizer = load_tokenizer(str(root / "target"))
    draft = load_drafter(str(root / "target"), target, tokenizer=tokenizer)  # a model folder: a draft VLM
    assert type(draft) is type(target) and not is_eagle_head(root / "target")
    with pytest.raises(SpecVLMError, match="is not a head folder"):
        load_drafter(str(root / "target"), target, kind="head")
    with pytest.raises(SpecVLMError, match="pass it as --head"):
        load_drafter(str(straight), target, kind="model")
    with pytest.raises(SpecVLMError, match="does not match"):  # trained for another target
        load_drafter(str(straight), model("llava_onevision"))
    with pytest.raises(SpecVLMError, match="does not exist"):
        load_drafter(str(tmp_path / "nothing"), target, kind="head")
    other = tmp_path / "onevision"  # a draft model of another family: loaded (it reads its own draft_inputs)
    model("llava_onevision").save_pretrained(other)
    assert load_drafter(str(other), target).config.model_type == "llava_onevision"


def fake_tokenizer(vocab: dict):
    """All that `check_tokenizers` reads of a tokenizer."""
    return SimpleNamespace(get_vocab=lambda: vocab)


def test_load_drafter_checks_tokenizers_before_loading_weights(setup, monkeypatch):
    root, target = setup
    vocab = load_tokenizer(str(root / "target")).get_vocab()
    a, b = sorted(vocab)[:2]
    swapped = fake_tokenizer({**vocab, a: vocab[b], b: vocab[a]})  # two ids exchanged

    def no_weights(*args, **kwargs):
        raise AssertionError("the draft's weights were loaded before its tokenizer was checked")

    monkeypatch.setattr("specvlm.loading.load_model", no_weights)
    with pytest.raises(IncompatibleDraft, match="2 with different ids"):  # the draft folder's own tokenizer
        load_drafter(str(root / "target"), target, tokenizer=swapped)
    with pytest.raises(IncompatibleDraft, match="2 with different ids"):  # one the caller already has
        load_drafter(str(root / "target"), target, tokenizer=fake_tokenizer(vocab), draft_tokenizer=swapped)


def test_multi_turn_records_mask_every_answer(setup):
    root, _ = setup
    row = json.loads((root / "world" / "train.jsonl").read_text().splitlines()[0])
    row["conversation"] += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "It stops."}]
    (root / "world" / "multi.jsonl").write_text(json.dumps(row) + "\n")
    data = load_examples(root / "world" / "multi.jsonl", root / "target", num_frames=4)
    example, tok = data[0], data.tokenizer
    ids, response = example.inputs["input_ids"][0], example.response
    starts = (response[1:] & ~response[:-1]).nonzero().flatten() + 1
    assert len(starts) == 2
    first, second = row["conversation"][1]["content"], "It stops."
    assert tok.decode(ids[response]) == f"{first}<|im_end|>{second}<|im_end|>"
    assert tok.decode(ids[int(starts[0]) : int(starts[1])]).startswith(first)
    assert "<|im_start|>user\nAnd then?<|im_end|>\n<|im_start|>assistant\n" in tok.decode(ids[~response])


def test_summary_reports_the_first_and_last_losses_observed(setup, tmp_path, capsys):
    """With few steps the 10-step means coincide; the summary names the first and last steps' losses instead (what
    the progress bar showed), and the JSON has both."""
    root, _ = setup
    argv = [
        "train-head",
        "--target",
        root / "target",
        "--data",
        root / "world" / "train.jsonl",
        *[a for a in COMMON if a != "--json"],
    ]
    code, out, _ = run(capsys, *argv, "--out", tmp_path / "a", "--json")
    assert code == 0
    summary = json.loads(out)
    state = torch.load(tmp_path / "a" / "trainer_state.pt", weights_only=False)
    assert (summary["loss_first"], summary["loss_last"]) == (state["losses"][0], state["losses"][-1])
    assert summary["loss_first"] != summary["loss_last"]
    code, out, _ = run(capsys, *argv, "--out", tmp_path / "b")  # the same seeded run, as text
    assert code == 0
    assert f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f} (first -> last step)" in out, out


def test_train_head_arch_eagle3_then_generate_with_it(tmp_path, capsys, media):
    target = model("qwen2_5_vl", init=0.3)
    target.save_pretrained(tmp_path / "target")
    save_tiny_processor(tmp_path / "target", "qwen2_5_vl", target)
    out = tmp_path / "head"
    code = main(
        [
            "train-head",
            "--tiny-smoke",
            "qwen2_5_vl",
            "--tiny-examples",
            "4",
            "--arch",
            "eagle3",
            "--draft-vocab",
            "300",
            "--ttt-steps",
            "2",
            "--steps",
            "2",
            "--out",
            str(out),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((out / "config.json").read_text())["draft_vocab_size"] == 300
    argv = [
        "generate",
        "--target",
        str(tmp_path / "target"),
        "--image",
        str(media / "picture.png"),
        "--prompt",
        "Describe it.",
        "--max-new-tokens",
        "8",
        "--json",
    ]
    assert main([*argv, "--head", str(out)]) == 0  # the tiny-smoke target has the same shape as this one
    ours = json.loads(capsys.readouterr().out)["token_ids"]
    assert main([*argv, "--draft", "none"]) == 0
    assert ours == json.loads(capsys.readouterr().out)["token_ids"]
    for bad, message in (
        (["--draft-vocab", "10"], "--draft-vocab is an EAGLE-3 option"),
        (["--arch", "eagle3", "--compressor", "select"], "an eagle3 head reads all"),
    ):
        code = main(["train-head", "--tiny-smoke", "qwen2_5_vl", "--steps", "1", "--out", str(tmp_path / "x"), *bad])
        assert code != 0 and message in capsys.readouterr().err
