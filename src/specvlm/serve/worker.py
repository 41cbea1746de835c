"""One model worker thread, its bounded queue, and the running batch (continuous batching).

One thread owns the models and a running `DecodeBatch` of at most --max-batch requests. A submitted request's inputs
are built first by a small pool of prepare threads (media decoding and processors, the same pipeline `specvlm
generate` runs), so that no round waits for a video to decode. Between two rounds the model thread admits prepared
requests (each prefilled on its own, then decoding with the others from the next round on),
drops requests whose client left or whose deadline passed, and runs one round for every running request: a
request's answer never waits for another request to finish, only for the round it shares. Request handlers (the
asyncio side) `submit` a Job and read its events; the worker turns the job's files into model inputs (the generate
pipeline), and pushes events back onto the handler's loop:

    Started(prompt_tokens)  the inputs are built; from here a streamed answer's headers can go out
    Delta(text)             new answer text (cut before the first stop string)
    Finished(...)           finish_reason, usage, speculation stats
    Failed(APIError)        a 4xx / 5xx for the client (bad media, prompt too long, ..., or a bug: 500)

Each request's tokens go through Hugging Face's streamer protocol (`put(ids)` once per round). `put` raises `Stop`
when the client went away, the deadline passed or a stop string appeared: the request leaves the batch at that
round and its slots are reused. `--max-batch 1` serves one request at a time (the engine before batching).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.streaming import AnswerStreamer, AnswerText
from ..errors import SpecVLMError
from .errors import APIError, internal, shutting_down, timed_out
from .media import TurnFiles
from .schema import Decoding

log = logging.getLogger("specvlm.serve")


@dataclass
class Started:
    prompt_tokens: int


@dataclass
class Delta:
    text: str
    logprobs: list[dict] | None = None  # OpenAI's logprobs "content" entries of the tokens reported with this text


@dataclass
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) | "length"
    usage: dict
    stats: dict  # the response's "specvlm" object
    logprobs: list[dict] | None = None  # entries of the answer's last tokens, not reported with a Delta


@dataclass
class Failed:
    error: APIError


class Stop(Exception):
    """Raised from the streamer to abandon generation at the current round (and from `Job.check` to abandon the
    decoding of its media)."""

    def __init__(self, reason: str):  # "stop" (a stop string), "disconnect", "timeout", "shutdown"
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class Job:
    files: TurnFiles
    decoding: Decoding
    timeout: float | None  # seconds from arrival to the last token (--request-timeout), or None
    workdir: Path | None  # the request's temporary folder, removed when the job ends
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.monotonic)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: str | None = None  # why the job should stop: "disconnect", "timeout", "shutdown"
    first_token: float | None = None
    prepared: tuple | None = None  # (model inputs, decoding request, seconds it took), once prepared
    preparing_since: float | None = None  # when a prepare thread began building its inputs
    client_seen: float = field(default_factory=time.monotonic)  # when the handler last found its client connected

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    def cancel(self, reason: str) -> None:
        self.cancelled = self.cancelled or reason

    @property
    def deadline(self) -> float | None:
        return None if self.timeout is None else self.arrived + self.timeout

    def stop_reason(self) -> str | None:
        if self.cancelled:
            return self.cancelled
        if self.timeout is not None and time.monotonic() > self.deadline:
            return "timeout"
        return None

    def check(self) -> None:
        """Raises `Stop` once the job should stop (called while its media decode, and after each round)."""
        reason = self.stop_reason()
        if reason:
            raise Stop(reason)

    def clean(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def stop_point(text: str, stops: tuple[str, ...], final: bool, shown: int = 0) -> tuple[int, bool]:
    """(how much of `text` may be shown, whether a stop string ends it). The answer ends before the earliest stop
    string (not returned, as in OpenAI's API); until generation is over, a tail that could still grow into a stop
    string is held back. `shown`: how much an earlier call let out; no stop string ended before it, so the search
    starts a stop string's length before it. A round costs O(new text + the stop strings' length), the answer
    O(its length) (a full search each round would cost the square)."""
    hits = [i for i in (text.find(s, max(0, shown - len(s) + 1)) for s in stops) if i >= 0]
    if hits:
        return min(hits), True
    if final:
        return len(text), False
    return len(text) - max((partial_stop(text, s) for s in stops), default=0), False


def partial_stop(text: str, stop: str) -> int:
    """The longest k < len(stop) such that `text` ends with stop[:k] (what could still grow into `stop`): the
    Knuth-Morris-Pratt automaton of `stop` run over the text's last len(stop) - 1 characters, O(len(stop))."""
    fallback = _prefix_function(stop)
    k = 0
    for char in text[len(text) - len(stop) + 1 :] if len(stop) > 1 else "":
        while k and stop[k] != char:
            k = fallback[k - 1]
        if stop[k] == char:
            k += 1
    return k  # < len(stop): the tail is shorter than `stop`


