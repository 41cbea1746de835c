"""Streaming the answer: `AnswerStreamer`, the one base of every HF-protocol streamer we pass to `generate` (HF and
ours both call `put(prompt ids)` first, then `put(new ids)` per step or round, then `end()`), and `AnswerText`,
the answer's text as its tokens arrive.

The whole answer is decoded each time (a token's text can depend on its neighbours), and a half multi-byte
character is held back until the rest of it arrives. Subclasses: `PrintStreamer` (the command line),
`target_only.Clock` (time to first token of HF's generate), `serve.worker.TextSink` (the server's deltas, cut at
stop strings) and `bench.measure.FirstTokenTimer`."""

from __future__ import annotations

import sys
import time


class AnswerText:
    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.shown = tokenizer, [], ""

    def decode(self, tokens: list[int]) -> str:
        """The text of answer tokens (special tokens dropped)."""
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def current(self, final: bool = False) -> str | None:
        """The whole answer's text so far; None while its last character is incomplete (unless `final`)."""
        text = self.decode(self.tokens)
        return None if text.endswith("\ufffd") and not final else text

    def add(self, ids: list[int]) -> str:
        """The text the new token `ids` add ('' while a multi-byte character is incomplete)."""
        self.tokens += ids
        text = self.current()
        if text is None:
            return ""
        piece, self.shown = text[len(self.shown) :], text
        return piece

    def rest(self) -> str:
        """What is left to show once no more tokens come."""
        text = self.current(final=True) or ""  # never None when final
        piece, self.shown = text[len(self.shown) :], text
        return piece


class AnswerStreamer:
    """An HF streamer that skips the prompt (the first `put`) and hands each later `put`'s new token ids to
    `on_tokens`, noting when the first and the latest arrived (perf_counter seconds); `end()` calls `on_end`."""

    def __init__(self):
        self.prompt_seen = False
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self.last_at: float | None = None

    def put(self, ids) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.last_at = time.perf_counter()
        if self.first_at is None:
            self.first_at = self.last_at
        self.on_tokens(ids.reshape(-1).tolist())

    def end(self) -> None:
        self.on_end()

    def on_tokens(self, ids: list[int]) -> None:
        pass

    def on_end(self) -> None:
        pass


class PrintStreamer(AnswerStreamer):
    """Prints the answer as it is accepted; the speculative and the target-only generate both feed it."""

    def __init__(self, tokenizer, file=None):
        super().__init__()
        self.text, self.file = AnswerText(tokenizer), file or sys.stdout

    def on_tokens(self, ids: list[int]) -> None:
        print(self.text.add(ids), end="", file=self.file, flush=True)

    def on_end(self) -> None:
        print(self.text.rest(), file=self.file, flush=True)  # and the newline that ends the answer
