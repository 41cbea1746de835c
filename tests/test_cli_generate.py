"""`specvlm generate` end to end: model folders on disk, a self-made mp4 and PNG, output equal to the target's own
greedy output; and every bad input a user can give is one line on stderr with a non-zero exit."""

import argparse
import json

import pytest
import torch
from transformers import AutoModelForImageTextToText

from specvlm.cli import main
from specvlm.inputs import add_input_arguments, inputs_from_args

from helpers import reference


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _expected(folder, media_args: list[str], max_new_tokens: int) -> list[int]:
    parser = argparse.ArgumentParser()
    add_input_arguments(parser)
    args = parser.parse_args(media_args)
    target = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    inputs = inputs_from_args(args, folder, target.config)
    return reference(target, inputs, max_new_tokens=max_new_tokens, do_sample=False)


CASES = [  # target, draft, inputs, extra options
    ("qwen", "self", "video", ["--pruning", "specvlm", "--visual-keep-ratio", "0.3"]),
    ("qwen", "qwen_draft", "image", ["--tree", "dynamic"]),
    ("onevision", "onevision_draft", "video", ["--pruning", "uniform", "--visual-keep-ratio", "0.5"]),
    ("onevision", "self", "image", ["--tree", "chain", "--pruning", "none"]),  # the unpruned self-draft, asked for
    ("qwen", "onevision_draft", "video", ["--tree", "chain"]),  # another family's draft: reads its own inputs
    ("qwen", "onevision_draft_bpe", "image", []),  # ... and has another vocabulary: bridged through text
]


