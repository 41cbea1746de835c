"""Batches: `generate(**batch)` on a left-padded processor batch gives each row exactly what `target.generate`
gives that row alone (greedy), for every family, drafter, tree and engine, with rows of different lengths and
kinds that finish at different rounds; `sequences` / `scores` are shaped and padded like HF's batched output;
sampled rows keep the target's distribution (χ² on a batch of many rows); a running `DecodeBatch` admits and drops
rows between rounds (the server's continuous batching) without changing anyone's answer."""

import functools

import pytest
import torch

from specvlm import SpeculativeGenerator
from specvlm.drafters.eagle import EagleHead
from specvlm.errors import SpecVLMError
from specvlm.tiny import FAMILIES, make_batch, make_inputs, special_ids

from helpers import VOCAB, chi2_pvalues, model, perturbed_pair, reference

PAD = special_ids(1024)["pad"]


@functools.cache
def rows_of(family: str) -> tuple:
    """Three prompts of different lengths: a video, an image, a longer video (LLaVA stacks a batch's videos, so
    theirs have the same frames), and one with no visual input."""
    return (
        make_inputs(family, "video", prompt_len=3, seed=0, frames=4),
        make_inputs(family, "image", prompt_len=9, seed=1),
        make_inputs(family, "video", prompt_len=14, seed=2, frames=4),
        make_inputs(family, "text", prompt_len=6, seed=3),
    )


@functools.cache
def expected(family: str, max_new_tokens: int, eos: int) -> tuple:
    target = model(family)
    return tuple(
        tuple(reference(target, row, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos))
        for row in rows_of(family)
    )


def an_eos(family: str) -> int:
    """A token row 0's answer produces early (so that row stops while others go on)."""
    return expected(family, 16, -1)[0][4]


def drafter(family: str, name: str):
    target = model(family)
    return {
        "small": lambda: model(family, seed=1, hidden=32, layers=1),
        "self": lambda: "self",
        "head": lambda: EagleHead.init_for(target, seed=0),
        "none": lambda: None,
    }[name]()


@pytest.mark.parametrize("engine", ["fast", "eager"])
@pytest.mark.parametrize("tree", ["chain", "static", "dynamic"])
@pytest.mark.parametrize("draft", ["small", "self", "head"])
@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_equals_each_row_alone(family, draft, tree, engine):
    target = model(family)
    eos = an_eos(family)
    gen = SpeculativeGenerator(target, drafter(family, draft), tree=tree, num_draft_tokens=4, engine=engine)
    out = gen.generate(
        **make_batch(list(rows_of(family)), family, PAD), do_sample=False, max_new_tokens=16, eos_token_id=eos
    )
    want = expected(family, 16, eos)
    assert [tuple(t) for t in out.token_ids] == list(want)
    assert len(set(map(len, want))) > 1  # the rows ended at different rounds
    assert out.stats.new_tokens == sum(map(len, want)) == sum(s.new_tokens for s in out.row_stats)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_pruned_self_draft_and_target_only_batches(family):
    """Per-row pruning (each row keeps a share of its own visual tokens; the text-only row has none to prune) and
    drafting nothing (the server's --draft none) are lossless in a batch too."""
    target, eos = model(family), an_eos(family)
    batch = make_batch(list(rows_of(family)), family, PAD)
    for draft, options in (("self", dict(pruning="specvlm", visual_keep_ratio=0.25)), ("none", {})):
        gen = SpeculativeGenerator(target, drafter(family, draft), tree="static", **options)
        out = gen.generate(**batch, do_sample=False, max_new_tokens=16, eos_token_id=eos)
        assert [tuple(t) for t in out.token_ids] == list(expected(family, 16, eos))
    assert gen.mode == "target-only" and out.stats.accepted_tokens == 0
    assert out.stats.target_forwards == len(rows_of(family)) + max(map(len, out.token_ids)) - 1


