"""`specvlm testbed build`: a miniature build end to end, determinism (two builds, identical tensors), CLI errors,
and the bundled checkpoints."""

import contextlib
import json
from dataclasses import replace

import pytest
import torch

from specvlm.cli import main
from specvlm.engine.generator import SpeculativeGenerator
from specvlm.errors import SpecVLMError
from specvlm.numerics import flush_denormal_enabled
from specvlm.testbed.build import build_testbed, global_torch_state, prepare_out
from specvlm.testbed.recipe import FAMILIES, DenseStage, miniature

MINI = miniature()


@pytest.fixture(scope="module")
def mini_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    return out, build_testbed(out, minutes=1, seed=0, recipe=MINI, progress=False, threads=1)


def load(folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()


def sample_inputs(folder, video, question="Describe the video in detail.", num_frames=None):
    from specvlm.inputs import build_inputs, load_processor, load_video, sampler

    processor = load_processor(folder)
    frames = num_frames or processor.video_processor.num_frames
    clip = load_video(video, sample_indices_fn=sampler(frames, sample_frames=processor.video_processor.sample_frames))
    return build_inputs(processor, question, video=clip)


def greedy_equal(target_dir, draft_dir, video, max_new_tokens):
    target, draft = load(target_dir), load(draft_dir)
    inputs = sample_inputs(target_dir, video)
    with torch.no_grad():
        plain = target.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out = SpeculativeGenerator(target, draft).generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out.token_ids, plain[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_mini_build_folders_load_and_speculate_losslessly(mini_build, family):
    from transformers import AutoTokenizer

    out, report = mini_build
    target_dir, draft_dir = out / "models" / family / "target", out / "models" / family / "draft"
    for folder in (target_dir, draft_dir):
        assert {
            "config.json",
            "model.safetensors",
            "generation_config.json",
            "metrics.json",
            "video_preprocessor_config.json",
        } <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
        assert len(AutoTokenizer.from_pretrained(folder)) == MINI.vocab
    metrics = json.loads((target_dir / "metrics.json").read_text())
    assert metrics["pair"]["static_tree"]["equal_to_target"] and metrics["accuracy"] is not None
    fam = report["families"][family]
    assert fam["visual_tokens"] == fam["expected_visual_tokens"]
    video = out / "samples" / json.loads((out / "samples" / "samples.jsonl").read_text().splitlines()[0])["video"]
    spec, plain = greedy_equal(target_dir, draft_dir, video, 6)
    assert spec == plain


def test_same_seed_same_tokenizer_and_first_loss(mini_build):
    from specvlm.inputs import load_processor
    from specvlm.testbed import build_text_corpus
    from specvlm.testbed.recipe import make_model, train_bpe
    from specvlm.testbed.train import Formatter, load_clips, train

    out, report = mini_build
    corpus = build_text_corpus(out / "world" / "train.jsonl")
    assert train_bpe(corpus, MINI.vocab) == train_bpe(corpus, MINI.vocab)
    folder = out / "models" / "qwen2_5_vl" / "target"
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    assert tokenizer["model"]["vocab"] == json.loads(train_bpe(corpus, MINI.vocab))["model"]["vocab"]
    processor = load_processor(folder)
    clips = load_clips(out / "world", "train", processor, MINI.num_frames, limit=2)
    first = [
        train(make_model(MINI, "qwen2_5_vl", "draft", seed=5), clips, Formatter(processor), 1, 1e-3, seed=3)[
            "first_loss"
        ]
        for _ in range(2)
    ]
    assert first[0] == first[1]
    assert (
        report["families"]["qwen2_5_vl"]["target"]["train"]["first_loss"]
        == json.loads((folder / "metrics.json").read_text())["train"]["first_loss"]
    )


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_probe_and_distillation_terms(mini_build, family):
    """The recipe's two extra loss terms do what they say: the probe adds exactly weight x its loss on the visual
    tokens' embeddings (every visual token labelled, objects present), and distilling from the model itself with
    distill=1 leaves nothing (KL of a distribution with itself), with distill=0 the plain loss."""
    from specvlm.inputs import load_processor
    from specvlm.testbed.probe import VisualProbe
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import Formatter, example_loss, load_clips

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    fmt = Formatter(processor)
    clip = load_clips(out / "world", "train", processor, MINI.num_frames, limit=1)[0]
    assert clip.labels.shape == (clip.n_visual, 3)  # (what they hold: tests/test_testbed_probe.py)
    model = make_model(MINI, family, "target", seed=4).eval()
    torch.manual_seed(0)
    probe = VisualProbe(model.config.get_text_config().hidden_size)
    order = list(range(len(clip.turns)))
    plain = example_loss(model, fmt, clip, order, autocast=False)
    with_probe = [
        example_loss(model, fmt, clip, order, autocast=False, probe=probe, probe_weight=w) - plain for w in (1.0, 2.0)
    ]
    assert with_probe[0] > 0 and torch.allclose(with_probe[1], 2 * with_probe[0])
    assert example_loss(model, fmt, clip, order, autocast=False, teacher=model, distill=1.0).abs() < 1e-5
    assert torch.allclose(example_loss(model, fmt, clip, order, autocast=False, teacher=model, distill=0.0), plain)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_vision_pretraining_trains_the_tower_alone(mini_build, family):
    """`pretrain_vision` lowers the probe's loss on the clips it sees, changes the vision tower and projector, and
    leaves every language-model weight as it was (no LM in the loop); `quiet_background` reaches the probe's loss
    (`probe.background_energy`, whose effect its own test checks)."""
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import load_clips, pretrain_vision, probe_accuracy

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    clips = load_clips(out / "world", "train", processor, MINI.num_frames)
    model = make_model(MINI, family, "target", seed=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    probe, result = pretrain_vision(model, clips, steps=100, lr=1e-2, seed=0, batch=1)
    curve = result["probe_loss_curve"]
    assert result["steps"] == 100 and curve[0] > 0 and curve[-1] < curve[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    language = {n for n in before if "language_model" in n or "lm_head" in n}
    assert changed and not changed & language
    assert any("visual" in n or "vision_tower" in n for n in changed)
    assert any("merger" in n or "projector" in n for n in changed)
    scores = probe_accuracy(model, probe, clips)
    assert scores["cells"] == sum(int((c.labels[:, 1] > 0).sum()) for c in clips) > 0 and 0 <= scores["color"] <= 1
    quiet = make_model(MINI, family, "target", seed=4)  # the same start, the background's energy in the loss too
    quiet_probe, _ = pretrain_vision(quiet, clips, steps=2, lr=1e-2, seed=0, batch=1, quiet_background=1.0)
    loud = make_model(MINI, family, "target", seed=4)
    loud_probe, _ = pretrain_vision(loud, clips, steps=2, lr=1e-2, seed=0, batch=1)
    assert (quiet_probe.quiet, loud_probe.quiet) == (1.0, 0.0)  # the probe carries it into the language steps
    moved = [n for n, p in quiet.named_parameters() if not torch.equal(p, dict(loud.named_parameters())[n])]
    assert moved and not any("language_model" in n for n in moved)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_freeze_vision_trains_the_language_model_alone(mini_build, family):
    """`train(freeze_vision=True)` moves the language model and leaves the vision tower and projector exactly as
    they were (the probe is off: nothing it could train is left), and gives the parameters back trainable."""
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import Formatter, load_clips, train, vision_parameters

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    clips = load_clips(out / "world", "train", processor, MINI.num_frames, limit=2)
    model = make_model(MINI, family, "target", seed=4)
    vision = {n for n, _ in vision_parameters(model)}
    assert vision and any("lm_head" in n for n, _ in model.named_parameters() if n not in vision)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, clips, Formatter(processor), 3, 1e-2, seed=0, probe_weight=1.0, freeze_vision=True)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and not changed & vision and result["probe_loss_curve"] == []
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_single_turn_batches_are_the_mean_of_their_conversations(mini_build, family):
    """`example_loss(single_turns=True)` over the caption and a question, one right-padded batch, is the mean of
    the two one-turn conversations' losses computed alone (padding changes nothing), with and without a teacher;
    with more questions the caption keeps half (`turn_shares`, as in a pack)."""
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import Formatter, example_loss, load_clips

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    fmt = Formatter(processor)
    clip = load_clips(out / "world", "train", processor, MINI.num_frames, limit=1, pixel_dtype=torch.float32)[0]
    model, teacher = make_model(MINI, family, "target", seed=4).eval(), make_model(MINI, family, "draft", 5).eval()
    caption, question = 0, len(clip.turns) - 1
    assert len(fmt.example(clip, [caption])[0]) != len(fmt.example(clip, [question])[0])  # so one row is padded
    other = len(clip.turns) - 2
    for kw in ({}, {"teacher": teacher, "distill": 0.8}):
        alone = [example_loss(model, fmt, clip, [k], autocast=False, **kw) for k in (caption, question, other)]
        both = example_loss(model, fmt, clip, [caption, question], autocast=False, single_turns=True, **kw)
        torch.testing.assert_close(both, (alone[0] + alone[1]) / 2, rtol=1e-5, atol=1e-6)
        # as in a pack, the caption weighs half and the questions share the other half
        three = example_loss(model, fmt, clip, [question, caption, other], autocast=False, single_turns=True, **kw)
        torch.testing.assert_close(three, alone[0] / 2 + (alone[1] + alone[2]) / 4, rtol=1e-5, atol=1e-6)
        two = example_loss(model, fmt, clip, [question, other], autocast=False, single_turns=True, **kw)
        torch.testing.assert_close(two, (alone[1] + alone[2]) / 2, rtol=1e-5, atol=1e-6)  # no caption: all theirs


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_shared_video_rows_are_their_one_turn_conversations(mini_build, family):
    """`Formatter.shared` holds the video once and each turn after it: every turn's loss is the one of its own
    one-turn conversation (`example_loss(shared_video=True)` equals the padded batch of them, with and without a
    teacher), and the sequence is shorter than the batch by all but one copy of the prompt through the video."""
    from specvlm.adapters import adapter_for
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import Formatter, example_loss, load_clips

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    fmt = Formatter(processor)
    clip = load_clips(out / "world", "train", processor, MINI.num_frames, limit=1, pixel_dtype=torch.float32)[0]
    model, teacher = make_model(MINI, family, "target", seed=4).eval(), make_model(MINI, family, "draft", 5).eval()
    order = [3, 0, len(clip.turns) - 1, 1]
    for kw in ({}, {"teacher": teacher, "distill": 0.8}):
        batch = example_loss(model, fmt, clip, order, autocast=False, single_turns=True, **kw)
        shared = example_loss(model, fmt, clip, order, autocast=False, single_turns=True, shared_video=True, **kw)
        torch.testing.assert_close(shared, batch, rtol=1e-5, atol=1e-6)
    rows = [fmt.example(clip, [k]) for k in order]
    inputs, target, _ = fmt.shared(clip, rows, adapter_for(model))
    assert inputs["input_ids"].shape[1] == target.shape[1] < sum(len(r[0]) for r in rows) - 3 * clip.n_visual
    assert int((target != -100).sum()) == sum(sum(1 for x in r[1] if x != -100) for r in rows)
    with pytest.raises(ValueError, match="no prompt prefix through the video"):
        fmt.shared(clip, [fmt.example(clip, [k], video=False) for k in order], adapter_for(model))


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_shared_video_keeps_only_the_visual_tokens_asked(mini_build, family):
    """`Formatter.pruned(joined(...), keep)` gives every kept token the logits it has in the whole sequence when the
    dropped visual tokens are masked out instead (same positions, nothing attends to them); keeping all is the
    whole."""
    from specvlm.adapters import adapter_for
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import make_model
    from specvlm.testbed.train import Formatter, load_clips

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    fmt = Formatter(processor)
    clip = load_clips(out / "world", "train", processor, MINI.num_frames, limit=1, pixel_dtype=torch.float32)[0]
    model = make_model(MINI, family, "target", seed=4).eval()
    adapter = adapter_for(model)
    rows = [fmt.example(clip, [k]) for k in (2, 0, 1)]
    whole, target, _ = fmt.shared(clip, rows, adapter)
    with torch.no_grad():
        logits = model(**whole).logits
        all_kept, all_target, _ = fmt.pruned(fmt.joined(clip, rows, adapter), torch.arange(clip.n_visual), adapter)
        torch.testing.assert_close(model(**all_kept).logits, logits, rtol=1e-4, atol=1e-5)
        assert torch.equal(all_target, target)
        keep = torch.arange(0, clip.n_visual, 3)
        some, some_target, _ = fmt.pruned(fmt.joined(clip, rows, adapter), keep, adapter)
        visual = (whole["input_ids"][0] == fmt.video_id).nonzero().flatten()
        dropped = visual[torch.ones(clip.n_visual, dtype=torch.bool).index_fill_(0, keep, False)]
        masked = dict(whole, attention_mask=whole["attention_mask"].clone())
        masked["attention_mask"][..., dropped] = torch.finfo(torch.float32).min
        rows_kept = torch.ones(whole["input_ids"].shape[1], dtype=torch.bool).index_fill_(0, dropped, False)
        assert some["inputs_embeds"].shape[1] == int(rows_kept.sum()) == some_target.shape[1]
        torch.testing.assert_close(model(**some).logits, model(**masked).logits[:, rows_kept], rtol=1e-4, atol=1e-5)
        assert torch.equal(some_target, target[:, rows_kept])


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_dense_step_distils_from_a_teacher_of_another_width(mini_build, family):
    """A draft's dense step (`keep`) feeds embeddings, not ids: the teacher, wider and with its own tower, scores
    the same kept tokens from its own embeddings (a draft narrower than its target once crashed the build here)."""
    from specvlm.adapters import adapter_for
    from specvlm.inputs import load_processor
    from specvlm.testbed.recipe import Arch, make_model
    from specvlm.testbed.train import Formatter, example_loss, load_clips, turn_shares

    out, _ = mini_build
    processor = load_processor(out / "models" / family / "target")
    fmt = Formatter(processor)
    clip = load_clips(out / "world", "train", processor, MINI.num_frames, limit=1, pixel_dtype=torch.float32)[0]
    wide = replace(MINI, arch=dict(MINI.arch, target=Arch(64, 1, 2, 1, 24, 1)))
    teacher = make_model(wide, family, "target", seed=5).eval()
    student = make_model(MINI, family, "draft", seed=6).eval()
    order, keep = [2, 0, 1], torch.arange(0, clip.n_visual, 3)
    dense = dict(autocast=False, single_turns=True, shared_video=True, keep=keep)
    with torch.no_grad():
        alone = example_loss(student, fmt, clip, order, **dense)
        mixed = example_loss(student, fmt, clip, order, teacher=teacher, distill=0.5, **dense)
        shares = turn_shares([clip.turns[k][2] is None for k in order])
        rows = [
            (i, labels, [w * share for w in weights])
            for (i, labels, weights), share in zip((fmt.example(clip, [k]) for k in order), shares)
        ]
        mine, target, weights = fmt.pruned(fmt.joined(clip, rows, adapter_for(student)), keep, adapter_for(student))
        theirs = fmt.pruned(fmt.joined(clip, rows, adapter_for(teacher)), keep, adapter_for(teacher))[0]
        n = target.shape[1]
        log_p = torch.log_softmax(teacher(**theirs).logits[:, :n], -1)
        kl = (log_p.exp() * (log_p - torch.log_softmax(student(**mine).logits[:, :n], -1))).sum(-1)
    expected = 0.5 * alone + 0.5 * (kl * (target != -100) * weights).sum()
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-5)


def test_video_gap_is_zero_when_the_other_video_is_the_same(mini_build):
    """`validation_loss(another_video=True)` scores each clip's answers with the next clip's video: with a single
    clip that is its own (the gap is exactly 0), with two it is another and the loss changes; as packs and as
    one-turn conversations alike; per kind of turn too (`video_gap_by_kind`)."""
    from dataclasses import replace

    from specvlm.inputs import load_processor
    from specvlm.testbed.train import Formatter, load_clips, validation_loss

    out, _ = mini_build
    folder = out / "models" / "qwen2_5_vl" / "target"
    fmt = Formatter(load_processor(folder))
    model = load(folder)
    clips = load_clips(out / "world", "train", fmt.processor, MINI.num_frames, limit=2, pixel_dtype=torch.float32)
    for single in (False, True):
        own = validation_loss(model, clips[:1], fmt, single_turns=single)
        assert validation_loss(model, clips[:1], fmt, another_video=True, single_turns=single) == own
        assert validation_loss(model, clips, fmt, another_video=True, single_turns=single) != validation_loss(
            model, clips, fmt, single_turns=single
        )
    odd = replace(clips[1], n_visual=clips[1].n_visual + 1)
    with pytest.raises(ValueError, match="different visual token counts"):
        validation_loss(model, [clips[0], odd], fmt, another_video=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert isinstance(metrics["video_gap"], float)
    # per kind of turn: each kind's turns alone (the other video: the next clip that has that kind)
    from specvlm.testbed.build import video_gap_by_kind

    caption_keys = {"caption colours", "caption first colours", "caption places"}
    kinds = {t[3] for c in clips for t in c.turns} | caption_keys  # every clip has a caption
    first = dict.fromkeys({t[3] for t in clips[0].turns} | caption_keys, 0)
    assert video_gap_by_kind(model, clips[:1], fmt, True) == first
    both = video_gap_by_kind(model, clips, fmt, True)
    assert sorted(both) == sorted(kinds) and sorted(metrics["video_gap_by_kind"]) == sorted(
        {t[3] for c in load_clips(out / "world", "validation", fmt.processor, MINI.num_frames) for t in c.turns}
        | caption_keys
    )


def test_the_mean_answer_loss_of_some_tokens_counts_those_alone(mini_build):
    """`mean_answer_loss(counted=...)`: the mean over the answer tokens `counted` marks; every token gives the plain
    validation loss, none gives 0.0, the captions' colour words a loss of their own, and their first mentions another
    (the mean of a subset of `answer_token_losses`, summed by hand here)."""
    import functools

    from specvlm.inputs import load_processor
    from specvlm.testbed.train import (
        Formatter,
        among,
        answer_token_losses,
        caption_colour_ids,
        first_mentions,
        load_clips,
        mean_answer_loss,
        validation_loss,
    )
    from specvlm.testbed.world import COLORS

    out, _ = mini_build
    folder = out / "models" / "qwen2_5_vl" / "target"
    fmt = Formatter(load_processor(folder))
    model = load(folder)
    clips = load_clips(out / "world", "train", fmt.processor, MINI.num_frames, limit=2, pixel_dtype=torch.float32)
    every = list(range(model.config.get_text_config().vocab_size))
    scored = answer_token_losses(model, clips, fmt)
    plain = validation_loss(model, clips, fmt)
    assert mean_answer_loss(scored, functools.partial(among, every)) == pytest.approx(plain)
    assert mean_answer_loss(scored, functools.partial(among, [])) == 0.0
    colours = caption_colour_ids(fmt)
    assert colours == sorted(fmt.ids(f" {c}")[0] for c in COLORS)
    said = [i for c in clips for t in c.turns if t[3] == "caption" for i in fmt.ids(t[1]) if i in colours]
    assert said and len(set(said)) < len(said)  # some colour is said twice: the first mentions are fewer
    for counted in (among, first_mentions):
        marks = [counted(colours, target) for target, _ in scored]
        expected = sum(float(losses[m].sum()) for (_, losses), m in zip(scored, marks)) / sum(
            int(m.sum()) for m in marks
        )
        got = mean_answer_loss(scored, functools.partial(counted, colours))
        assert 0 < got == pytest.approx(expected, rel=1e-5)
    assert sum(int(first_mentions(colours, t).sum()) for t, _ in scored) < sum(
        int(among(colours, t).sum()) for t, _ in scored
    )


def test_first_mentions_marks_each_id_once_per_answer():
    """`first_mentions` on hand-made targets: the first occurrence of each listed id in each answer (a run between
    -100s), not its repeats in that answer, again in the next answer; ids not listed never."""
    from specvlm.testbed.train import first_mentions

    x = -100
    target = torch.tensor([x, 7, 5, 7, 9, 5, x, x, 5, 7, 7, x, 9])
    expected = torch.tensor([0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0], dtype=torch.bool)
    assert torch.equal(first_mentions([5, 7], target), expected)
    assert not first_mentions([], target).any()
    assert torch.equal(first_mentions([9], target), target == 9)  # 9 opens both answers it is in


def test_after_marks_the_ids_that_follow_a_given_one():
    """`after` on hand-made targets: a listed id right after `previous` in the same answer; not after another id, not
    as an answer's first token (its predecessor is the prompt's -100); ids not listed never."""
    from specvlm.testbed.train import after

    x, the, top, moves, left = -100, 3, 7, 4, 8
    target = torch.tensor([x, the, top, moves, left, the, left, x, top, the, top])
    expected = torch.tensor([0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
    assert torch.equal(after(the, [top, left], target), expected)
    assert not after(the, [], target).any() and not after(moves, [top], target).any()


def test_caption_places_are_the_place_words_after_the(mini_build):
    """`caption_place_ids` + `after` mark in each caption the first word of every place phrase, as many as the
    captions' place phrases ("at the top left", "in the centre", "the left edge") and never a direction ("moves
    left")."""
    import re

    from specvlm.inputs import load_processor
    from specvlm.testbed.language import LOCATION
    from specvlm.testbed.train import Formatter, after, caption_place_ids, load_clips

    out, _ = mini_build
    fmt = Formatter(load_processor(out / "models" / "qwen2_5_vl" / "target"))
    the, places = caption_place_ids(fmt)
    clips = load_clips(out / "world", "train", fmt.processor, MINI.num_frames, limit=4)
    for caption in (t[1] for c in clips for t in c.turns if t[3] == "caption"):
        ids = torch.tensor([-100, *fmt.ids(caption)])
        phrases = len(re.findall("|".join(LOCATION.values()), caption)) + caption.count(" edge")
        assert int(after(the, places, ids).sum()) == phrases > 0, caption


def test_bf16_training_computes_the_same_inside_the_builds_torch_state(mini_build, monkeypatch):
    """Where the CPU has bf16 units training runs under bf16 autocast, and the build wraps everything in
    `build_arithmetic`, whose own autocast(enabled=False) region is the outermost one: autocast keeps its bf16 copies
    of the weights until the outermost region exits, so every step's forward reused the first step's copies while
    AdamW moved the fp32 weights. A whole build then trained models whose saved weights answered nothing (validation
    CE ~180, '.' everywhere; issue 23's first world-3 build, on a machine with AMX) while their training loss fell.
    The steps must compute exactly what they compute outside the build's state."""
    from specvlm.inputs import load_processor
    from specvlm.testbed import train as training
    from specvlm.testbed.build import build_arithmetic
    from specvlm.testbed.recipe import make_model

    monkeypatch.setattr(training, "bf16_is_fast", lambda: True)  # bf16 autocast on any CPU (slow, but tiny here)
    out, _ = mini_build
    processor = load_processor(out / "models" / "qwen2_5_vl" / "target")
    clips = training.load_clips(out / "world", "train", processor, MINI.num_frames, limit=2)

    def trained(context):
        model = make_model(MINI, "qwen2_5_vl", "target", seed=6)
        with context:
            result = training.train(model, clips, training.Formatter(processor), 4, 5e-3, seed=1, warmup=0.0)
        return result["last_losses"], [p.detach().clone() for p in model.parameters()]

    plain_losses, plain = trained(contextlib.nullcontext())
    built_losses, built = trained(build_arithmetic(torch.get_num_threads()))
    assert built_losses == plain_losses and len(set(plain_losses)) == 4  # the steps learn, alike
    assert all(torch.equal(a, b) for a, b in zip(plain, built))


def test_curriculum_orders_the_turns(mini_build, monkeypatch):
    """What each training step sees: text steps without the video, then `question_steps` video steps on the
    questions only, then whole packs; with caption_first=1 every pack that has the caption starts with it."""
    from specvlm.inputs import load_processor
    from specvlm.testbed import train as train_module
    from specvlm.testbed.recipe import make_model

    out, _ = mini_build
    processor = load_processor(out / "models" / "qwen2_5_vl" / "target")
    clips = train_module.load_clips(out / "world", "train", processor, MINI.num_frames, limit=2)
    seen = []

    def spy(model, fmt, clip, order, autocast, video=True, **kw):
        seen.append(([clip.turns[k][2] is None for k in order], video))
        return sum(p.sum() for p in model.parameters()) * 0.0

    monkeypatch.setattr(train_module, "example_loss", spy)
    model = make_model(MINI, "qwen2_5_vl", "target", seed=4)
    train_module.train(
        model,
        clips,
        train_module.Formatter(processor),
        steps=6,
        lr=1e-3,
        seed=0,
        text_steps=2,
        question_steps=2,
        caption_first=1.0,
    )
    assert [video for _, video in seen] == [False, False, True, True, True, True]
    assert all(is_caption[0] and not any(is_caption[1:]) for is_caption, _ in seen[:2] + seen[4:])
    assert not any(any(is_caption) for is_caption, _ in seen[2:4])  # questions only

    # one-turn batches: the caption and questions drawn at random, up to `turns_per_step`; `kinds` filters the turns
    batches = []
    monkeypatch.setattr(
        train_module,
        "example_loss",
        lambda model, fmt, clip, order, autocast, single_turns=False, **kw: (
            batches.append(([clip.turns[k][3] for k in order], single_turns)) or spy(model, fmt, clip, order, autocast)
        ),
    )
    fmt = train_module.Formatter(processor)
    train_module.train(model, clips, fmt, steps=3, lr=1e-3, seed=0, turns_per_step=3)
    assert all(single and len(kinds) == 3 and kinds[0] == "caption" for kinds, single in batches)
    assert not any("caption" in kinds[1:] for kinds, _ in batches)
    batches.clear()
    train_module.train(model, clips, fmt, steps=3, lr=1e-3, seed=0, turns_per_step=3, kinds=("count", "color"))
    assert batches and all(kinds and set(kinds) <= {"count", "color"} for kinds, _ in batches)

    # `mixed_in` at `mix`: some steps train on those clips instead; at mix 0 the steps are those of no mixed_in
    drawn = []
    monkeypatch.setattr(
        train_module,
        "example_loss",
        lambda model, fmt, clip, order, autocast, **kw: drawn.append(clip.id) or spy(model, fmt, clip, order, autocast),
    )
    others = [replace(c, id=f"other-{c.id}") for c in clips]
    for mixed_in, mix in ((None, 0.0), (others, 0.0), (others, 0.5)):
        train_module.train(model, clips, fmt, steps=20, lr=1e-3, seed=0, mixed_in=mixed_in, mix=mix)
    alone, unmixed, mixed = drawn[:20], drawn[20:40], drawn[40:]
    assert alone == unmixed and not any(i.startswith("other-") for i in alone)
    assert 5 <= sum(i.startswith("other-") for i in mixed) <= 15

    # dense steps: the first `dense_steps` video steps keep only some visual tokens, then `dense_mix` of the others
    kept = []
    monkeypatch.setattr(
        train_module,
        "example_loss",
        lambda model, fmt, clip, order, autocast, keep=None, **kw: (
            kept.append(keep is not None) or spy(model, fmt, clip, order, autocast)
        ),
    )
    dense = dict(turns_per_step=2, shared_video=True, dense_steps=3)
    train_module.train(model, clips, fmt, steps=8, lr=1e-3, seed=0, text_steps=1, **dense)
    assert kept == [False, True, True, True, False, False, False, False]
    kept.clear()
    train_module.train(model, clips, fmt, steps=40, lr=1e-3, seed=0, **dict(dense, dense_steps=0), dense_mix=0.5)
    assert 10 <= sum(kept) <= 30
    with pytest.raises(ValueError, match="shared_video"):
        train_module.train(model, clips, fmt, steps=2, lr=1e-3, seed=0, dense_steps=1)
    with pytest.raises(ValueError, match="needs turns_per_step"):
        train_module.train(model, clips, fmt, steps=2, lr=1e-3, seed=0, shared_video=True, dense_steps=1)
    with pytest.raises(ValueError, match=r"no training clip has a turn of the kinds asked \(nothing\)"):
        train_module.train(model, clips, fmt, steps=2, lr=1e-3, seed=0, kinds=("nothing",))


def test_a_build_with_shared_video_and_dense_steps(tmp_path, monkeypatch):
    """The recipe's knobs reach the build: one-turn batches holding the video once; the video steps begin with the
    dense stages, each its own `train` on its kinds at its rate (the first on one-colour answers only), then the
    rest at `after_dense_lr` of the rate with half of them dense; the world is rendered on the recipe's background,
    which the models' metrics.json name (what the benchmarks render their test worlds on); the pair it saves
    speculates losslessly."""
    from specvlm.testbed import train as train_module
    from specvlm.testbed.assets import trained_texture

    stages, listed, real_train = [], [], train_module.train  # listed: asked "which colours" turns naming several

    def recorded(model, clips, fmt, steps, **kw):  # (steps, dense steps, dense mix, peak lr, kinds asked)
        asked = sorted({t[3] for c in clips for t in c.turns if t[3] in (kw.get("kinds") or (t[3],))})
        stages.append((steps, kw.get("dense_steps", 0), kw.get("dense_mix", 0.0), kw["lr"], asked))
        listed.append(sum(" and " in t[2] for c in clips for t in c.turns if t[3] == "colors" and t[3] in asked))
        return real_train(model, clips, fmt, steps, **kw)

    monkeypatch.setattr(train_module, "train", recorded)
    recipe = replace(
        MINI,
        steps={"target": 8, "draft": 4},
        large_ball_share=0.0,
        turns_per_step=3,
        shared_video=True,
        dense_stages=(DenseStage(0.5, ("colors",), one_colour=True), DenseStage(0.25, ("count",), lr=0.5)),
        after_dense_lr=0.25,
        dense_mix=0.5,
        textures={"qwen2_5_vl": "plain", "llava_onevision": "position"},
    )
    report = build_testbed(
        tmp_path, minutes=1, seed=0, families=("qwen2_5_vl",), recipe=recipe, progress=False, threads=1
    )
    assert report["recipe"]["dense_stages"][1] == {"share": 0.25, "kinds": ("count",), "one_colour": False, "lr": 0.5}
    lr, everything = MINI.lr["target"], stages[2][4]
    assert len(everything) > 2 and stages == [
        (1 + 4, 4, 0.0, lr, ["colors"]),  # the text step, then the target's dense stages
        (2, 2, 0.0, lr / 2, ["count"]),
        (2, 0, 0.5, lr / 4, everything),
        (1 + 2, 2, 0.0, lr, ["colors"]),  # the draft's
        (1, 1, 0.0, lr / 2, ["count"]),
        (1, 0, 0.5, lr / 4, everything),
    ]
    assert listed[:2] == listed[3:5] == [0, 0] < [listed[2]] == [listed[5]]  # one-colour answers in the first only
    metrics = json.loads((tmp_path / "models" / "qwen2_5_vl" / "target" / "metrics.json").read_text())
    assert [d["steps"] for d in metrics["train"]["dense_stages"]] == [5, 2]
    assert all("colors" in d["video_gap_by_kind"] for d in metrics["train"]["dense_stages"])
    assert metrics["pair"]["static_tree"]["equal_to_target"]
    assert json.loads((tmp_path / "world" / "world.json").read_text())["texture"] == "plain"
    assert not (tmp_path / "world-position").exists()  # only the backgrounds of the families built
    assert {trained_texture(tmp_path / "models" / "qwen2_5_vl" / role) for role in ("target", "draft")} == {"plain"}


def test_each_family_trains_on_its_own_background(mini_build, tmp_path):
    """A world per background the families use, the same clips and words on each (one tokenizer serves both); each
    family's pixels and metrics.json are its own world's; the sample clips are the demo family's. A model built
    before backgrounds existed counts as plain."""
    from specvlm.testbed.assets import trained_texture
    from specvlm.testbed.build import world_folder

    out, report = mini_build
    assert MINI.textures == {"qwen2_5_vl": "position", "llava_onevision": "plain"}
    for family in FAMILIES:
        texture = MINI.texture(family)
        assert json.loads((out / world_folder(texture) / "world.json").read_text())["texture"] == texture
        assert {trained_texture(out / "models" / family / role) for role in ("target", "draft")} == {texture}
    plain, position = ((out / world_folder(t) / "train.jsonl").read_text() for t in ("plain", "position"))
    assert plain == position
    assert world_folder("position") == "world-position" and world_folder("plain", large=True) == "world-large"
    sample = sorted((out / "samples").glob("*.mp4"))[0]
    assert sample.read_bytes() == (out / "world-position" / "videos" / sample.name).read_bytes()
    (tmp_path / "metrics.json").write_text(json.dumps({"family": "qwen2_5_vl"}))  # a metrics.json without the key
    assert trained_texture(tmp_path) == "plain"


def test_one_colour_answers_keeps_the_other_turns():
    """Only the "which colours" turns whose answer lists colours go; one-colour ones and every other kind stay."""
    from specvlm.testbed.train import Clip, one_colour_answers

    turns = [
        ("Describe.", "A red ball ...", None, "caption"),
        ("Which colours do the balls have at the start?", "Red and blue.", "red and blue", "colors"),
        ("Which colours do the balls have at the end?", "Green.", "green", "colors"),
        ("Which colours do the balls have at the start?", "Red, green and blue.", "red, green and blue", "colors"),
        ("Which way does the red and blue ball move?", "Left.", "left", "direction"),
    ]
    clip = Clip("c", "c.mp4", {}, 0, turns)
    assert one_colour_answers(clip).turns == [turns[0], turns[2], turns[4]] and clip.turns == turns


def test_one_ball_captions_keeps_a_caption_of_one_colour_and_every_question():
    from specvlm.testbed.train import Clip, names_one_colour, one_ball_captions

    assert names_one_colour("There is one ball. The red ball starts at the top. At the end, ...")
    assert not names_one_colour("There is one ball. The red ball ... Then the red ball turns blue.")
    assert not names_one_colour("There are no balls.")

    question = ("Which colours do the balls have at the start?", "Red and blue.", "red and blue", "colors")
    one = Clip(
        "a", "a.mp4", {}, 0, [("Describe.", "There is one ball. The red ball starts at the top.", None, "caption")]
    )
    two = Clip("b", "b.mp4", {}, 0, [("Describe.", "The red ball ... Then the red ball turns blue.", None, "caption")])
    assert one_ball_captions(replace(one, turns=one.turns + [question])).turns == one.turns + [question]
    assert one_ball_captions(replace(two, turns=two.turns + [question])).turns == [question]


def test_dense_visual_keeps_every_ball_token_and_a_share_of_the_rest():
    import numpy as np

    from specvlm.testbed.train import Clip, dense_visual

    labels = torch.zeros(1000, 3, dtype=torch.long)
    balls = torch.tensor([3, 4, 500, 999])
    labels[balls, 0] = torch.tensor([1, 2, 1, 5])
    clip = Clip("c", "", {}, 1000, [], labels)
    rng = np.random.default_rng(0)
    assert torch.equal(dense_visual(clip, 0.0, rng), balls)
    assert torch.equal(dense_visual(clip, 1.0, rng), torch.arange(1000))
    some = dense_visual(clip, 0.1, rng)
    assert torch.equal(some, some.sort().values) and set(balls.tolist()) <= set(some.tolist())
    assert 60 <= len(some) - 4 <= 140


@contextlib.contextmanager
def other_caller_state():
    """Global torch state unlike conftest's (autograd on, float64 by default, 2 threads, flush-to-zero on, bf16
    autocast, the RNG moved on), as a script that trained something first might leave it; restored afterwards."""
    with global_torch_state(True, torch.float64, 2, True), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.rand(7)
        yield


def test_same_seed_builds_identical_weights(mini_build, tmp_path):
    """The build's promise: the same command gives the same models, whatever ran before it in the process. A second
    build with the same seed, in the same process, under another global torch state than the first (grad mode,
    default dtype, threads, flush-to-zero, autocast, RNG), trains on the same pixels and saves bit-identical
    tensors; the caller's state is as it was afterwards. (Issue 25: the clips were lossy H.264, whose encoder now
    and then coded the same frames differently, so two builds could train on different pixels.)"""
    from safetensors.torch import load_file

    from specvlm.testbed.recipe import ROLES

    out, report = mini_build
    with other_caller_state():
        rng = torch.get_rng_state()
        again = build_testbed(tmp_path, minutes=1, seed=0, recipe=MINI, progress=False, threads=1)
        assert torch.equal(torch.get_rng_state(), rng)
        assert torch.is_grad_enabled() and torch.get_default_dtype() == torch.float64
        assert torch.get_num_threads() == 2 and flush_denormal_enabled() and torch.is_autocast_enabled("cpu")
    for family, fam in again["families"].items():
        assert fam["train_pixels_sha256"] == report["families"][family]["train_pixels_sha256"], (
            f"{family}: the world's decoded training pixels differ between two builds of one seed"
        )
        for role in ROLES:
            trained = fam[role]["train"]  # the text step and the first 3 video steps, then the dense stage, then 2
            warm_up, dense = trained["large_ball_warm_up"], trained["dense_stages"]
            assert warm_up["steps"] == MINI.text_steps[role] + int(MINI.large_ball_share * MINI.steps[role]) == 4
            assert [d["steps"] for d in dense] == [1] and trained["steps"] == 2
            assert warm_up["steps"] + 1 + trained["steps"] == MINI.text_steps[role] + MINI.steps[role]
            assert not fam[role]["train"]["stopped_early"]
            assert not report["families"][family][role]["train"]["stopped_early"]
            first = load_file(out / "models" / family / role / "model.safetensors")
            second = load_file(tmp_path / "models" / family / role / "model.safetensors")
            assert first and first.keys() == second.keys()
            differ = [name for name in first if not torch.equal(first[name], second[name])]
            assert not differ, f"{family} {role}: {len(differ)} tensors differ, e.g. {differ[0]}"
            assert fam[role]["validation_loss"] == report["families"][family][role]["validation_loss"]
        assert (tmp_path / "models" / family / "target" / "tokenizer.json").read_bytes() == (
            out / "models" / family / "target" / "tokenizer.json"
        ).read_bytes()


def test_a_familys_models_do_not_depend_on_the_other_families_built(mini_build, tmp_path):
    """A one-family build trains the same Qwen2.5-VL target as the build of both families (its seed is the family's,
    `recipe.FAMILY_SEED`, not its place in --families), so the bundle's pairs can come from one-family builds."""
    from safetensors.torch import load_file

    out, _ = mini_build
    build_testbed(tmp_path, minutes=1, seed=0, families=("qwen2_5_vl",), recipe=MINI, progress=False, threads=1)
    both, alone = (load_file(d / "models" / "qwen2_5_vl" / "target" / "model.safetensors") for d in (out, tmp_path))
    assert both.keys() == alone.keys() and all(torch.equal(both[k], alone[k]) for k in both)


def test_resume_reuses_finished_models_and_retrains_the_rest(mini_build, tmp_path):
    """An interrupted build (here: the Qwen draft never finished) continues with --resume: the finished models'
    files are left as they are, the missing one is trained again to the same weights; another seed is refused."""
    import shutil

    from safetensors.torch import load_file

    out, _ = mini_build
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    unfinished = copy / "models" / "qwen2_5_vl" / "draft"
    (unfinished / "metrics.json").unlink()
    (unfinished / "model.safetensors").write_bytes(b"half-written")
    kept = {p: p.stat().st_mtime_ns for p in (copy / "models").glob("*/target/model.safetensors")}
    report = build_testbed(copy, minutes=1, seed=0, recipe=MINI, progress=False, resume=True, threads=1)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    first, again = (
        load_file(out / "models" / "qwen2_5_vl" / "draft" / "model.safetensors"),
        load_file(unfinished / "model.safetensors"),
    )
    assert all(torch.equal(first[k], again[k]) for k in first)
    trained = report["families"]["qwen2_5_vl"]["draft"]["train"]
    steps = [trained["large_ball_warm_up"]["steps"], *(d["steps"] for d in trained["dense_stages"]), trained["steps"]]
    assert steps == [4, 1, 2] and sum(steps) == MINI.text_steps["draft"] + MINI.steps["draft"]
    with pytest.raises(SpecVLMError, match="another recipe, seed"):
        build_testbed(copy, minutes=1, seed=1, recipe=MINI, progress=False, resume=True, threads=1)
    with pytest.raises(SpecVLMError, match="another recipe, seed"):
        build_testbed(copy, minutes=1, seed=0, recipe=MINI, progress=False, resume=True, threads=2)
    with pytest.raises(SpecVLMError, match="contradict"):
        prepare_out(copy, force=True, resume=True)


def test_cli_rejects_bad_options(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("user data")
    (tmp_path / "file").write_text("")
    for argv in (
        ["--minutes", "-3", "--out", str(tmp_path / "new")],
        ["--out", str(tmp_path / "full")],
        ["--out", str(tmp_path / "file" / "sub")],
    ):
        assert main(["testbed", "build", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("specvlm: error:") and "\n" not in err
    assert (tmp_path / "full" / "mine.txt").read_text() == "user data"
    assert not (tmp_path / "new").exists()


def test_force_replaces_only_what_a_build_writes(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "build.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(SpecVLMError, match="--force"):
        prepare_out(tmp_path, force=False)
    prepare_out(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_bundled_pair_speculates_losslessly(family):
    from specvlm.testbed.assets import bundled_pair, sample_clips

    target_dir, draft_dir = bundled_pair(family)
    spec, plain = greedy_equal(target_dir, draft_dir, sample_clips("caption")[0]["video"], 8)
    assert spec == plain and len(plain) == 8


def test_missing_assets_are_a_clear_error(monkeypatch, tmp_path):
    from specvlm.testbed import assets

    monkeypatch.setattr(assets, "MODELS_DIR", tmp_path)
    monkeypatch.setattr(assets, "SAMPLES_DIR", tmp_path)
    with pytest.raises(SpecVLMError, match="specvlm testbed build"):
        assets.bundled_pair("qwen2_5_vl")
    with pytest.raises(SpecVLMError, match="missing"):
        assets.sample_clips()
    with pytest.raises(SpecVLMError, match="families"):
        assets.bundled_pair("llava")