@pytest.mark.parametrize("target,draft,kind,extra", CASES)
def test_generate_equals_target_greedy(capsys, folders, media, target, draft, kind, extra):
    media_args = (
        ["--video", media / "clip.mp4", "--num-frames", "6"] if kind == "video" else ["--image", media / "picture.png"]
    ) + ["--prompt", "What happens here?"]
    media_args = [str(a) for a in media_args]
    draft_arg = draft if draft == "self" else folders[draft]
    code, out, err = _run(
        capsys,
        "generate",
        "--target",
        folders[target],
        "--draft",
        draft_arg,
        *media_args,
        "--max-new-tokens",
        12,
        "--json",
        *extra,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["token_ids"] == _expected(folders[target], media_args, 12)
    assert result["stats"]["new_tokens"] == 12
    assert result["inputs"]["frames"] == (6 if kind == "video" else 0)


@pytest.mark.parametrize("target,draft", [("qwen", "qwen_draft"), ("onevision", "onevision_draft")])
def test_a_draft_view_reads_fewer_frames_and_the_answer_stays_the_targets(capsys, folders, media, target, draft):
    """--draft-num-frames: the draft reads 2 of the clip's frames where the target reads 6 (issue 21's sparse ->
    dense view); the answer is still the target's own."""
    media_args = ["--video", str(media / "clip.mp4"), "--num-frames", "6", "--prompt", "What happens here?"]
    view = ["--max-new-tokens", "12", "--draft-num-frames", "2"]
    result = _json(capsys, "--target", folders[target], "--draft", folders[draft], *media_args, *view)
    assert result["token_ids"] == _expected(folders[target], media_args, 12)
    stats = result["stats"]
    assert stats["draft_prompt_tokens"] < stats["target_prompt_tokens"] and result["inputs"]["frames"] == 6


def test_streams_text_and_prints_a_summary(capsys, folders, media):
    code, out, err = _run(
        capsys,
        "generate",
        "--target",
        folders["qwen"],
        "--draft",
        "self",
        "--video",
        media / "clip.mp4",
        "--prompt",
        "Describe it.",
        "--max-new-tokens",
        8,
    )
    assert code == 0, err
    assert out.endswith("\n") and "Traceback" not in err
    assert "loading target" in err and "decoded 8 of 24 frames" in err
    assert "8 tokens, τ=" in err.strip().splitlines()[-1]


def test_a_draft_with_its_own_vocabulary_says_it_is_bridged(capsys, folders, media):
    draft = folders["onevision_draft_bpe"]
    argv = ["--image", media / "picture.png", "--prompt", "Describe it.", "--max-new-tokens", 4]
    code, _, err = _run(capsys, "generate", "--target", folders["qwen"], "--draft", draft, *argv)
    assert code == 0, err
    assert "the draft has its own vocabulary" in err
    code, _, err = _run(capsys, "generate", "--target", folders["qwen"], "--draft", folders["onevision_draft"], *argv)
    assert code == 0 and "own vocabulary" not in err


def _bad_inputs(folders, media, tmp):
    q = folders["qwen"]
    clip, png = media / "clip.mp4", media / "picture.png"
    small = tmp / "small_context"
    small.mkdir()
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        if (q / name).exists():
            (small / name).write_bytes((q / name).read_bytes())
    config = json.loads((small / "config.json").read_text())
    config.setdefault("text_config", {})["max_position_embeddings"] = 40
    (small / "config.json").write_text(json.dumps(config))
    return {  # what is wrong -> (argv, a phrase the message must contain)
        "missing file": (["--target", q, "--video", tmp / "none.mp4", "--prompt", "Q"], "does not exist"),
        "directory": (["--target", q, "--video", tmp, "--prompt", "Q"], "is a directory"),
        "corrupt video": (["--target", q, "--video", media / "corrupt.mp4", "--prompt", "Q"], "cannot read video"),
        "unsupported format": (["--target", q, "--video", media / "notes.txt", "--prompt", "Q"], "unsupported"),
        "zero frames": (["--target", q, "--video", clip, "--num-frames", "0", "--prompt", "Q"], "--num-frames"),
        "negative frames": (["--target", q, "--video", clip, "--num-frames", "-3", "--prompt", "Q"], "--num-frames"),
        "missing model": (["--target", tmp / "nothing", "--image", png, "--prompt", "Q"], "does not exist"),
        "model is a file": (["--target", png, "--image", png, "--prompt", "Q"], "not a model folder"),
        "empty prompt": (["--target", q, "--image", png, "--prompt", "  "], "empty"),
        "no prompt": (["--target", q, "--image", png], "empty"),
        "too long": (
            ["--target", small, "--video", clip, "--num-frames", "24", "--prompt", "Q"],
            "max_position_embeddings",
        ),
        "draft view and pruning": (
            ["--target", q, "--draft", folders["qwen_draft"], "--video", clip, "--prompt", "Q"]
            + ["--draft-num-frames", "2", "--pruning", "specvlm"],
            "use one",
        ),
        "two draft samplings": (
            ["--target", q, "--draft", folders["qwen_draft"], "--video", clip, "--prompt", "Q"]
            + ["--draft-num-frames", "2", "--draft-fps", "1"],
            "not both",
        ),
        "no draft frames": (
            [
                "--target",
                q,
                "--draft",
                folders["qwen_draft"],
                "--video",
                clip,
                "--prompt",
                "Q",
                "--draft-num-frames",
                "0",
            ],
            "--draft-num-frames must be positive",
        ),
        "max-new-tokens": (
            ["--target", q, "--image", png, "--prompt", "Q", "--max-new-tokens", "0"],
            "--max-new-tokens",
        ),
        **{
            f"option {' '.join(option)}": (
                ["--target", q, "--draft", "self", "--image", png, "--prompt", "Q", *option],
                flag,
            )
            for option, flag in BAD_OPTIONS
        },
    }


BAD_OPTIONS = [  # decoding / pruning options out of range -> the flag the message must name
    (["--num-draft-tokens", "0"], "--num-draft-tokens"),
    (["--tree", "dynamic", "--tree-total-tokens", "1"], "--tree-total-tokens"),
    (["--tree-depth", "-2"], "--tree-depth"),
    (["--temperature", "0.7", "--top-p", "1.5"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
    (["--pruning", "specvlm", "--visual-keep-ratio", "0"], "--visual-keep-ratio"),
    (["--pruning", "none", "--visual-keep-ratio", "0.5"], "--pruning"),
    (["--pruning", "specvlm", "--stage1-mass", "-1"], "--stage1-mass"),
    (["--draft-num-frames", "2"], "--draft-num-frames"),  # a view for a draft model; here the target drafts
]


def test_bad_input_is_one_line_and_a_nonzero_exit(capsys, folders, media, tmp_path):
    for what, (argv, phrase) in _bad_inputs(folders, media, tmp_path).items():
        code, out, err = _run(capsys, "generate", *argv)
        assert code == 2, what
        lines = err.strip().splitlines()  # progress lines may come first ("decoding ..."), then one error line
        assert lines[-1].startswith("specvlm: error: ") and phrase in lines[-1], (what, err)
        assert "Traceback" not in err and sum("error" in line for line in lines) == 1, (what, err)
        assert out == "", what


def test_bad_options_fail_before_any_weights_load(capsys, folders, media):
    for option, flag in BAD_OPTIONS:
        code, _, err = _run(
            capsys,
            "generate",
            "--target",
            folders["qwen"],
            "--draft",
            "self",
            "--image",
            media / "picture.png",
            "--prompt",
            "Q",
            *option,
        )
        assert code == 2 and flag in err and "loading target" not in err, (option, err)


def test_every_command_has_help(capsys):
    for command in (["generate"], ["demo"], ["train-head"], ["bench"], ["testbed", "build"], []):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith("usage: specvlm"), command


def test_eagle_head_drafts_and_output_stays_the_targets(capsys, folders, media, tmp_path):
    from specvlm.drafters.eagle import EagleHead

    target = AutoModelForImageTextToText.from_pretrained(folders["qwen"], dtype=torch.float32).eval()
    EagleHead.init_for(target, seed=0).save_pretrained(tmp_path / "head")
    media_args = ["--video", str(media / "clip.mp4"), "--num-frames", "4", "--prompt", "What happens?"]
    expected = _expected(folders["qwen"], media_args, 10)
    for how in (["--head", tmp_path / "head"], ["--draft", tmp_path / "head"]):  # --draft detects a head folder
        code, out, err = _run(
            capsys, "generate", "--target", folders["qwen"], *how, *media_args, "--max-new-tokens", 10, "--json"
        )
        assert code == 0, err
        assert json.loads(out)["token_ids"] == expected
    code, _, err = _run(
        capsys,
        "generate",
        "--target",
        folders["qwen"],
        "--head",
        tmp_path / "head",
        "--draft",
        folders["qwen_draft"],
        *media_args,
    )
    assert code == 2 and "not both" in err
    code, _, err = _run(capsys, "generate", "--target", folders["qwen"], "--head", folders["qwen_draft"], *media_args)
    assert code == 2 and "is not a head folder" in err
    code, _, err = _run(
        capsys,
        "generate",
        "--target",
        folders["onevision"],
        "--head",
        tmp_path / "head",
        "--image",
        str(media / "picture.png"),
        "--prompt",
        "Q",
    )
    assert code == 2 and "EagleHead" in err.strip().splitlines()[-1], err


def _json(capsys, *argv) -> dict:
    code, out, err = _run(capsys, "generate", *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_draft_none_is_the_target_alone_with_the_same_summary(capsys, folders, media):
    media_args = ["--video", str(media / "clip.mp4"), "--num-frames", "6", "--prompt", "What happens here?"]
    result = _json(capsys, "--target", folders["qwen"], "--draft", "none", *media_args, "--max-new-tokens", 10)
    assert result["token_ids"] == _expected(folders["qwen"], media_args, 10)
    stats = result["stats"]
    assert stats["mode"] == "target-only" and stats["rounds"] == 0 and stats["new_tokens"] == 10
    assert stats["visual_tokens"] == result["inputs"]["visual_tokens"] > 0 and stats["pruning"] == "none"
    code, out, err = _run(
        capsys, "generate", "--target", folders["qwen"], "--draft", "none", *media_args, "--max-new-tokens", 6
    )
    assert code == 0 and out.endswith("\n") and "no draft: target-only decoding" in err
    assert err.strip().splitlines()[-1].startswith("6 tokens, target-only (no draft), "), err


def test_no_draft_given_is_the_target_alone_and_says_how_to_speed_up(capsys, folders, media):
    """Without --draft or --head nothing drafts (no default draft is known to pay: DESIGN, "Defaults"): the target's
    own generate, its summary, and one line naming --draft / --head. Pruning options then have nothing to prune."""
    media_args = ["--video", str(media / "clip.mp4"), "--num-frames", "6", "--prompt", "What happens here?"]
    code, out, err = _run(capsys, "generate", "--target", folders["qwen"], *media_args, "--max-new-tokens", 6)
    assert code == 0, err
    assert "no --draft or --head given" in err and "--draft <a smaller model" in err
    assert err.strip().splitlines()[-1].startswith("6 tokens, target-only (no draft), "), err
    assert _json(capsys, "--target", folders["qwen"], *media_args, "--max-new-tokens", 6)["token_ids"] == _expected(
        folders["qwen"], media_args, 6
    )
    for pruning in (["--pruning", "specvlm"], ["--pruning", "uniform", "--visual-keep-ratio", "0.5"]):
        code, out, err = _run(capsys, "generate", "--target", folders["qwen"], *media_args, *pruning)
        assert code == 2 and "no draft is given" in err and "--draft self" in err, err


def test_self_drafts_from_a_specvlm_pruned_view_unless_told_otherwise(capsys, folders, media):
    """--draft self without --pruning prunes with SpecVLM at keep 0.1 (an unpruned self-draft cannot be faster than
    the target); --pruning none still gives the unpruned one. Both report the visual tokens the same way."""
    media_args = ["--video", str(media / "clip.mp4"), "--num-frames", "6", "--prompt", "What happens here?"]
    expected = _expected(folders["qwen"], media_args, 8)
    pruned = _json(capsys, "--target", folders["qwen"], "--draft", "self", *media_args, "--max-new-tokens", 8)
    unpruned = _json(
        capsys, "--target", folders["qwen"], "--draft", "self", "--pruning", "none", *media_args, "--max-new-tokens", 8
    )
    assert pruned["token_ids"] == unpruned["token_ids"] == expected
    visual = pruned["inputs"]["visual_tokens"]
    assert pruned["stats"]["pruning"] == "specvlm" and pruned["stats"]["visual_tokens"] == visual
    assert pruned["stats"]["kept_visual_tokens"] == int(visual * 0.1)
    assert unpruned["stats"]["pruning"] == "none"
    assert unpruned["stats"]["visual_tokens"] == unpruned["stats"]["kept_visual_tokens"] == visual
    head_default = _json(
        capsys, "--target", folders["qwen"], "--draft", folders["qwen_draft"], *media_args, "--max-new-tokens", 4
    )
    assert head_default["stats"]["pruning"] == "none"  # a draft model keeps the old default


@pytest.mark.parametrize("draft", ["qwen_draft", "none"])
def test_seed_makes_sampling_reproducible(capsys, folders, media, draft):
    args = [
        "--target",
        folders["qwen"],
        "--draft",
        folders.get(draft, draft),
        "--image",
        media / "picture.png",
        "--prompt",
        "Q",
        "--max-new-tokens",
        12,
        "--temperature",
        "1.5",
    ]
    runs = {seed: [_json(capsys, *args, "--seed", seed)["token_ids"] for _ in range(2)] for seed in (1, 2)}
    assert runs[1][0] == runs[1][1] and runs[2][0] == runs[2][1]
    assert runs[1][0] != runs[2][0]  # a tiny random model at temperature 1.5: 12 tokens never coincide
