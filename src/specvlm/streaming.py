"""The answer's text as its tokens arrive, for `SpeculativeGenerator.stream` and the command line's printing.

The whole answer is decoded each time (a token's text can depend on its neighbours), and a half multi-byte
character is held back until the rest of it arrives."""

from __future__ import annotations

import sys


class AnswerText:
    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.shown = tokenizer, [], ""

    def add(self, ids: list[int]) -> str:
        """The text the new token `ids` add ('' while a multi-byte character is incomplete)."""
        self.tokens += ids
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece

    def rest(self) -> str:
        """What is left to show once no more tokens come."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        piece, self.shown = text[len(self.shown) :], text
        return piece


class PrintStreamer:
    """An HF streamer (`put(prompt ids)`, `put(new ids)` per round or token, `end()`) that prints the answer as it
    is accepted; the speculative and the target-only generate both feed it."""

    def __init__(self, tokenizer, file=None):
        self.text, self.file, self.prompt_seen = AnswerText(tokenizer), file or sys.stdout, False

    def put(self, ids) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        print(self.text.add(ids.reshape(-1).tolist()), end="", file=self.file, flush=True)

    def end(self) -> None:
        print(self.text.rest(), file=self.file, flush=True)  # and the newline that ends the answer
