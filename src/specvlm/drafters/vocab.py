"""Drafts with another vocabulary (issue 21): the draft's tokens and the target's are bridged through text.

The rule is token-level intersection (TLI; Timor et al., ICML 2025, "Accelerating LLM Inference with Lossless
Speculative Decoding Algorithms for Heterogeneous Vocabularies"; HF's universal assisted decoding uses it for text
models):

- **Shared tokens.** A draft token and a target token are the same when they spell the same bytes. A token's
  bytes are the UTF-8 of the text it decodes to after an anchor token, so SentencePiece's dropped leading space
  and byte-level BPE's `Ġ` both give " the". A token holding part of a character (it decodes to U+FFFD) is read
  from its raw form instead: `<0xC3>` (SentencePiece's byte fallback) or a byte-level BPE's byte alphabet; any
  other such token has no twin. Ordinary entries only: special and added tokens (end of turn, chat markers,
  visual placeholders) are never proposed and never mapped.
- **What the draft proposes.** Its distribution over the target's ids: its softmax restricted to the shared
  tokens and renormalised; every other target id gets q = 0 (`target_logits` puts -inf there).
- **Why the output is exact.** Speculative sampling, and the tree verifier in verify.py, return tokens distributed
  exactly as the target's p for *any* proposal distribution q over the target's ids; greedy verification accepts a
  token only when it is the target's argmax. The bridge decides how often proposals are right, never what is
  output.
- **Why TLI.** String-level rejection sampling (the paper's SLRS) accepts more where tokenizations differ, but
  needs string probabilities summed over tokenizations and does not verify one target token per node. TLI fits
  the tree verifier unchanged.
- **What the draft reads.** Committed target tokens with a shared twin are fed as the draft's own id. Runs
  without one are decoded to text and re-tokenized by the draft's tokenizer, as HF does. The draft may so see a
  tokenization it would not have produced for the whole text; that changes its proposals, not the output.
"""

from __future__ import annotations

import functools
import re

import torch

from ..compat import IncompatibleDraft, check_tokenizers, reads_other_inputs, shares_vocabulary
from .base import onto_target_ids

REPLACEMENT = "\ufffd"  # what an incomplete UTF-8 byte sequence decodes to
MIN_SHARED = 0.1  # below this share of the draft's ordinary tokens, the draft could hardly propose anything
PADDING_SLACK = 1024  # padded vocabularies of one tokenizer differ by fewer rows (e.g. 151936 vs 152064)


def vocabulary_bridge(target, draft, target_tokenizer, draft_tokenizer):
    """None when `draft` generates in the target's vocabulary; a `VocabBridge` when it is of another
    input group with a vocabulary of its own (its tokens then cross through text). Refused in one line: a draft of
    the target's group with another tokenizer (it would read the target's prompt ids); without both tokenizers, a
    draft whose vocabulary size differs by more than padding (nothing can tell whether the ids agree); a pair
    sharing too few tokens for the draft to propose anything."""
    if target_tokenizer is None or draft_tokenizer is None:
        if abs(target.vocab_size - draft.vocab_size) > PADDING_SLACK:
            raise IncompatibleDraft(
                f"the draft's vocabulary has {draft.vocab_size} entries, the target's {target.vocab_size}: pass "
                "tokenizer= and draft_tokenizer= so that the two vocabularies can be checked and bridged"
            )
        return None
    if shares_vocabulary(target_tokenizer, draft_tokenizer):
        return None
    if not reads_other_inputs(target, draft):
        check_tokenizers(target_tokenizer, draft_tokenizer)  # raises: one prompt, so one tokenizer
    bridge = VocabBridge(target_tokenizer, draft_tokenizer)
    if len(bridge) < MIN_SHARED * bridge.ordinary[1]:
        raise IncompatibleDraft(
            f"draft and target vocabularies share only {len(bridge)} of the draft's {bridge.ordinary[1]} ordinary "
            f"tokens (fewer than {MIN_SHARED:.0%}): the draft could hardly propose anything the target can accept"
        )
    return bridge