@functools.lru_cache(maxsize=64)
def _prefix_function(s: str) -> tuple[int, ...]:
    """KMP's table: out[i] = the length of the longest proper prefix of s[: i + 1] that is also its suffix."""
    out = [0] * len(s)
    for i in range(1, len(s)):
        k = out[i - 1]
        while k and s[i] != s[k]:
            k = out[k - 1]
        out[i] = k + (s[i] == s[k])
    return tuple(out)


class TextSink(AnswerStreamer):
    """Turns tokens into answer text the way `SpeculativeGenerator.stream` does (`AnswerText`: the whole answer
    decoded each time, a half multi-byte character held back) and emits it, cut at stop strings; raises `Stop` when
    a stop string, a cancel or a deadline ends the answer.

    With logprobs (`logprobs`: the request's `token_logprobs`, which the batch fills before each `put`), every Delta
    carries the entries of the tokens received since the last one. When a stop string ends the answer, the answer's
    tokens end with the one that completed it (as when decoding one token a step): later tokens of that round are
    neither reported nor counted in the usage."""

    def __init__(self, job: Job, tokenizer, eos: set[int], logprobs: list | None = None):
        super().__init__()
        self.job, self.eos, self.text = job, eos, AnswerText(tokenizer)
        self.shown = 0
        self.stopped = False  # a stop string ended the answer
        self.logprobs, self.reported = logprobs, 0
        self.before_round = 0  # tokens before the latest round: none of them completed a stop string

    @property
    def tokens(self) -> list[int]:
        return self.text.tokens

    def on_tokens(self, ids: list[int]) -> None:
        self.before_round = len(self.text.tokens)
        self.text.tokens += ids
        if self.job.first_token is None:  # the first tokens of the answer
            self.job.first_token = time.monotonic()
        if self._flush(final=False):
            raise Stop("stop")
        self.job.check()

    def on_end(self) -> None:
        self._flush(final=True)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped or (self.tokens and self.tokens[-1] in self.eos) else "length"

    def unreported(self) -> list[dict] | None:
        """The logprobs entries of the tokens not reported yet (None without logprobs)."""
        if self.logprobs is None:
            return None
        new = self.logprobs[self.reported : len(self.tokens)]
        self.reported += len(new)
        return logprob_entries(self.text.tokenizer, new)

    def _flush(self, final: bool) -> bool:
        text = self.text.current(final)
        if text is None:
            return False
        cut, self.stopped = stop_point(text, self.job.decoding.stop, final, self.shown)
        if self.stopped:
            del self.text.tokens[self._tokens_through_stop() :]
        if cut > self.shown:
            self.job.emit(Delta(text[self.shown : cut], self.unreported()))
            self.shown = cut
        return self.stopped

    def _tokens_through_stop(self) -> int:
        """How many tokens the answer has up to the one whose text completed a stop string (one of the latest
        round's: the text before it held none)."""
        tokens, stops = self.text.tokens, self.job.decoding.stop
        for count in range(self.before_round + 1, len(tokens)):
            if stop_point(self.text.decode(tokens[:count]), stops, final=True, shown=self.shown)[1]:
                return count
        return len(tokens)


