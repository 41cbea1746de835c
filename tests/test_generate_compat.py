"""`gen.generate(**inputs, **kwargs)` where users call `model.generate(**inputs, **kwargs)`: the keywords HF's
generate takes mean the same (or are refused in one line), a left-padded prompt gives target.generate's output,
`sequences` / `scores` / `logits` / streamers behave like HF's."""

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer

from specvlm import SpeculativeGenerator
from specvlm.engine.request import left_padding
from specvlm.errors import SpecVLMError
from specvlm.tiny import FAMILIES, make_inputs, special_ids

from helpers import model, reference


def left_padded(inputs: dict, pads: int, pad_id: int) -> dict:
    """The processor's output for a batch-of-one prompt padded on the left (as `padding_side="left"` gives)."""
    length = inputs["input_ids"].shape[1]
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and tuple(value.shape) == (1, length):
            fill = {"input_ids": pad_id}.get(key, 0)
            value = torch.cat([torch.full((1, pads), fill, dtype=value.dtype), value], 1)
        out[key] = value
    return out


@pytest.mark.parametrize("engine", ["fast", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding_gives_target_generate_output(family, engine):
    target = model(family)
    pad = special_ids(1024)["pad"]
    for kind, draft in (("video", "self"), ("image", model(family, seed=1, hidden=32, layers=1))):
        inputs = left_padded(make_inputs(family, kind), 3, pad)
        expected = target.generate(**inputs, do_sample=False, max_new_tokens=12)
        gen = SpeculativeGenerator(target, draft, tree="static", engine=engine)
        out = gen.generate(**inputs, do_sample=False, max_new_tokens=12)
        assert torch.equal(out.sequences, expected), (kind, out.sequences[0, -12:], expected[0, -12:])
        assert out.stats.target_prompt_tokens == inputs["input_ids"].shape[1] - 3


def test_padding_masks_that_are_not_left_padding_are_refused():
    assert left_padding(None) == 0 and left_padding(torch.tensor([[1, 1]])) == 0
    assert left_padding(torch.tensor([[0, 0, 1, 1]])) == 2
    for bad in ([[1, 1, 0]], [[0, 1, 0, 1]], [[0, 0]]):
        with pytest.raises(SpecVLMError):
            left_padding(torch.tensor(bad))


def test_hf_generate_keywords():
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image")
    n = inputs["input_ids"].shape[1]
    gen = SpeculativeGenerator(target, "self", tree="chain")
    expected = reference(target, inputs, do_sample=False, max_new_tokens=9)
    harmless = dict(
        use_cache=True,
        num_beams=1,
        num_return_sequences=1,
        pad_token_id=5,
        output_attentions=False,
        synced_gpus=False,
        logits_processor=None,
        stopping_criteria=[],
        cache_implementation="static",
    )
    assert gen.generate(**inputs, do_sample=False, max_new_tokens=9, **harmless).token_ids == expected
    assert gen.generate(**inputs, do_sample=False, max_length=n + 9).token_ids == expected
    for bad in (
        dict(num_beams=2),
        dict(output_attentions=True),
        dict(num_return_sequences=3),
        dict(min_new_tokens=4),
        dict(stop_strings=["x"]),
        dict(assistant_model=target),
        dict(banana=1),
        dict(logits_processor=[lambda ids, scores: scores]),
    ):
        with pytest.raises(SpecVLMError, match=next(iter(bad))):
            gen.generate(**inputs, do_sample=False, max_new_tokens=4, **bad)


@pytest.mark.parametrize("do_sample", [False, True])
def test_dict_output_sequences_scores_and_logits(do_sample):
    target = model("llava_onevision")
    inputs = make_inputs("llava_onevision", "video")
    options = dict(
        do_sample=do_sample,
        max_new_tokens=10,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        repetition_penalty=1.2,
        eos_token_id=-1,
    )
    if do_sample:
        options.update(temperature=0.8, top_k=20)
    torch.manual_seed(0)
    hf = target.generate(**inputs, **options)
    gen = SpeculativeGenerator(target, model("llava_onevision", seed=1, hidden=32, layers=1), tree="static")
    out = gen.generate(**inputs, **options)
    assert out.sequences.shape == (1, inputs["input_ids"].shape[1] + 10)
    assert torch.equal(out.sequences[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert len(out.scores) == len(out.logits) == 10 and out.scores[0].shape == hf.scores[0].shape
    if not do_sample:  # same tokens, so the same rows up to the rounding of multi-token verification
        assert torch.equal(out.sequences, hf.sequences)
        for ours, theirs in zip(out.scores + out.logits, hf.scores + hf.logits):
            assert torch.allclose(ours, theirs, atol=1e-4)
    else:  # our own tokens: each score row is the warped, penalised row that sampled it
        for i, row in enumerate(out.scores):
            assert torch.isfinite(row[0, out.token_ids[i]])
            assert int((row > float("-inf")).sum()) <= 20
    plain = gen.generate(**inputs, do_sample=False, max_new_tokens=4)
    assert (
        plain.scores is None and plain.logits is None and plain.sequences.shape[1] == inputs["input_ids"].shape[1] + 4
    )


def test_hf_streamers_receive_the_prompt_then_the_answer():
    from transformers import PreTrainedTokenizerFast

    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image")
    tokenizer = _byte_tokenizer()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
    gen = SpeculativeGenerator(target, "self", tree="chain", tokenizer=tokenizer)
    out = gen.generate(**inputs, do_sample=False, max_new_tokens=12, eos_token_id=-1, streamer=streamer)
    assert "".join(streamer) == tokenizer.decode(out.token_ids, skip_special_tokens=True)
    assert isinstance(tokenizer, PreTrainedTokenizerFast) or hasattr(tokenizer, "decode")


def test_generation_config_object_and_model_defaults():
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "video")
    config = GenerationConfig(max_new_tokens=7, do_sample=False, eos_token_id=-1)
    out = SpeculativeGenerator(target, "self").generate(**inputs, generation_config=config)
    assert out.token_ids == reference(target, inputs, generation_config=config)


def _byte_tokenizer():
    """A tokenizer for ids 0..1023 (the tiny models' vocabulary): each id decodes to a short letter string."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}_": i for i in range(1024)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0_")))


def test_what_hf_refuses_is_refused_and_what_it_honours_is_honoured():
    """Never a silently different answer: where HF's generate raises, so do we (one SpecVLMError naming the
    argument); where it honours an argument (a tensor eos_token_id), so do we."""
    target = model("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", "image")
    gen = SpeculativeGenerator(target, "self", tree="chain")
    plain = reference(target, inputs, do_sample=False, max_new_tokens=9)
    eos = torch.tensor([plain[2]])  # HF stops at the answer's third token
    expected = reference(target, inputs, do_sample=False, max_new_tokens=9, eos_token_id=eos)
    assert len(expected) < len(plain)
    assert gen.generate(**inputs, do_sample=False, max_new_tokens=9, eos_token_id=eos).token_ids == expected
    n = inputs["input_ids"].shape[1]
    refused = {  # what -> (generate's arguments, a phrase of the message)
        "a misspelled model input": (dict(inputs, pixel_values_video=inputs["pixel_values"]), "pixel_values_video"),
        "a longer attention_mask": (dict(inputs, attention_mask=torch.ones(1, n + 3, dtype=torch.long)), "attention"),
        "empty input_ids": (dict(inputs, input_ids=inputs["input_ids"][:, :0]), "input_ids"),
        "1-D input_ids": (dict(inputs, input_ids=inputs["input_ids"][0]), "input_ids"),
        "temperature nan": (dict(inputs, do_sample=True, temperature=float("nan")), "temperature"),
        "repetition_penalty nan": (dict(inputs, repetition_penalty=float("nan")), "repetition_penalty"),
    }
    for arguments, phrase in refused.values():
        with pytest.raises(SpecVLMError, match=phrase):
            gen.generate(**arguments, max_new_tokens=3)
        with pytest.raises((ValueError, IndexError, RuntimeError)):  # HF refuses each too (its own messages)
            target.generate(**arguments, max_new_tokens=3)
