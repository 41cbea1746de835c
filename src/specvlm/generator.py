"""SpeculativeGenerator: the decode loop.

    prefill target (all visual tokens) -> first token (the root); prefill the drafter
    each round: draft a tree below the root; verify [root, *tree] in ONE target forward (tree mask, positions by
                depth); accept a path; keep its K/V in both caches; the target's next token becomes the new root
    stop at EOS or max_new_tokens, cutting the last round like HF `generate` does

The loop never looks at the model family: adapters hide it. Output is exactly the target's: token-identical to
`target.generate(do_sample=False)` when greedy, the same distribution when sampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch
from .adapters import adapter_for
from .adapters.capture import AttentionCapture
from .compat import check_models
from .drafters import DraftContext, DraftModelDrafter, Drafter
from .errors import SpecVLMError
from .options import DecodeConfig
from .pruning import NEEDS_SCORES, Layout, select
from .request import Request, resolve
from .sampling import Sampling, device_generator, history_rows
from .session import ModelSession, StaticSession, bucket
from .stats import SpecStats
from .streaming import AnswerText
from .tree import DraftTree, TreeSpec
from .verify import accept_chain_sampled, accept_greedy, accept_tree_sampled


@dataclass
class SpecOutput:
    token_ids: list[int]        # new tokens only, cut after EOS like HF generate
    text: str | None
    stats: SpecStats
    sequences: torch.Tensor | None = None   # (1, L + n): the prompt as given, then the new tokens (HF's tensor)
    scores: tuple | None = None             # output_scores=True: processed scores (1, V) per new token, like HF's
    logits: tuple | None = None             # output_logits=True: raw logits (1, V) per new token


class SpeculativeGenerator:
    """`SpeculativeGenerator(target, draft, **options)`; `draft` is a same-family HF VLM, "self", or a Drafter.

    Options: `tree` ("chain" | "static" | "dynamic"; default: the drafter's — "static", the video paper's EAGLE-1
    tree, for draft models; "dynamic", EAGLE-2's, for EagleHead),
    `num_draft_tokens` (chain length γ, default 5), `confidence_threshold` (chain: stop drafting after a token the
    draft gave probability below it, as HF assisted generation does; default 0 = always γ), `tree_top_k` (10),
    `tree_depth` (6, longest path in draft tokens), `tree_total_tokens` (60, tokens verified per round including
    the root), `processor` / `tokenizer` (for `.text` and `stream`).

    Visual pruning of the draft's prompt (the target always sees everything): `pruning` ("none" or a method of
    `specvlm.pruning.METHODS`, e.g. "specvlm"), `visual_keep_ratio` (default 0.1), `stage1_mass` (λ, 0.4),
    `draft_positions` ("original": kept tokens keep their position ids, the default for Qwen's M-RoPE;
    "contiguous": the shorter prompt is renumbered, the default otherwise), `pruning_seed` (for "random").
    """

    def __init__(self, target, draft="self", *, processor=None, tokenizer=None, config: DecodeConfig | None = None,
                 **options):
        # options: DecodeConfig's fields as keywords (tree, num_draft_tokens, pruning, engine, compile, ...)
        if config is not None and options:
            raise SpecVLMError("give a DecodeConfig or its options as keywords, not both")
        try:
            config = config or DecodeConfig(**options)
        except TypeError:   # an unknown keyword
            unknown = sorted(set(options) - set(DecodeConfig.__dataclass_fields__) - {"spell"})
            raise SpecVLMError(f"SpeculativeGenerator got unknown options {unknown}; it takes "
                               f"{', '.join(f for f in DecodeConfig.__dataclass_fields__ if f != 'spell')}") from None
        self.config = config
        self.model = target
        self.target = adapter_for(target)
        if isinstance(draft, Drafter):
            self.drafter = draft
        elif isinstance(draft, str) and draft == "self":
            self.drafter = DraftModelDrafter(adapter_for(target), reuse_target_prompt=True)
        elif isinstance(draft, str):
            raise SpecVLMError(f"draft must be a model, 'self' or a Drafter, got the string {draft!r}")
        else:
            draft_adapter = adapter_for(draft)
            check_models(self.target, draft_adapter)
            self.drafter = DraftModelDrafter(draft_adapter)
        self.tree = TreeSpec(kind=config.tree or self.drafter.default_tree, num_draft_tokens=config.num_draft_tokens,
                             top_k=config.tree_top_k, depth=config.tree_depth, total_tokens=config.tree_total_tokens,
                             confidence_threshold=config.confidence_threshold)
        self.tokenizer = tokenizer or getattr(processor, "tokenizer", processor)
        self.pruning, self.stage1_mass, self.pruning_seed = config.pruning, config.stage1_mass, config.pruning_seed
        self.visual_keep_ratio = 0.1 if config.visual_keep_ratio is None else config.visual_keep_ratio
        self.contiguous_positions = (config.draft_positions or ("original" if self.target.uses_mrope
                                                                else "contiguous")) == "contiguous"
        self.engine = config.engine
        self.compile = config.engine == "fast" and (self.target.device.type == "cuda" if config.compile == "auto"
                                                    else config.compile)
        self._sessions: list = []

    # ---- public API ------------------------------------------------------------------------------------------
    def generate(self, input_ids=None, **kwargs) -> SpecOutput:
        """Like `target.generate(**inputs, **kwargs)` for one sequence, with the same keywords (`max_new_tokens`,
        `max_length`, `do_sample`, `temperature`, `top_p`, `top_k`, `repetition_penalty`, `eos_token_id`,
        `generation_config`, `streamer`, `return_dict_in_generate`, `output_scores`, `output_logits`, ...; see
        `specvlm.request`); unset options come from the target's generation_config, as in HF. A left-padded
        `attention_mask` is honoured. Also `draft_inputs` (the draft's own processor outputs, when its
        preprocessing differs from the target's) and `generator` (a torch.Generator for sampling).
        `out.sequences` is the tensor `target.generate` returns."""
        request = resolve(self.model.generation_config, input_ids, kwargs)
        tokens = [t for chunk in self._run(request) for t in chunk]
        new = torch.tensor([tokens], dtype=request.prompt_ids.dtype, device=request.prompt_ids.device)
        return SpecOutput(tokens, self._decode_text(tokens), self.stats, torch.cat([request.prompt_ids, new], 1),
                          tuple(request.scores) if request.output_scores else None,
                          tuple(request.logits) if request.output_logits else None)

    def stream(self, input_ids=None, **kwargs) -> Iterator[str]:
        """Yields the answer's text as rounds are accepted; `self.stats` is complete once it is exhausted."""
        if self.tokenizer is None:
            raise ValueError("stream() needs a processor or tokenizer: SpeculativeGenerator(..., processor=...)")
        text = AnswerText(self.tokenizer)
        for chunk in self._run(resolve(self.model.generation_config, input_ids, kwargs)):
            piece = text.add(chunk)
            if piece:
                yield piece
        piece = text.rest()
        if piece:
            yield piece

    # ---- internals -------------------------------------------------------------------------------------------
    def _decode_text(self, tokens: list[int]) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _run(self, request: Request):
        """The decode loop's chunks of new token ids, fed to the request's streamer on the way (HF's protocol:
        the prompt first, then each chunk, then `end()`)."""
        streamer = request.streamer
        if streamer is not None:
            streamer.put(request.prompt_ids.cpu())
        for chunk in self._decode(request):
            if streamer is not None:
                streamer.put(torch.tensor(chunk, dtype=torch.long, device="cpu"))
            yield chunk
        if streamer is not None:
            streamer.end()

    def _decode(self, request: Request):
        inputs, sampling, max_new, eos = request.inputs, request.sampling, request.max_new, request.eos
        self.stats = stats = SpecStats()
        started = time.perf_counter()
        self._compiled_before = self.compile_seconds
        prompt = self.target.prepare(inputs)
        target = self._session(self.target)
        # entries a session writes beyond its prompt: the answer, then one round's padded feeds past it
        reserve = max_new + 2 * bucket(self.tree.max_nodes + 2) + self.tree.max_fed
        logits, hidden, keep, scores = self._prefill(target, prompt, reserve, stats)
        vocab, device = logits.shape[-1], logits.device
        generator = device_generator(request.generator, device)
        self.drafter.begin(DraftContext(request.draft_inputs, prompt, hidden, sampling, self.tree, vocab, generator,
                                        keep, self.contiguous_positions, scores, self._session, target, reserve))
        seen = None   # [vocab] bool: ids the repetition penalty applies to
        if sampling.uses_history:  # repetition penalty: ids in the prompt and everything generated so far
            seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            seen[prompt.input_ids[0].clamp_max(vocab - 1).to(device)] = True
        root = sampling.pick(logits[0], seen, generator)                 # (1,) on the device
        first = int(root)
        if request.keeps_rows:
            _keep_rows(request, logits, sampling.processed(logits, seen), [0])
        stats.target_prompt_tokens, stats.draft_prompt_tokens = len(prompt), self.drafter.prompt_tokens
        stats.new_tokens, stats.target_forwards = 1, 1
        stats.prefill_s = time.perf_counter() - started
        yield [first]
        done = first in eos or stats.new_tokens >= max_new
        while not done:
            if seen is not None:
                seen[root] = True
            tree = self.drafter.propose(root, max_new - stats.new_tokens, seen)    # n nodes on the device
            prefix = target.length
            depths = torch.cat([torch.zeros(1, dtype=torch.long, device=device), tree.depths.to(device)])  # [n+1]
            # logits [n+1, vocab] float32, hidden [n+1, hidden]: row 0 follows the root, row i+1 node i
            logits, hidden = target.extend(torch.cat([root, tree.tokens.to(device)]), target.next_position + depths,
                                           tree.verify_mask, prefix)
            verdict, processed = _accept(logits, tree, sampling, seen, generator)
            accepted = verdict.to_host(tree)                                 # the round's one sync
            root = torch.full((1,), accepted.next_token, dtype=torch.long, device=device)   # [1]
            target.keep(prefix + 1, [prefix + 1 + node for node in accepted.path])
            self.drafter.commit(tree, accepted, root, hidden[[0] + [node + 1 for node in accepted.path]])
            stats.record_round(len(tree), len(accepted.path))
            new = accepted.tokens + [accepted.next_token]
            if seen is not None:
                seen[new] = True
            new = _cut(new, eos, max_new - stats.new_tokens)
            if request.keeps_rows:
                _keep_rows(request, logits, processed, ([0] + [node + 1 for node in accepted.path])[: len(new)])
            stats.new_tokens += len(new)
            stats.target_forwards += 1
            done = new[-1] in eos or stats.new_tokens >= max_new
            self._clock(stats, started)
            yield new
        self._clock(stats, started)

    def _clock(self, stats: SpecStats, started: float) -> None:
        stats.draft_forwards = self.drafter.forwards
        stats.compile_s = self.compile_seconds - self._compiled_before
        stats.decode_s = time.perf_counter() - started - stats.prefill_s

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far, over every session this generator made (target, draft, head)."""
        return sum(getattr(session, "compile_s", 0.0) for session in self._sessions)

    def _session(self, adapter):
        """A session of this generator's engine for `adapter` (the target's, a draft model's), reused across
        generate calls so that a static cache and its compiled steps are built once."""
        for session in self._sessions:
            if session.adapter is adapter:
                return session
        session = ModelSession(adapter) if self.engine == "eager" else StaticSession(adapter, self.compile)
        if self.engine == "fast":
            self._sessions.append(session)
        return session

    def _prefill(self, target: ModelSession, prompt, reserve: int, stats: SpecStats):
        """Target prefill; the verifier's attention scores when pruning or the drafter needs them (captured in this
        one prefill, never a second); with pruning, the draft's kept visual tokens."""
        visual = prompt.visual_mask.nonzero().flatten()
        scores = None
        if visual.numel() and (self.pruning in NEEDS_SCORES or self.drafter.needs_visual_scores):
            with AttentionCapture(self.target, int(visual.max()) + 1, visual) as capture:
                logits, hidden = target.prefill(prompt, reserve)
            scores, stats.scoring_s = capture.scores, capture.scoring_s
        else:
            logits, hidden = target.prefill(prompt, reserve)
        stats.visual_tokens = stats.kept_visual_tokens = visual.numel()   # the draft sees them all unless pruned
        if self.pruning == "none" or visual.numel() == 0:
            return logits, hidden, None, scores
        started = time.perf_counter()
        layout = Layout(tuple((span.grid, span.tail, span.length) for span in prompt.spans))
        keep = select(self.pruning, visual.numel(), self.visual_keep_ratio, scores=scores, layout=layout,
                      features=prompt.embeds[0, visual.to(prompt.embeds.device)], stage1_mass=self.stage1_mass,
                      seed=self.pruning_seed)
        stats.selection_s = time.perf_counter() - started
        stats.pruning, stats.kept_visual_tokens = self.pruning, keep.numel()
        return logits, hidden, keep, scores


