"""Drafts with another vocabulary (issue 21, item 2): tokens cross through text by token-level intersection
(`drafters/vocab.py`). The bridge on hand-made tokenizers (space conventions, permuted ids, characters split over
byte tokens, specials); refusals; and losslessness with tiny models whose tokenizers differ (greedy identity across
pairs x inputs x trees x engines, a batch, χ² for sampling). The drafts compute the target's text function in
their own ids (`twin_draft`), so their proposals are really accepted."""

import functools
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from specvlm import SpeculativeGenerator
from specvlm.compat import IncompatibleDraft
from specvlm.drafters.vocab import VocabBridge
from specvlm.inputs.testing import _CORPUS, make_tiny_tokenizer
from specvlm.tiny import make_inputs, make_model, special_ids

from helpers import VOCAB, assert_cross_family_sampling_is_the_targets, model, reference

pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def tokenizer(family: str, merges: int | None = None, shuffle: int | None = None, vocab: int = 1024):
    return make_tiny_tokenizer(family, vocab, merges=merges, shuffle=shuffle)


def metaspace_tokenizer():
    """A SentencePiece-style BPE (`▁` marks a space, the first token's dropped on decoding; characters it lacks are
    spelled with `<0xNN>` byte tokens) on the same corpus."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    tok.train_from_iterator(
        _CORPUS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    )
    spec = json.loads(tok.to_str())
    table = spec["model"]["vocab"]
    for byte in range(256):
        table.setdefault(f"<0x{byte:02X}>", len(table))
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")


def only(tok, text: str) -> int:
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


# ---- the bridge on hand-made tokenizers ------------------------------------------------------------------------------
def test_the_same_text_is_the_same_token_across_space_conventions():
    byte_level, metaspace = tokenizer("qwen2_5_vl"), metaspace_tokenizer()
    bridge = VocabBridge(byte_level, metaspace)
    assert metaspace.convert_ids_to_tokens(only(metaspace, " the")) == "▁the"
    assert byte_level.convert_ids_to_tokens(only(byte_level, " the")) == "Ġthe"
    assert bridge.draft_of(only(byte_level, " the")) == only(metaspace, " the")
    assert metaspace.convert_ids_to_tokens(bridge.draft_of(only(byte_level, "he"))) == "he"  # no space: no ▁
    # half a character: byte-level's 'Ã' is byte 0xC3, SentencePiece spells it <0xC3>
    assert metaspace.convert_ids_to_tokens(bridge.draft_of(byte_level.convert_tokens_to_ids("Ã"))) == "<0xC3>"
    ids = byte_level.encode(" Café über", add_special_tokens=False)
    anchor = metaspace.encode("a", add_special_tokens=False)  # SentencePiece drops a text's first space
    assert metaspace.decode(anchor + bridge.to_draft(ids)) == "a Café über"


def test_permuted_ids_map_to_the_token_spelling_the_same_text():
    target, draft = tokenizer("qwen2_5_vl"), tokenizer("llava_onevision", shuffle=3)
    bridge = VocabBridge(target, draft)
    moved = 0
    for t, d in bridge.pairs:
        assert target.convert_ids_to_tokens(t) == draft.convert_ids_to_tokens(d)
        moved += t != d
    assert moved > 0.9 * len(bridge)  # the ids really differ
    assert len(bridge) == bridge.ordinary[0] == 1017  # every ordinary token, lone bytes (half a character) too


def test_special_tokens_are_never_shared():
    target, draft = tokenizer("qwen2_5_vl"), tokenizer("llava_onevision", shuffle=3)
    bridge = VocabBridge(target, draft)
    specials = set(special_ids(1024).values()) | {1017}  # + <|im_start|>
    assert not specials & {t for t, _ in bridge.pairs}
    assert not specials & {d for _, d in bridge.pairs}


@pytest.mark.parametrize("text", [" the quick brown fox", "Caf\u00e9 \u00fcber alles", "A person walks\n"])
def test_committed_tokens_reach_the_draft_as_the_same_text(text):
    target, draft = tokenizer("qwen2_5_vl"), tokenizer("llava_onevision", merges=10, shuffle=5)
    bridge = VocabBridge(target, draft)
    ids = target.encode(text, add_special_tokens=False)
    assert draft.decode(bridge.to_draft(ids)) == text
    assert draft.decode([d for t in ids for d in bridge.to_draft([t])]) == text  # one at a time, as they commit


def test_draft_logits_land_on_the_twins_and_nowhere_else():
    target, draft = tokenizer("qwen2_5_vl"), tokenizer("llava_onevision", merges=40, shuffle=5)
    bridge = VocabBridge(target, draft)
    logits = torch.randn(2, 3, 1024)
    mapped = bridge.target_logits(logits, 1030)  # a padded target width
    assert mapped.shape == (2, 3, 1030)
    t, d = map(list, zip(*bridge.pairs))
    assert torch.equal(mapped[..., t], logits[..., d])
    others = torch.ones(1030, dtype=torch.bool)
    others[t] = False
    assert torch.isneginf(mapped[..., others]).all()
    nodes = torch.tensor([[t[0], t[5]], [1018, 1029]])  # twins, then a placeholder and a padding id
    fed = bridge.draft_ids(nodes, 1030, 1024)
    assert fed.tolist() == [[d[0], d[5]], [bridge.filler, bridge.filler]]


# ---- refusals ------------------------------------------------------------------------------------------------------
def test_what_cannot_be_bridged_is_refused_in_one_line():
    target = model("qwen2_5_vl")
    with pytest.raises(IncompatibleDraft, match="draft tokenizer is incompatible"):  # one prompt, two vocabularies
        SpeculativeGenerator(
            target,
            model("qwen2_5_vl", seed=1, hidden=32),
            tokenizer=tokenizer("qwen2_5_vl"),
            draft_tokenizer=tokenizer("qwen2_5_vl", shuffle=3),
        )
    with pytest.raises(IncompatibleDraft, match="pass tokenizer= and draft_tokenizer="):
        SpeculativeGenerator(target, model("llava_onevision", vocab=4096))
    unrelated = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({f"w{i}": i for i in range(900)} | {"<unk>": 900}, "<unk>"))
    )
    with pytest.raises(IncompatibleDraft, match="share only"):
        SpeculativeGenerator(
            target, model("llava_onevision"), tokenizer=tokenizer("qwen2_5_vl"), draft_tokenizer=unrelated
        )


# ---- lossless ------------------------------------------------------------------------------------------------------
def twin_draft(target, family: str, bridge: VocabBridge, **kw):
    """A tiny `family` model computing the target's text function in its own ids: the target's language model,
    its embedding and LM-head rows moved to each shared token's draft id (the draft's other rows random)."""
    draft = make_model(family, seed=1, **kw)
    state = dict(target.model.language_model.state_dict())
    embed, head = draft.model.language_model.embed_tokens.weight.detach().clone(), draft.lm_head.weight.detach().clone()
    t, d = map(list, zip(*bridge.pairs))
    embed[d], head[d] = state["embed_tokens.weight"][t], target.lm_head.weight.detach()[t]
    state["embed_tokens.weight"] = embed
    draft.model.language_model.load_state_dict(state)
    draft.lm_head.weight.data.copy_(head)
    return draft


# the draft's tokenizer: the same texts with other ids, or also fewer merges (so many target tokens reach it as
# several pieces, re-tokenized from text)
VOCABULARIES = {"shuffled": dict(shuffle=3), "fewer merges": dict(merges=60, shuffle=3)}
PAIRS = [("qwen2_5_vl", "llava_onevision"), ("llava_onevision", "qwen2_5_vl"), ("qwen2_vl", "llava_onevision")]


@functools.cache
def bridged_pair(target_family: str, draft_family: str, vocabulary: str):
    target_tokenizer = tokenizer(target_family)
    draft_tokenizer = tokenizer(draft_family, **VOCABULARIES[vocabulary])
    bridge = VocabBridge(target_tokenizer, draft_tokenizer)
    target = model(target_family)
    return target, twin_draft(target, draft_family, bridge), target_tokenizer, draft_tokenizer, bridge


def draft_inputs_for(bridge, family: str, kind: str, target_inputs: dict) -> dict:
    """The draft's own inputs; for a text prompt, the target's prompt as the draft reads it (its own ids)."""
    if kind != "text":
        return make_inputs(family, kind)
    ids = bridge.to_draft(target_inputs["input_ids"][0].tolist())
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}


SETTINGS = [("chain", "eager"), ("static", "fast"), ("dynamic", "eager"), ("dynamic", "fast")]
CASES = [
    (target_family, draft_family, vocabulary, kind, *SETTINGS[(i + j + k) % len(SETTINGS)])
    for i, (target_family, draft_family) in enumerate(PAIRS)
    for j, kind in enumerate(["video", "image", "text"])
    for k, vocabulary in enumerate(VOCABULARIES)
]


@pytest.mark.parametrize("target_family,draft_family,vocabulary,kind,tree,engine", CASES)
def test_greedy_output_equals_target_generate(target_family, draft_family, vocabulary, kind, tree, engine):
    target, draft, target_tokenizer, draft_tokenizer, bridge = bridged_pair(target_family, draft_family, vocabulary)
    inputs = make_inputs(target_family, kind)
    gen = SpeculativeGenerator(
        target, draft, tokenizer=target_tokenizer, draft_tokenizer=draft_tokenizer, tree=tree, engine=engine
    )
    assert gen.drafter.bridge is not None
    draft_inputs = draft_inputs_for(bridge, draft_family, kind, inputs)
    out = gen.generate(**inputs, draft_inputs=draft_inputs, max_new_tokens=16, do_sample=False)
    assert out.token_ids == reference(target, inputs, max_new_tokens=16, do_sample=False)
    if kind == "text" and vocabulary == "shuffled":  # the draft reads the same text and computes the target's
        # function on it: its guesses are the target's (a wrong map would give ~0)
        assert out.stats.mean_accepted_tokens >= 2


def test_a_batch_bridges_each_row():
    target, draft, target_tokenizer, draft_tokenizer, bridge = bridged_pair(
        "qwen2_5_vl", "llava_onevision", "fewer merges"
    )
    from specvlm.tiny import make_batch

    rows = [make_inputs("qwen2_5_vl", "text", seed=s, prompt_len=5 + 4 * s) for s in (0, 1)]
    draft_rows = [draft_inputs_for(bridge, "llava_onevision", "text", row) for row in rows]
    batch = make_batch(rows, "qwen2_5_vl", pad_id=target.generation_config.pad_token_id)
    draft_batch = make_batch(draft_rows, "llava_onevision", pad_id=draft.generation_config.pad_token_id)
    gen = SpeculativeGenerator(target, draft, tokenizer=target_tokenizer, draft_tokenizer=draft_tokenizer)
    out = gen.generate(**batch, draft_inputs=draft_batch, max_new_tokens=12, do_sample=False)
    for b, row in enumerate(rows):
        assert out.token_ids[b] == reference(target, row, max_new_tokens=12, do_sample=False)
    assert out.stats.accepted_tokens > 0


def letters_tokenizer(letters: str, merges: list[str], vocab: int, family: str):
    """A 1-character BPE over `letters` (+ `merges`), padded so its special tokens sit at `special_ids(vocab)`."""
    names = ["<|im_start|>", "<img>", "<vid>", "<vs>", "<ve>", "<|im_end|>", "<pad>"]
    table = {c: i for i, c in enumerate(letters)}
    for merge in merges:
        table[merge.replace(" ", "")] = len(table)
    while len(table) < vocab - len(names):
        table[f"<unused{len(table)}>"] = len(table)
    tok = Tokenizer(models.BPE(table, [tuple(m.split()) for m in merges], unk_token=None))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(names)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>")
    assert fast.convert_tokens_to_ids("<|im_end|>") == special_ids(vocab)["eos"], family
    return fast


@pytest.mark.slow
def test_sampling_follows_the_target_distribution():
    """χ² of the first three sampled tokens against the target's exact law, through a bridge: the target spells
    a..i, the draft a..h in reverse order plus a merged "ab" ('i' reaches it as the filler)."""
    target_tokenizer = letters_tokenizer("abcdefghi", [], VOCAB, "qwen2_5_vl")
    draft_tokenizer = letters_tokenizer("hgfedcba", ["a b"], VOCAB, "llava_onevision")
    bridge = VocabBridge(target_tokenizer, draft_tokenizer)
    assert len(bridge) == 8 and bridge.draft_of(target_tokenizer.convert_tokens_to_ids("i")) is None
    target = model("qwen2_5_vl", vocab=VOCAB, init=0.5, hidden=32, layers=1)
    draft = twin_draft(target, "llava_onevision", bridge, vocab=VOCAB, init=0.5, hidden=32, layers=1)
    assert_cross_family_sampling_is_the_targets(
        target, draft, tokenizer=target_tokenizer, draft_tokenizer=draft_tokenizer
    )