class VocabBridge:
    """The shared tokens of a target and a draft tokenizer, and the conversions across them.

    `pairs`: (target id, draft id) per shared token. Host tables for the committed tokens the draft is fed;
    device tables, built once per device and width, for the hot path (`target_logits`, `draft_ids`)."""

    def __init__(self, target_tokenizer, draft_tokenizer):
        self.target_tokenizer, self.draft_tokenizer = target_tokenizer, draft_tokenizer
        target_bytes, draft_bytes = token_bytes(target_tokenizer), token_bytes(draft_tokenizer)
        target_ids, draft_ids = by_bytes(target_bytes, target_tokenizer), by_bytes(draft_bytes, draft_tokenizer)
        shared = sorted(target_ids.keys() & draft_ids.keys(), key=target_ids.__getitem__)
        self.pairs = [(target_ids[spelled], draft_ids[spelled]) for spelled in shared]
        self.ordinary = (len(target_bytes), len(draft_bytes))  # ordinary tokens with known bytes, per side
        self._draft_of: dict[int, int] = {t: d for t, d in self.pairs}
        self._anchor = _anchor(target_tokenizer)
        self._anchor_text = _decoded(target_tokenizer, self._anchor)  # decoded once, not every round
        self.filler = _filler(draft_tokenizer)  # fed where a text has no draft token at all
        self._tables: dict = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def draft_of(self, target_id: int) -> int | None:
        """The draft's twin of a target token, or None."""
        return self._draft_of.get(target_id)

    def to_draft(self, target_ids: list[int]) -> list[int]:
        """Committed target tokens as the draft reads them: twins one for one, each run of tokens without a twin
        decoded and re-tokenized (runs, not single tokens, so that a character split over several byte tokens
        is decoded whole)."""
        out: list[int] = []
        run: list[int] = []
        for token in target_ids:
            twin = self._draft_of.get(token)
            if twin is None:
                run.append(token)
                continue
            if run:
                out += self._retokenize(run)
                run = []
            out.append(twin)
        if run:
            out += self._retokenize(run)
        return out

    def _retokenize(self, target_ids: list[int]) -> list[int]:
        text = decode_after(self.target_tokenizer, self._anchor, self._anchor_text, target_ids)
        return self.draft_tokenizer.encode(text, add_special_tokens=False) if text else []

    def target_logits(self, logits: torch.Tensor, width: int) -> torch.Tensor:
        """Draft logits (..., Vd) as logits over the target's `width` ids: shared tokens carry the draft's value,
        every other id -inf (q = 0 after the softmax)."""
        targets, drafts, _ = self._device_tables(logits.device, width, logits.shape[-1])
        return onto_target_ids(logits[..., drafts], targets, width)

    def draft_ids(self, target_ids: torch.Tensor, width: int, draft_width: int) -> torch.Tensor:
        """Proposed target ids (any shape) as the draft's ids, on their device. Ids without a twin (q = 0: only a
        tree wider than the shared support picks them) are fed as the filler; `commit` never keeps them."""
        _, _, table = self._device_tables(target_ids.device, width, draft_width)
        return table[target_ids]

    def _device_tables(self, device: torch.device, width: int, draft_width: int):
        key = (device, width, draft_width)
        if key not in self._tables:
            kept = [(t, d) for t, d in self.pairs if t < width and d < draft_width]
            host = torch.tensor(kept, dtype=torch.long, device="cpu").reshape(-1, 2)
            table = torch.full((width,), self.filler, dtype=torch.long, device="cpu")
            table[host[:, 0]] = host[:, 1]
            self._tables[key] = (host[:, 0].to(device), host[:, 1].to(device), table.to(device))
        return self._tables[key]


def token_bytes(tokenizer) -> dict[int, bytes]:
    """id -> the bytes the token spells in the middle of a text, for the ordinary tokens whose bytes are known."""
    special = set(getattr(tokenizer, "added_tokens_decoder", {})) | set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    anchor = _anchor(tokenizer)
    prefix = _decoded(tokenizer, anchor)
    decoded = tokenizer.batch_decode(
        [anchor + [i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    raw_bytes = _raw_bytes_reader(tokenizer)
    spelled = {}
    for i, text in zip(ids, decoded):
        if text.startswith(prefix) and len(text) > len(prefix) and REPLACEMENT not in text:
            spelled[i] = text[len(prefix) :].encode("utf-8")
        else:  # part of a character
            piece = raw_bytes(tokenizer.convert_ids_to_tokens(i))
            if piece:
                spelled[i] = piece
    return spelled


def by_bytes(spelled: dict[int, bytes], tokenizer) -> dict[bytes, int]:
    """bytes -> the id that stands for them. Where several ids spell the same (e.g. a byte-fallback `<0x20>` and
    `▁`), the one the tokenizer itself produces for that text, else the lowest."""
    ids: dict[bytes, int] = {}
    clashes: set[bytes] = set()
    for i, piece in sorted(spelled.items()):
        if piece in ids:
            clashes.add(piece)
        else:
            ids[piece] = i
    for piece in clashes:
        text = piece.decode("utf-8", errors="replace")
        canonical = tokenizer.encode(text, add_special_tokens=False) if REPLACEMENT not in text else []
        if len(canonical) == 1 and spelled.get(canonical[0]) == piece:
            ids[piece] = canonical[0]
    return ids


def _raw_bytes_reader(tokenizer):
    """A function from a token's raw form to its bytes (None when unknown): `<0xNN>` byte fallback, or a byte-level
    BPE's alphabet (GPT-2's: each byte one printable character) when the tokenizer decodes with it."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    alphabet = _byte_alphabet() if type(decoder).__name__ == "ByteLevel" else {}

    def read(raw: str) -> bytes | None:
        match = _BYTE_FALLBACK.fullmatch(raw)
        if match:
            return bytes([int(match.group(1), 16)])
        if alphabet and all(c in alphabet for c in raw):
            return bytes(alphabet[c] for c in raw)
        return None

    return read


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_alphabet() -> dict[str, int]:
    """character -> byte in the byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the other
    bytes (controls, space, 0x7F-0xA0, 0xAD) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if chr(b) not in table)
    table.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return table


def decode_after(tokenizer, anchor: list[int], anchor_text: str, ids: list[int]) -> str:
    """The text `ids` spell in the middle of a text (after `anchor`, which decodes to `anchor_text`), not as the
    start of one."""
    text = _decoded(tokenizer, anchor + ids)
    return text[len(anchor_text) :] if text.startswith(anchor_text) else _decoded(tokenizer, ids)


def _decoded(tokenizer, ids: list[int]) -> str:
    """Exactly the text of `ids`: special tokens kept, no clean-up of spaces."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _anchor(tokenizer) -> list[int]:
    return tokenizer.encode("a", add_special_tokens=False)


def _filler(tokenizer) -> int:
    for token in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if token is not None:
            return int(token)
    return 0