def _accept(logits: torch.Tensor, tree: DraftTree, sampling: Sampling, seen, generator):
    """(Verdict, processed scores (n+1, V)) for `logits` (n+1, V): row 0 follows the root, row i+1 node i; each
    row's repetition history is its path."""
    rows_seen = None
    if seen is not None:
        anc = tree.ancestors.to(logits.device)
        paths = torch.where(anc, tree.tokens.to(logits.device)[None, :], -1)            # (n, n) path tokens
        rows_seen = history_rows(seen, torch.cat([paths.new_full((1, paths.shape[1]), -1), paths]))
    processed = sampling.processed(logits, rows_seen)
    if not sampling.do_sample:
        return accept_greedy(processed.argmax(-1), tree), processed
    p = processed.softmax(-1)
    if tree.chain and tree.probs is not None:
        return accept_chain_sampled(p, tree, generator), processed
    return accept_tree_sampled(p, tree, generator), processed


def _keep_rows(request: Request, logits: torch.Tensor, processed: torch.Tensor, rows: list[int]) -> None:
    """output_scores / output_logits: the rows that produced the new tokens, one (1, V) tensor per token."""
    for row in rows:
        request.scores.append(processed[row: row + 1])
        request.logits.append(logits[row: row + 1])


def _cut(new: list[int], eos: set[int], room: int) -> list[int]:
    for i, token in enumerate(new):
        if token in eos:
            new = new[: i + 1]
            break
    return new[:room]