def test_sequences_and_scores_are_shaped_like_hfs_batched_output():
    family = "qwen2_5_vl"
    target, eos = model(family), an_eos(family)
    batch = make_batch(list(rows_of(family)), family, PAD)
    options = dict(
        do_sample=False,
        max_new_tokens=16,
        eos_token_id=eos,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
    )
    hf = target.generate(**batch, **options)
    out = SpeculativeGenerator(target, "self", tree="chain").generate(**batch, **options)
    assert torch.equal(out.sequences, hf.sequences)  # rows that ended early padded with pad_token_id
    assert len(out.scores) == len(hf.scores) == out.sequences.shape[1] - batch["input_ids"].shape[1]
    for step, (ours, theirs) in enumerate(zip(out.scores, hf.scores)):
        assert ours.shape == theirs.shape == (4, target.config.get_text_config().vocab_size)
        for row, tokens in enumerate(out.token_ids):
            if step < len(tokens):  # running rows: HF's own rows, up to multi-token rounding
                assert torch.allclose(ours[row], theirs[row], atol=1e-4)
            else:  # finished rows: no value (HF's are predictions after its padding)
                assert torch.isnan(ours[row]).all()


def test_batch_errors_are_one_line():
    family = "qwen2_5_vl"
    target = model(family)
    gen = SpeculativeGenerator(target, "self")
    batch = make_batch(list(rows_of(family))[:2], family, PAD)
    from transformers import TextStreamer

    with pytest.raises(SpecVLMError, match="streamer takes a batch of one"):
        gen.generate(**batch, max_new_tokens=4, streamer=TextStreamer(None))
    with pytest.raises(SpecVLMError, match="cannot split the batch"):
        gen.generate(**dict(batch, video_grid_thw=batch["video_grid_thw"][:0]), max_new_tokens=4)
    with pytest.raises(SpecVLMError, match="stream\\(\\) takes one sequence"):
        next(SpeculativeGenerator(target, "self", tokenizer=object()).stream(**batch, max_new_tokens=4))


# ---- continuous batching: rows join and leave between rounds ------------------------------------------------------
@pytest.mark.parametrize("engine", ["fast", "eager"])
def test_rows_join_and_leave_between_rounds(engine):
    """The server's pattern: a running batch where requests join after others have decoded for a while and leave
    early (a cancelled client), in a batch with at most 2 rows; every finished answer is its answer alone, and the
    rows moved into freed places keep decoding correctly."""
    family = "llava_onevision"
    target = model(family)
    gen = SpeculativeGenerator(target, model(family, seed=1, hidden=32, layers=1), tree="dynamic", engine=engine)
    prompts = [
        make_inputs(family, kind, prompt_len=n, seed=n)
        for kind, n in (("video", 3), ("image", 8), ("video", 12), ("image", 5), ("text", 7))
    ]
    want = [reference(target, p, do_sample=False, max_new_tokens=24, eos_token_id=-1) for p in prompts]
    batch = gen.batch(2)
    waiting = list(range(len(prompts)))
    answers, rows = {}, {}
    rounds = 0
    while waiting or len(batch):
        while waiting and not batch.full:
            i = waiting.pop(0)
            row, first = batch.add(gen.request(**prompts[i], do_sample=False, max_new_tokens=24, eos_token_id=-1), i)
            rows[i], answers[i] = row, list(first)
        if rounds == 2:  # prompt 0 is cancelled: it leaves, prompt 1's row moves into its place if need be
            batch.remove(rows[0])
        for row, new in batch.step():
            answers[row.tag] += new
        rounds += 1
    assert answers[0] != want[0] and want[0][: len(answers[0])] == answers[0]  # cut short, correct so far
    assert [answers[i] for i in range(1, 5)] == want[1:]


