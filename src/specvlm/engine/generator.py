"""SpeculativeGenerator: the public face of the decode loop (batch.py runs it).

    prefill each row's target alone (all visual tokens) -> its first token (the root); prefill the drafter's row
    each round, all rows at once: draft a tree below every root; verify every [root, *tree] in ONE target forward
                (tree masks, positions by depth, per row); accept a path per row; keep its K/V in both caches; the
                target's next token becomes the row's new root
    a row stops at EOS or max_new_tokens, its last round cut like HF `generate` does, and leaves the batch

The loop never looks at the model family: adapters hide it. Output is exactly the target's, row by row:
token-identical to `target.generate(do_sample=False)` on each row alone when greedy, the same distribution when
sampling.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..adapters import adapter_for
from ..compat import check_models, reads_other_inputs
from ..drafters import Drafter, DraftModelDrafter
from ..drafters.base import NoDraft
from ..drafters.pruning import DraftView
from ..drafters.vocab import vocabulary_bridge
from ..errors import SpecVLMError
from ..options import DEFAULT_KEEP_RATIO, DecodeConfig
from .batch import DecodeBatch, Row
from .request import BatchRequest, Request, resolve
from .session import ModelSession, StaticSession
from .stats import SpecStats
from .streaming import AnswerText
from .tree import TreeSpec


@dataclass
class SpecOutput:
    token_ids: list  # new tokens only, cut after EOS like HF generate; a list per row for a batch > 1
    text: str | list | None  # their text (a list per row for a batch > 1), when a tokenizer is known
    stats: SpecStats  # the whole call (for a batch: summed over rows; τ per row and round)
    sequences: torch.Tensor | None = None  # (B, L + n): the prompt as given, then the new tokens (HF's tensor;
    # rows that end early are padded with pad_token_id)
    scores: tuple | None = None  # output_scores=True: processed scores (B, V) per new token, like HF's
    logits: tuple | None = None  # output_logits=True: raw logits (B, V) per new token
    row_stats: list[SpecStats] | None = None  # per row of the batch


class SpeculativeGenerator:
    """`SpeculativeGenerator(target, draft, **options)`; `draft` is an HF VLM (of the target's family, or of another:
    it then reads its own `draft_inputs`, which `generate` requires), a Drafter (e.g. an EagleHead), "self" (the
    target drafts from a pruned view of its prompt: set `pruning`), or None (the target alone through the same
    engine, at its own speed). There is no default draft: none that is known to pay. A draft of another family with
    a vocabulary of its own needs both tokenizers (`tokenizer` or `processor`, and `draft_tokenizer` or
    `draft_processor`): its tokens then cross through text (`drafters.vocab`, token-level intersection).

    Options: `tree` ("chain" | "static" | "dynamic"; default: the drafter's — "static", the video paper's EAGLE-1
    tree, for draft models; "dynamic", EAGLE-2's, for EagleHead),
    `num_draft_tokens` (chain length γ, default 5), `confidence_threshold` (chain: stop drafting after a token the
    draft gave probability below it, as HF assisted generation does; default 0 = always γ), `tree_top_k` (10),
    `tree_depth` (6, longest path in draft tokens), `tree_total_tokens` (60, tokens verified per round including
    the root), `processor` / `tokenizer` (for `.text` and `stream`).

    Visual pruning of the draft's prompt (the target always sees everything): `pruning` ("none" or a method of
    `specvlm.drafters.pruning.METHODS`, e.g. "specvlm"), `visual_keep_ratio` (default 0.1), `stage1_mass` (λ, 0.4),
    `draft_positions` ("original": kept tokens keep their position ids, the default for Qwen's M-RoPE;
    "contiguous": the shorter prompt is renumbered, the default otherwise), `pruning_seed` (for "random").
    """

    def __init__(
        self,
        target,
        draft,
        *,
        processor=None,
        tokenizer=None,
        draft_processor=None,
        draft_tokenizer=None,
        config: DecodeConfig | None = None,
        **options,
    ):
        # options: DecodeConfig's fields as keywords (tree, num_draft_tokens, pruning, engine, compile, ...)
        if config is not None and options:
            raise SpecVLMError("give a DecodeConfig or its options as keywords, not both")
        try:
            config = config or DecodeConfig(**options)
        except TypeError:  # an unknown keyword
            unknown = sorted(set(options) - set(DecodeConfig.__dataclass_fields__) - {"spell"})
            raise SpecVLMError(
                f"SpeculativeGenerator got unknown options {unknown}; it takes "
                f"{', '.join(f for f in DecodeConfig.__dataclass_fields__ if f != 'spell')}"
            ) from None
        self.config = config
        self.model = target
        self.target = adapter_for(target)
        self.tokenizer = tokenizer or getattr(processor, "tokenizer", processor)
        if isinstance(draft, Drafter):
            self.drafter = draft
        elif draft is None:
            self.drafter = NoDraft()
        elif isinstance(draft, str) and draft == "self":
            self.drafter = DraftModelDrafter(adapter_for(target), reuse_target_prompt=True)
        elif isinstance(draft, str):
            raise SpecVLMError(f"draft must be a model, 'self', None or a Drafter, got the string {draft!r}")
        else:
            draft_adapter = adapter_for(draft)
            check_models(self.target, draft_adapter)
            draft_tokenizer = draft_tokenizer or getattr(draft_processor, "tokenizer", draft_processor)
            self.drafter = DraftModelDrafter(
                draft_adapter,
                own_inputs=reads_other_inputs(self.target, draft_adapter),
                bridge=vocabulary_bridge(self.target, draft_adapter, self.tokenizer, draft_tokenizer),
            )
        self.tree = TreeSpec(
            kind=config.tree or self.drafter.default_tree,
            num_draft_tokens=config.num_draft_tokens,
            top_k=config.tree_top_k,
            depth=config.tree_depth,
            total_tokens=config.tree_total_tokens,
            confidence_threshold=config.confidence_threshold,
        )
        self.draft_view = DraftView(
            config.pruning,
            DEFAULT_KEEP_RATIO if config.visual_keep_ratio is None else config.visual_keep_ratio,
            config.stage1_mass,
            config.pruning_seed,
            (config.draft_positions or ("original" if self.target.uses_mrope else "contiguous")) == "contiguous",
        )
        if self.reads_own_inputs and self.draft_view.prunes:
            raise SpecVLMError(
                f"visual pruning hands the draft the target's visual tokens, but a {self.drafter.adapter.family} draft "
                f"reads its own for a {self.target.family} target: drop pruning, or use a draft of the target's family"
            )
        self.engine = config.engine
        self.compile = config.engine == "fast" and (
            self.target.device.type == "cuda" if config.compile == "auto" else config.compile
        )
        self._sessions: list = []
        self.stats = SpecStats()

    @property
    def mode(self) -> str:
        """ "speculative", or "target-only" when drafting nothing (`draft=None`: the same engine, one token a
        round; what a batched server compares speculation against)."""
        return "target-only" if isinstance(self.drafter, NoDraft) else "speculative"

    # ---- public API ------------------------------------------------------------------------------------------
    def generate(self, input_ids=None, **kwargs) -> SpecOutput:
        """Like `target.generate(**inputs, **kwargs)`, with the same keywords (`max_new_tokens`, `max_length`,
        `do_sample`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `eos_token_id`, `pad_token_id`,
        `generation_config`, `streamer`, `return_dict_in_generate`, `output_scores`, `output_logits`, ...; see
        `specvlm.engine.request`); unset options come from the target's generation_config, as in HF. A batch (a
        left-padded processor output for B prompts, each with its own images / video) decodes all rows together;
        row b's tokens are those of `target.generate` on row b alone. Also `draft_inputs` (the draft's own processor
        outputs, when its preprocessing differs from the target's) and `generator` (a torch.Generator for sampling).
        `out.sequences` is the tensor `target.generate` returns."""
        request = self._resolve(input_ids, kwargs)
        if len(request.rows) == 1:
            tokens = [t for chunk in self._run(request) for t in chunk]
            rows = [(request.rows[0], tokens, self.stats)]
        else:
            rows = self._run_batch(request)
        return self._output(request, rows)

    def stream(self, input_ids=None, **kwargs) -> Iterator[str]:
        """Yields the answer's text as rounds are accepted (a batch of one); `self.stats` is complete once it is
        exhausted."""
        if self.tokenizer is None:
            raise ValueError("stream() needs a processor or tokenizer: SpeculativeGenerator(..., processor=...)")
        request = self._resolve(input_ids, kwargs)
        if len(request.rows) != 1:
            raise SpecVLMError(f"stream() takes one sequence; this batch has {len(request.rows)} rows: use generate()")
        text = AnswerText(self.tokenizer)
        for chunk in self._run(request):
            piece = text.add(chunk)
            if piece:
                yield piece
        piece = text.rest()
        if piece:
            yield piece

    def request(self, input_ids=None, **kwargs) -> Request:
        """One sequence's decoding request, resolved exactly as `generate(input_ids, **kwargs)` resolves it (what
        `DecodeBatch.add` takes)."""
        request = self._resolve(input_ids, kwargs)
        if len(request.rows) != 1 or request.streamer is not None:
            raise SpecVLMError("request() takes one sequence and no streamer")
        return request.rows[0]

    def batch(self, max_rows: int) -> DecodeBatch:
        """A running batch of at most `max_rows` sequences for this generator's models (what `specvlm serve`
        decodes with): `add(request)` rows as they come, `step()` a round for all of them."""
        return DecodeBatch(self, max_rows)

    @property
    def reads_own_inputs(self) -> bool:
        """Whether the draft is of another family than the target and so reads its own `draft_inputs`."""
        return bool(getattr(self.drafter, "own_inputs", False))

    # ---- internals -------------------------------------------------------------------------------------------
    def _resolve(self, input_ids, kwargs) -> BatchRequest:
        draft_adapter = getattr(self.drafter, "adapter", None)
        if self.reads_own_inputs and not kwargs.get("draft_inputs"):
            raise SpecVLMError(
                f"a {draft_adapter.family} draft for a {self.target.family} target reads the request through its "
                "own processor and chat template: pass draft_inputs= (its processor's output for the same request; "
                "specvlm.inputs.prepare_inputs builds both)"
            )
        return resolve(
            self.model.generation_config,
            input_ids,
            kwargs,
            split=self.target.split_batch,
            draft_split=getattr(draft_adapter, "split_batch", None),
            accepts=self.target.unknown_inputs,
        )

    def _decode_text(self, tokens: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _run(self, request: BatchRequest):
        """A batch of one, chunk by chunk (new token ids per round), fed to the request's streamer on the way (HF's
        protocol: the prompt first, then each chunk, then `end()`)."""
        streamer, one = request.streamer, request.rows[0]
        if streamer is not None:
            streamer.put(one.prompt_ids.cpu())
        started = time.perf_counter()
        batch = DecodeBatch(self, 1)
        row, first = batch.add(one)
        self.stats = row.stats
        chunks = [first]
        while True:
            chunk = chunks.pop()
            if streamer is not None:
                streamer.put(torch.tensor(chunk, dtype=torch.long, device="cpu"))
            yield chunk
            if row.done:
                break
            ((_, chunk),) = batch.step()
            chunks.append(chunk)
            row.stats.decode_s = time.perf_counter() - started - row.stats.prefill_s
        if streamer is not None:
            streamer.end()

    def _run_batch(self, request: BatchRequest) -> list[tuple]:
        """Every row of a batch: all join (each prefilled alone), then rounds until all have finished."""
        started = time.perf_counter()
        batch = DecodeBatch(self, len(request.rows), fixed=True)
        rows: list[Row] = [batch.add(one)[0] for one in request.rows]
        prefilled = time.perf_counter()
        while len(batch):
            batch.step()
        self.stats = _total([row.stats for row in rows], batch, prefilled - started, time.perf_counter() - prefilled)
        return [(row.request, row.tokens, row.stats) for row in rows]

    def _output(self, request: BatchRequest, rows: list[tuple]) -> SpecOutput:
        """HF's outputs: `sequences` (B, L + longest answer), rows that ended early padded with pad_token_id;
        scores / logits per new-token step (B, V), NaN for rows already finished at that step (HF fills those with
        whatever the model predicts after its padding, which no reader should use)."""
        prompt = request.prompt_ids
        longest = max(len(tokens) for _, tokens, _ in rows)
        # rows end early only at an eos id, and without a pad_token_id HF pads with the first eos id
        pad = request.pad_token_id if request.pad_token_id is not None else 0
        new = torch.tensor(
            [tokens + [pad] * (longest - len(tokens)) for _, tokens, _ in rows], dtype=prompt.dtype, device="cpu"
        ).to(prompt.device)
        sequences = torch.cat([prompt, new], 1)
        scores = _steps([one.scores for one, _, _ in rows], longest) if request.output_scores else None
        logits = _steps([one.logits for one, _, _ in rows], longest) if request.output_logits else None
        if len(rows) == 1:
            ((_, tokens, stats),) = rows
            return SpecOutput(tokens, self._decode_text(tokens), self.stats, sequences, scores, logits, [stats])
        tokens = [tokens for _, tokens, _ in rows]
        text = None if self.tokenizer is None else [self._decode_text(t) for t in tokens]
        return SpecOutput(tokens, text, self.stats, sequences, scores, logits, [stats for _, _, stats in rows])

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far, over every session this generator made (target, draft, head)."""
        return sum(getattr(session, "compile_s", 0.0) for _, session in self._sessions)

    def session(self, adapter, role: str = "target"):
        """A session of this generator's engine for `adapter` in `role` ("target", "draft", "head"), reused across
        generate calls so that a static cache and its compiled steps are built once. The role keeps two caches
        apart where one model plays two parts (the target drafting for itself from a pruned view). The target's
        session returns the hidden states the drafter reads (`Drafter.target_features`)."""
        for owner, session in self._sessions:
            if owner == role and session.adapter is adapter:
                return session
        features = self.drafter.target_features if role == "target" else None
        if self.engine == "eager":
            session = ModelSession(adapter, features)
        else:
            session = StaticSession(adapter, self.compile, features)
        self._sessions.append((role, session))
        return session