def logprob_entries(tokenizer, items: list) -> list[dict]:
    """OpenAI's logprobs "content" entries for `TokenLogprob`s: each token's text (the token decoded alone, as vLLM
    gives it: a piece of a multi-byte character reads U+FFFD), its UTF-8 bytes, its log-probability, and the most
    likely tokens at its position."""
    ids = sorted({t for item in items for t in (item.token, *(i for i, _ in item.top))})
    texts = dict(zip(ids, tokenizer.batch_decode([[i] for i in ids])))

    def entry(token: int, logprob: float) -> dict:
        return {"token": texts[token], "logprob": logprob, "bytes": list(texts[token].encode())}

    return [{**entry(item.token, item.logprob), "top_logprobs": [entry(i, lp) for i, lp in item.top]} for item in items]


@dataclass(eq=False)
class Running:
    """A request in the batch: its job, where its text goes, and when it was admitted."""

    job: Job
    sink: TextSink
    prompt_tokens: int
    admitted: float
    row: object = None  # its `batch.Row`


PREPARE_THREADS = 2  # requests whose inputs (video decoding, processors) are built at once, beside the model thread
STUCK_TIMEOUT_S = 300.0  # a round, or a request's input preparation, running longer is a hang: /health says 503


class Worker:
    """The model thread: admits prepared jobs in order from a queue of at most `max_queue` waiting jobs into a running
    batch of at most `max_batch`. A job's inputs (its media decoded, the processors run) are built first, by
    PREPARE_THREADS threads beside the model thread, so decoding rounds never wait for a video to decode."""

    def __init__(self, engine, max_queue: int, metrics, max_batch: int = 1, stuck_timeout: float = STUCK_TIMEOUT_S):
        from concurrent.futures import ThreadPoolExecutor

        self.engine, self.max_queue, self.metrics, self.max_batch = engine, max_queue, metrics, max_batch
        self.stuck_timeout = stuck_timeout
        self.beat = time.monotonic()  # the model thread's latest sign of life: around each wait, after each round
        self._admitted: set[object] = set()  # places held by requests whose body is read or media written (admit)
        self._preparing: set[Job] = set()
        self._waiting: deque[Job] = deque()  # prepared, in the order they became so
        self._cond = threading.Condition()
        self._running: list[Running] = []
        self._joining: list[Job] = []  # taken from the queue, being prefilled (or dropped) by the model thread
        self._stopping = False
        self._prepare_pool = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="specvlm-prepare")
        self._thread = threading.Thread(target=self._loop, name="specvlm-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in [*self._waiting, *self._preparing]:
                job.cancel("shutdown")
                job.emit(Failed(shutting_down()))
            for job in self._waiting:
                job.clean()
            self._waiting.clear()
            for running in self._running:
                running.job.cancel("shutdown")
            self._cond.notify_all()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._thread.join(timeout)

    @property
    def queue_length(self) -> int:
        return len(self._waiting) + len(self._preparing) + len(self._admitted)

    @property
    def running(self) -> int:
        return len(self._running) + len(self._joining)  # a request being prefilled runs already

    def problem(self) -> str | None:
        """Why the worker cannot serve (for /health), or None: its model thread died, a round has run longer than
        `stuck_timeout` seconds, or a request's inputs have been preparing that long."""
        now = time.monotonic()
        if self._stopping:
            return "the server is shutting down"
        if not self._thread.is_alive():
            return "the model worker thread has stopped"
        busy = self._running or self._joining or self._waiting
        if busy and now - self.beat > self.stuck_timeout:
            return f"the model worker has been in one step for {now - self.beat:.0f} s (over {self.stuck_timeout:g} s)"
        started = [job.preparing_since for job in list(self._preparing) if job.preparing_since is not None]
        waited = now - min(started) if started else 0.0
        if waited > self.stuck_timeout:
            return f"a request's inputs have been preparing for {waited:.0f} s (over {self.stuck_timeout:g} s)"
        return None

    def has_room(self) -> bool:
        """Whether one more request would be queued rather than refused (for /ready)."""
        try:
            self.check_room()
        except APIError:
            return False
        return not self._stopping

    def check_room(self) -> None:
        """A 429 when one more request would have to wait behind `max_queue` others: requests being prepared or
        waiting beyond the batch's free places count (so `--max-queue 0` still serves up to `max_batch` at once).
        `admit` asks before a body is read; `submit` asks again for a job that holds no place."""
        free = max(0, self.max_batch - self.running)
        if self.queue_length >= self.max_queue + free:
            raise APIError(
                429,
                f"the server is busy: its queue is full (--max-queue {self.max_queue}); retry later",
                type="rate_limit_error",
                code="queue_full",
            )

    def admit(self) -> object:
        """A place in the queue for a request about to send its body, or a 429 (`check_room`). It is held from
        before the body is read until `submit` takes it over (or `release` frees it when the request fails first):
        so the uploads, decodes and writes under way at once are bounded by --max-queue as well (a hostile client's
        thousand concurrent bodies get 429s, not memory), and a server seen idle has no request folder left."""
        place = object()
        with self._cond:
            if self._stopping:
                raise shutting_down()
            self.check_room()
            self._admitted.add(place)
        return place

    def release(self, place: object) -> None:
        """Free an admitted place (nothing once `submit` has taken it over)."""
        with self._cond:
            self._admitted.discard(place)

    def submit(self, job: Job, place: object | None = None) -> None:
        """Queue `job` in the place `admit` gave it, or, holding none, refuse it with a 429 (`check_room`)."""
        with self._cond:
            if self._stopping:
                raise shutting_down()
            if place in self._admitted:
                self._admitted.discard(place)
            else:
                self.check_room()
            self._preparing.add(job)
        self._prepare_pool.submit(self._prepare, job)

    def cancel(self, job: Job, reason: str) -> None:
        """Stop `job`: dropped at once while it waits, when its inputs are built if it is being prepared, before the
        next round once it runs."""
        with self._cond:
            job.cancel(reason)
            if job in self._waiting:
                job.clean()  # before it stops counting as queued (/metrics reads without the lock)
                self._waiting.remove(job)
                self._record_stop(reason, 0)

    def _prepare(self, job: Job) -> None:
        """A prepare thread: the job's model inputs and decoding request, then into the queue (or its 400)."""
        began = job.preparing_since = time.monotonic()
        failed = None
        if not job.stop_reason():
            try:
                inputs = self.engine.prepare(job.files, job.decoding, check=job.check)
                job.prepared = (inputs, self.engine.request(inputs, job.decoding), time.monotonic() - began)
            except Stop:  # a cancel or the deadline, while its media decoded: stopped below
                pass
            except SpecVLMError as err:  # bad media, a prompt too long for the model, ...: the client's to fix
                failed = APIError(400, self._client_message(err, job), code="invalid_input")
            except Exception as err:  # a bug: the client gets a 500, the log the traceback
                log.exception("preparing the inputs failed")
                failed = internal(err)
        with self._cond:
            reason = job.stop_reason()
            if failed is None and not reason and not self._stopping:
                self._preparing.discard(job)
                if not self._waiting and not self._running:  # the model thread idles in wait(): it is fine now
                    self.beat = time.monotonic()
                self._waiting.append(job)
                self._cond.notify()
                return
        job.clean()  # before the job stops counting as queued: a server seen idle has no request folder left
        with self._cond:
            self._preparing.discard(job)
        if failed is not None:
            job.emit(Failed(failed))
        elif reason and reason != "shutdown":
            self._stopped(job, reason, None)

    def _client_message(self, err: Exception, job: Job) -> str:
        """The error's message without the server's paths (clients need not learn its file system)."""
        message = str(err)
        names = {**self.engine.folder_names, **job.files.names}  # longest first
        for path in sorted(names, key=len, reverse=True):
            message = message.replace(path, names[path])
        return message

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        batch = self.engine.batch(self.max_batch)
        while True:
            with self._cond:
                self.beat = time.monotonic()
                idle = False
                while not self._waiting and not self._running and not self._stopping and not idle:
                    idle = not self._cond.wait(self.engine.keep_alive_s)  # timed out: nothing came
                self.beat = time.monotonic()
                if self._stopping:
                    break
            if idle:
                self.engine.keep_alive(batch)
                continue
            with self._cond:
                while self._waiting and len(self._running) + len(self._joining) < self.max_batch:
                    self._joining.append(self._waiting.popleft())
                joining = list(self._joining)
            for job in joining:
                try:
                    self._join(batch, job)
                finally:  # joined, dropped or failed, and its folder removed if it ended: only now not counted
                    with self._cond:
                        self._joining.remove(job)
            for running in list(self._running):
                reason = running.job.stop_reason()
                if reason:
                    self._leave(batch, running)
                    self._stopped(running.job, reason, running.sink)
            if self._running:
                batch = self._round(batch)
                self.beat = time.monotonic()
        for running in list(self._running):
            self._leave(batch, running)
            self._stopped(running.job, "shutdown", running.sink)
        self.engine.close(batch)

    def _join(self, batch, job: Job) -> None:
        reason = job.stop_reason()
        if reason:
            return self._stopped(job, reason, None)
        inputs, request, _ = job.prepared
        prompt_tokens = int(inputs["input_ids"].shape[1])
        logprobs = request.token_logprobs if request.logprobs is not None else None
        sink = TextSink(job, self.engine.tokenizer, request.eos, logprobs)
        running = Running(job, sink, prompt_tokens, time.monotonic())
        try:
            job.emit(Started(prompt_tokens))
            running.sink.put(request.prompt_ids.cpu())
            running.row, first = batch.add(request, tag=job)
            with self._cond:
                self._running.append(running)
            self._deliver(batch, running, first)
        except SpecVLMError as err:  # the client's to fix, found only now
            self._leave(batch, running)  # its folder removed too
            job.emit(Failed(APIError(400, self._client_message(err, job), code="invalid_input")))
        except Exception as err:  # a bug: the client gets a 500, the log the traceback, the worker goes on
            self._leave(batch, running)  # its folder removed too
            log.exception("generation failed")
            job.emit(Failed(internal(err)))

    def _round(self, batch):
        """One round for every running request; returns the batch to go on with (a fresh one after a bug, which
        fails every request in it: their caches are in an unknown state)."""
        try:
            results = batch.step()
        except Exception as err:
            log.exception("a decoding round failed")
            for running in list(self._running):
                self._forget(running)
                running.job.emit(Failed(internal(err)))
            return self.engine.batch(self.max_batch)
        by_row = {id(r.row): r for r in self._running}
        for row, tokens in results:
            self._deliver(batch, by_row[id(row)], tokens)
        return batch

    def _deliver(self, batch, running: Running, tokens: list[int]) -> None:
        """New tokens to the request's sink; the request ends here when they finish it or the sink stops it."""
        import torch

        try:
            running.sink.put(torch.tensor(tokens, dtype=torch.long, device="cpu"))
        except Stop as stop:
            self._leave(batch, running)
            if stop.reason != "stop":
                return self._stopped(running.job, stop.reason, running.sink)
            return self._finish(running)
        if running.row.done:
            self._forget(running)
            self._finish(running)

    def _finish(self, running: Running) -> None:
        job, sink = running.job, running.sink
        sink.end()
        inputs_s = job.prepared[2]
        stats = dict(
            self.engine.stats(sink, running.row.stats),
            inputs_s=inputs_s,
            queue_s=running.admitted - job.arrived - inputs_s,
        )
        usage = dict(
            prompt_tokens=running.prompt_tokens,
            completion_tokens=len(sink.tokens),
            total_tokens=running.prompt_tokens + len(sink.tokens),
        )
        self.metrics.generated(job, usage, stats)
        job.emit(Finished(sink.finish_reason, usage, stats, sink.unreported()))  # its folder went as it left

    def _leave(self, batch, running: Running) -> None:
        """`running` stops decoding: out of the batch (if still in it: a finished row left by itself), its folder
        removed."""
        if running.row is not None and running.row in batch.rows:
            batch.remove(running.row)
        self._forget(running)

    def _forget(self, running: Running) -> None:
        """`running` no longer counts as running; its folder is removed first, so a server seen idle (/metrics reads
        the counts without the lock) has no request folder left."""
        running.job.clean()
        with self._cond:
            if running in self._running:
                self._running.remove(running)

    def _stopped(self, job: Job, reason: str, sink: TextSink | None) -> None:
        job.clean()
        self._record_stop(reason, len(sink.tokens) if sink else 0)
        if reason == "timeout":
            job.emit(Failed(timed_out(job.timeout)))

    def _record_stop(self, reason: str, tokens: int) -> None:
        log.info("request stopped (%s) after %d new tokens", reason, tokens)
        self.metrics.cancelled(reason, tokens)
