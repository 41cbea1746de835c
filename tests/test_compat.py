"""Can this draft speak for this target? Tokenizer and model checks, on hand-made vocabularies and tiny models."""

import pytest

from specvlm import SpeculativeGenerator
from specvlm.adapters import adapter_for
from specvlm.compat import IncompatibleDraft, check_tokenizers, reads_other_inputs

from helpers import model


class Vocab:
    """Just what check_tokenizers reads from a tokenizer."""

    def __init__(self, tokens: dict[str, int]):
        self.tokens = tokens

    def get_vocab(self) -> dict[str, int]:
        return dict(self.tokens)


BASE = {f"tok{i}": i for i in range(1000)} | {"<|im_end|>": 1000, "<|video_pad|>": 1001}


def test_same_tokenizer_and_extra_added_tokens_pass():
    check_tokenizers(Vocab(BASE), Vocab(BASE))
    # a draft checkpoint with a few more added tokens (shared ids agree): the draft's extra ids are cut off
    check_tokenizers(Vocab(BASE), Vocab(BASE | {"<extra_0>": 1002, "<extra_1>": 1003}))
    check_tokenizers(None, Vocab(BASE))  # nothing to compare: the model checks still apply


def test_a_shared_token_with_another_id_is_refused():
    moved = BASE | {"<|im_end|>": 999, "tok999": 1000}
    with pytest.raises(IncompatibleDraft, match="different ids.*im_end|different ids.*tok999"):
        check_tokenizers(Vocab(BASE), Vocab(moved))


def test_a_different_vocabulary_is_refused():
    other = {f"piece{i}": i for i in range(1002)}
    with pytest.raises(IncompatibleDraft, match="shared tokens"):
        check_tokenizers(Vocab(BASE), Vocab(other))


def test_a_draft_of_another_family_reads_its_own_inputs():
    """Qwen2-VL and Qwen2.5-VL read the same inputs; LLaVA-OneVision reads its own (and says so when forgotten)."""
    qwen, qwen2, onevision = (adapter_for(model(f)) for f in ("qwen2_5_vl", "qwen2_vl", "llava_onevision"))
    assert not reads_other_inputs(qwen, qwen2) and reads_other_inputs(qwen, onevision)
    gen = SpeculativeGenerator(model("qwen2_5_vl"), model("llava_onevision"))
    assert gen.reads_own_inputs