@pytest.mark.parametrize("draft", ["small", "self", "head"])
def test_a_compiled_generate_batch_keeps_its_shape_as_rows_finish(monkeypatch, draft):
    """Compiled steps (CUDA graphs) compile one graph per shape. A `generate` call's rows only leave, so its steps
    stay padded to the bucket it started with (4 rows here) while rows finish at different rounds, instead of
    compiling a graph for each smaller bucket; the server's batch, which rows join, pads to the rows it holds.
    Here the compile is replaced by the eager step: the shapes are the compiled ones, the answers each row's own."""
    import specvlm.engine.session

    monkeypatch.setattr(specvlm.engine.session, "_compiled", lambda method, device_type: method)
    family = "qwen2_5_vl"
    target, eos = model(family), an_eos(family)
    gen = SpeculativeGenerator(target, drafter(family, draft), tree="static", num_draft_tokens=4, compile=True)
    seen: list[int] = []
    real_run = specvlm.engine.session.StaticSession._run
    monkeypatch.setattr(
        specvlm.engine.session.StaticSession,
        "_run",
        lambda self, ids, positions, allowed: seen.append(ids.shape[0]) or real_run(self, ids, positions, allowed),
    )
    options = dict(do_sample=False, max_new_tokens=16, eos_token_id=eos)
    out = gen.generate(**make_batch(list(rows_of(family)), family, PAD), **options)
    assert [tuple(t) for t in out.token_ids] == list(expected(family, 16, eos))
    assert set(seen) == {4}  # every step of the batch, as its rows finished

    seen.clear()
    batch, answers = gen.batch(4), {}
    for i, prompt in enumerate(rows_of(family)):
        answers[i] = list(batch.add(gen.request(**prompt, **options), i)[1])
    while len(batch):
        for row, new in batch.step():
            answers[row.tag] += new
    assert [tuple(answers[i]) for i in range(4)] == list(expected(family, 16, eos))
    assert 4 in seen and min(seen) < 4  # the server's batch shrinks with its rows


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_onevision"])
def test_rows_with_different_settings_in_one_batch(family):
    """A greedy row, a repetition-penalty row and a short row beside each other (per-row settings, as a server's
    requests): each equals its own target.generate."""
    target = model(family)
    gen = SpeculativeGenerator(target, "self", tree="static")
    settings = [dict(max_new_tokens=20), dict(max_new_tokens=20, repetition_penalty=1.3), dict(max_new_tokens=3)]
    prompts = list(rows_of(family))[:3]
    batch = gen.batch(3)
    answers = {}
    for i, (prompt, options) in enumerate(zip(prompts, settings)):
        _, first = batch.add(gen.request(**prompt, do_sample=False, eos_token_id=-1, **options), i)
        answers[i] = list(first)
    while len(batch):
        for row, new in batch.step():
            answers[row.tag] += new
    for i, (prompt, options) in enumerate(zip(prompts, settings)):
        assert answers[i] == reference(target, prompt, do_sample=False, eos_token_id=-1, **options)


# ---- sampling: every row keeps the target's distribution -----------------------------------------------------------
def batched_samples(target, draft, inputs, runs, settings, tree, **options):
    """`runs` rows of one prompt decoded together (3 tokens each), row i with settings[i % len(settings)] and its
    own seeded generator (as a server's requests): per setting its rows' samples, and the draft tokens accepted."""
    gen = SpeculativeGenerator(
        target, draft, tree=tree, num_draft_tokens=3, tree_top_k=3, tree_depth=3, tree_total_tokens=8, **options
    )
    batch = gen.batch(runs)
    answers, rows = {}, []
    for i in range(runs):
        request = gen.request(
            **inputs,
            do_sample=True,
            top_k=0,
            max_new_tokens=3,
            eos_token_id=-1,
            generator=torch.Generator().manual_seed(1000 + i),
            **settings[i % len(settings)],
        )
        row, first = batch.add(request, i)
        answers[i] = list(first)
        rows.append(row)
    while len(batch):
        for row, new in batch.step():
            answers[row.tag] += new
    samples = [[answers[i] for i in range(k, runs, len(settings))] for k in range(len(settings))]
    return samples, sum(row.stats.accepted_tokens for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,kind,tree,options",
    [
        ("qwen2_5_vl", "image", "chain", {}),
        ("qwen2_5_vl", "video", "dynamic", {}),
        ("llava_onevision", "video", "static", {}),
        ("qwen2_5_vl", "video", "chain", dict(confidence_threshold=0.3)),  # rows stop their chains at different depths
    ],
)
def test_batched_sampling_follows_the_target_per_row(family, kind, tree, options):
    """1600 rows in one batch, half at temperature 1, half at 0.7 with top_p 0.9 (two settings side by side, each
    row with its own seed): each half's first three tokens follow the target's law under its own settings."""
    target, draft = perturbed_pair(family)
    inputs = make_inputs(family, kind, vocab=VOCAB)
    settings = [dict(temperature=1.0, top_p=1.0), dict(temperature=0.7, top_p=0.9)]
    samples, accepted = batched_samples(target, draft, inputs, 1600, settings, tree, **options)
    assert accepted > 300  # the draft's proposals really were accepted, not only corrected
    for setting, rows in zip(settings, samples):
        assert min(chi2_pvalues(target, inputs, setting["temperature"], setting["top_p"], rows)) > 1e-3
    # and the test can tell the settings apart: the first half's samples fail the second half's law
    assert min(chi2_pvalues(target, inputs, 0.7, 0.9, samples[0])) < 1e-6