def _steps(per_row: list[list[torch.Tensor]], steps: int) -> tuple:
    """Per-row lists of (1, V) rows -> one (B, V) tensor per step; NaN where a row had already finished."""
    out = []
    for t in range(steps):
        present = next(rows[t] for rows in per_row if len(rows) > t)
        out.append(
            torch.cat([rows[t] if len(rows) > t else torch.full_like(present, float("nan")) for rows in per_row])
        )
    return tuple(out)


def _total(rows: list[SpecStats], batch: DecodeBatch, prefill_s: float, decode_s: float) -> SpecStats:
    """A batch call's statistics: counts summed over rows (τ = accepted per row and round), forwards as run (a
    prefill per row, one batched forward per round), times of the call."""
    total = SpecStats(mode=rows[0].mode, pruning=rows[0].pruning)
    for stats in rows:
        for name in (
            "new_tokens",
            "rounds",
            "accepted_tokens",
            "drafted_tokens",
            "target_prompt_tokens",
            "draft_prompt_tokens",
            "visual_tokens",
            "kept_visual_tokens",
            "scoring_s",
            "selection_s",
        ):
            setattr(total, name, getattr(total, name) + getattr(stats, name))
        width = max(len(total.accept_histogram), len(stats.accept_histogram))
        total.accept_histogram = [
            a + b for a, b in zip(total.accept_histogram + [0] * width, stats.accept_histogram + [0] * width)
        ][:width]
    total.target_forwards = batch.forwards
    total.draft_forwards = batch.gen.drafter.forwards
    total.prefill_s, total.decode_s = prefill_s, decode_s
    total.compile_s = sum(stats.compile_s for stats in rows)
    return total
