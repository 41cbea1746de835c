"""EagleVLM: an EAGLE-2 draft head that reads the target's own features (SpecVLM §3.3).

    x_i          = fc([e_{i+1} ‖ f_i])        e: input embedding of token i+1 (at visual positions the projector
                                              output, i.e. the target's merged prompt embeds); f_i: the target's
                                              final post-norm hidden state at i (what its LM head reads)
    f̂_{i+1}      = DecoderLayer(x)_i          ONE layer of the target's own HF class (Qwen2DecoderLayer, ...)
                                              WITH its input RMSNorm (the paper's one change to EAGLE)
    next token   ~ lm_head(f̂_{i+1})           the target's frozen LM head, shared by reference, never saved

Sequence and positions. The head runs over its own sequence of pairs: the prompt's pairs 0..L-2 (prefilled in
`begin`, visual spans optionally shortened by a `VisualCompressor`), then one pair per committed token. Positions
are contiguous 1-D over that sequence (its cache length is its position counter), for every family: a Qwen2.5-VL
head uses the target's M-RoPE layer with the same id on all three axes, which is plain 1-D RoPE, so compression
never has to invent grid positions. Tree nodes sit at root + depth; siblings share a position.

Each round: feed the pairs that became known at the last verification (accepted tokens and the new root, each
with the TARGET's feature of its predecessor, from `commit`), causally; then grow the tree, where a node's pair
uses the head's own output at its parent (the target has not seen it yet). Tree entries are dropped from the head's
cache before the round ends: accepted nodes are recomputed next round with the target's true features.

Visual span: a head with a `VisualCompressor` compresses the fc outputs of the pairs whose embedding is visual
(the gate reads the target's pooled question features); with the generator's `pruning` option (the first paper's
verifier-guided selection) the head instead keeps only the pairs of the selected visual tokens. A compressor with a
`verifier:r` branch reads the target's text->visual attention scores: from `DraftContext.visual_scores` when the
generator provides them, else (only when that branch is actually used) from a second, capturing run of the target's
prefill, whose time is kept in `scoring_s`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Prompt, adapter_for, cache_keyword, is_shard
from ..adapters.attention import additive_mask, implementation
from ..engine.session import ModelSession
from ..engine.tree import DraftTree
from ..errors import SpecVLMError
from .base import DraftContext, Drafter, DraftSetup, RoundSlots
from .compressor import VisualCompressor, compress_sequence, question_features

CONFIG_NAME, WEIGHTS_NAME, FORMAT = "config.json", "model.safetensors", "specvlm-eagle-head"


def target_signature(adapter) -> dict:
    """What a head's weights depend on: the target's architecture and text sizes."""
    t = adapter.text_config
    return dict(
        architecture=type(adapter.model).__name__,
        model_type=adapter.config.model_type,
        text_model_type=t.model_type,
        hidden_size=int(t.hidden_size),
        intermediate_size=int(t.intermediate_size),
        num_attention_heads=int(t.num_attention_heads),
        num_key_value_heads=int(getattr(t, "num_key_value_heads", t.num_attention_heads)),
        head_dim=int(getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads),
        vocab_size=adapter.vocab_size,
    )


class EagleHead(nn.Module, Drafter):
    """`EagleHead.init_for(target)` (untrained), `EagleHead.from_pretrained(path, target)`, `save_pretrained(path)`;
    use it as `SpeculativeGenerator(target, head, tree="dynamic")` and train it with `specvlm.train.train_head`."""

    default_tree = "dynamic"  # EAGLE-2; the generator's own default ("static") suits draft models

    @property
    def needs_visual_scores(self) -> bool:
        """The verifier-guided compressor branch reads the target's attention, captured in the target's prefill."""
        return self.compressor is not None and self.compressor.needs_scores

    def __init__(self, target, compressor: VisualCompressor | None = None, dtype: torch.dtype | None = None):
        nn.Module.__init__(self)
        adapter = adapter_for(target)
        self.adapter = adapter  # a plain object: the target is not a submodule, never saved
        self.head_config = config = adapter.one_layer_config()
        hidden = adapter.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.layer = adapter.new_layer(config)
        self.cache_keyword = cache_keyword(self.layer)
        self.rotary = adapter.new_rotary(config)
        self.compressor = compressor
        dtype = dtype or adapter.dtype
        for module in (self.fc, self.layer, self.compressor):
            if module is not None:
                module.to(device=adapter.device, dtype=dtype)
        self.rotary.to(device=adapter.device)  # inv_freq stays float32
        self.eval()

    # ---- construction and files --------------------------------------------------------------------------------
    @classmethod
    def init_for(
        cls, target, compressor: VisualCompressor | dict | None = None, dtype=None, seed: int | None = None
    ) -> EagleHead:
        """An untrained head for `target` (optionally with a compressor: a module or its config dict)."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            if isinstance(compressor, dict):
                compressor = VisualCompressor.from_config(adapter_for(target).hidden_size, compressor)
            return cls(target, compressor, dtype)

    @property
    def signature(self) -> dict:
        return target_signature(self.adapter)

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, path) -> None:
        """`model.safetensors` (fc, layer, compressor; never the shared embeddings / LM head) + `config.json`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path / WEIGHTS_NAME))
        config = dict(
            specvlm_head="eagle",
            format=FORMAT,
            version=1,
            target=self.signature,
            head_layer=type(self.layer).__name__,
            dtype=str(self.dtype).removeprefix("torch."),
            parameters=self.trainable_parameters(),
            compressor=self.compressor.config() if self.compressor is not None else None,
        )
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @staticmethod
    def is_head_folder(path) -> bool:
        try:
            return json.loads((Path(path) / CONFIG_NAME).read_text()).get("specvlm_head") == "eagle"
        except (OSError, ValueError, AttributeError):
            return False

    @classmethod
    def from_pretrained(cls, path, target, dtype: torch.dtype | None = None) -> EagleHead:
        """Load a head saved by `save_pretrained` for `target`; a head trained for another architecture or size
        is a one-line `ValueError` (SpecVLMError)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not cls.is_head_folder(path):
            raise SpecVLMError(f"{path}: not an EagleHead folder (no {CONFIG_NAME} with specvlm_head='eagle')")
        config = json.loads((path / CONFIG_NAME).read_text())
        saved, actual = config["target"], target_signature(adapter_for(target))
        differ = [f"{k} {saved.get(k)} vs {actual[k]}" for k in actual if saved.get(k) != actual[k]]
        if differ:
            raise SpecVLMError(
                f"{path}: this EagleHead was trained for a {saved.get('architecture')} target, which "
                f"does not match this {actual['architecture']} ({'; '.join(differ)})"
            )
        compressor = None
        if config.get("compressor"):
            compressor = VisualCompressor.from_config(actual["hidden_size"], config["compressor"])
        head = cls(target, compressor, dtype)
        state = load_file(str(path / WEIGHTS_NAME), device=str(head.adapter.device))
        head.load_state_dict(state, strict=True)
        return head

    # ---- the network -------------------------------------------------------------------------------------------
    def pairs(self, embeds: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """fc([e ‖ f]) for rows of next-token embeddings and target features, both (n, H)."""
        device = self.fc.weight.device  # with device_map="auto" the target's embeddings and last layer may differ
        return self.fc(torch.cat([embeds.to(device), features.to(device)], dim=-1).to(self.dtype))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The target's LM head on head outputs, float32; gradients reach the head, never the target."""
        lm_head = self.adapter.lm_head
        if isinstance(lm_head, nn.Linear) and not is_shard(lm_head.weight):  # a TP shard: through its module
            bias = lm_head.bias.detach() if lm_head.bias is not None else None
            weight = lm_head.weight
            return F.linear(h.to(weight.device, weight.dtype), weight.detach(), bias).float()
        return lm_head(h.to(self.adapter.dtype)).float()

    def run_layer(
        self, x: torch.Tensor, positions: torch.Tensor, cache=None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The decoder layer over rows x (B, n, H) (or (n, H): one sequence) at 1-D `positions` (B, n) (or (n,)),
        appended to `cache`; `mask` is a 4-D additive mask or None for causal attention over the cache (an HF cache
        from `adapter.new_cache`). Returns the outputs in x's shape."""
        single = x.dim() == 2
        x, positions = (x[None], positions[None]) if single else (x, positions)
        n = x.shape[1]
        past = cache.get_seq_length() if cache is not None else 0
        if mask is None and n > 1 and (past > 0 or implementation(self.head_config) != "sdpa"):
            mask = additive_mask(torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), past, x.dtype, x.device)
        pos = positions.to(x.device)
        rope = self.adapter.positions(positions).to(x.device)  # the same id on M-RoPE's 3 axes: plain 1-D RoPE
        out = self.layer(
            x,
            attention_mask=mask,
            position_ids=pos,
            use_cache=cache is not None,
            position_embeddings=self.rotary(x, rope),
            **{self.cache_keyword: cache},
        )
        out = out[0] if isinstance(out, tuple) else out
        return out[0] if single else out

    def prompt_pairs(
        self,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        spans,
        prompt_end: int,
        features: torch.Tensor | None = None,
        visual_keep: torch.Tensor | None = None,
        scores=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's input rows for a prompt: pairs (e_{i+1}, f_i) for i = 0..L-2, visual spans compressed.
        `features` replaces `hidden` as the fc input (training noise); the gate always reads clean `hidden`.
        `visual_keep` (indices among the prompt's visual tokens, e.g. the verifier-guided selection of the
        generator's `pruning` option) keeps only the pairs of those visual tokens, instead of the compressor.
        `scores`: the target's attention scores (N,) of the prompt's visual tokens, or a callable giving them (for
        a compressor's verifier branch; called only if that branch runs).
        Returns the rows and, per pair, its row (-1 where compressed or pruned away)."""
        features = hidden if features is None else features
        x = self.pairs(embeds[1:], features[:-1])
        if visual_keep is not None and spans:
            # host bookkeeping of which pairs survive, applied to the rows on their device
            visual = torch.cat([torch.arange(s.start, s.start + s.length, device="cpu") for s in spans])
            dropped = torch.ones(visual.numel(), dtype=torch.bool, device="cpu")
            dropped[visual_keep.long().cpu()] = False
            gone = visual[dropped]
            rows = torch.ones(x.shape[0], dtype=torch.bool, device="cpu")
            rows[gone[gone >= 1] - 1] = False  # pair i carries e_{i+1}; token 0 has no pair
            row_of = torch.full((x.shape[0],), -1, dtype=torch.long, device="cpu")
            row_of[rows] = torch.arange(int(rows.sum()), device="cpu")
            return x[rows.to(x.device)], row_of.to(x.device)
        if self.compressor is None or not spans:
            return x, torch.arange(x.shape[0], device=x.device)
        visual = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        pair_spans = []
        for span in spans:  # pair i carries e_{i+1}: the span's pairs are [start-1, start+length-1)
            visual[span.start : span.start + span.length] = True
            lo, hi = max(span.start - 1, 0), min(span.start + span.length - 1, x.shape[0])
            pair_spans.append((lo, hi - lo))
        question = question_features(hidden, visual, prompt_end)

        def pair_scores():  # per pair span: the scores of the visual tokens its pairs carry
            given = scores() if callable(scores) else scores
            out, offset = [], 0
            for span in spans:
                part = given[offset : offset + span.length]
                offset += span.length
                out.append(part[1:] if span.start == 0 else part)  # token 0 has no pair
            return out

        return compress_sequence(x, pair_spans, self.compressor, question, pair_scores if scores is not None else None)

    def forward(
        self,
        embeds: torch.Tensor,
        hidden: torch.Tensor,
        spans=(),
        prompt_end: int | None = None,
        features: torch.Tensor | None = None,
        scores=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: the whole sequence at once (teacher forcing). Returns the head's outputs f̂ and, for each
        pair i (predicting f_{i+1} and the token after it), its output row (-1 where compressed away)."""
        end = hidden.shape[0] if prompt_end is None else prompt_end
        x, row_of = self.prompt_pairs(embeds, hidden, spans, end, features, scores=scores)
        return self.run_layer(x, torch.arange(x.shape[0], device=x.device)), row_of

    # ---- Drafter -----------------------------------------------------------------------------------------------
    @property
    def stepper(self) -> HeadStepper:
        """What a session runs for this head (one per head, so a fast session and its compiled steps persist)."""
        if "_stepper" not in self.__dict__:
            self.__dict__["_stepper"] = HeadStepper(self)  # not a submodule: never saved, never moved
        return self.__dict__["_stepper"]

    def start(self, setup: DraftSetup) -> None:
        self.setup = setup
        self.forwards, self.scoring_s = 0, 0.0
        self.session = setup.new_session(self.stepper, "head") if setup.new_session else ModelSession(self.stepper)
        self.session.drop_rows(0)
        self.session.reserve_rows(setup.max_rows, setup.fixed_rows)
        self.pending: list[list[int]] = []  # per row: accepted tokens not yet fed
        self.pending_features: list[torch.Tensor] = []  # per row: target features of their predecessors (+ root's)

    @torch.no_grad()
    def add_row(self, row: int, ctx: DraftContext) -> int:
        prompt, hidden = ctx.target_prompt, ctx.target_hidden
        scores = None
        if self.needs_visual_scores:
            scores = lambda: self._visual_scores(ctx)
        x, _ = self.prompt_pairs(
            prompt.embeds[0], hidden, prompt.spans, len(prompt), visual_keep=ctx.visual_keep, scores=scores
        )
        if x.shape[0] == 0:
            raise SpecVLMError("an EagleHead needs a prompt of at least two tokens")
        n = x.shape[0]
        rows = Prompt(
            torch.zeros(1, n, dtype=torch.long, device="cpu"), x[None], torch.arange(n, device=x.device)[None], n
        )  # the head's positions count its own rows
        return self._prefill_row(row, rows, ctx.reserve, hidden[-1:])

    def _prefill_row(self, row: int, rows: Prompt, reserve: int, last_features: torch.Tensor) -> int:
        """Row `row` starts with the prompt's pair `rows`; its first round feeds the root with `last_features`
        (the target's at the last prompt token). Returns the rows' count."""
        self.session.prefill(row, rows, reserve)
        self.forwards += 1
        for state, value in ((self.pending, []), (self.pending_features, last_features)):
            if row == len(state):
                state.append(value)
            else:
                state[row] = value
        return len(rows)

    def _visual_scores(self, ctx: DraftContext) -> torch.Tensor:
        """The target's text->visual attention scores of the prompt's visual tokens: the generator's when it
        passes them, else (a DraftContext built by hand) captured by re-running the target's prefill."""
        if ctx.visual_scores is not None:
            return ctx.visual_scores
        import time

        from ..adapters.capture import AttentionCapture

        started = time.perf_counter()
        prompt = ctx.target_prompt
        visual = prompt.visual_mask.nonzero().flatten()
        with AttentionCapture(self.adapter, int(visual.max()) + 1, visual) as capture:
            self.adapter.forward(prompt.embeds, prompt.positions, self.adapter.new_cache(), last_only=True)
        self.scoring_s += time.perf_counter() - started
        return capture.scores

    @torch.no_grad()
    def propose(self, roots, max_depth, seen, sampling, random) -> DraftTree:
        session, device, rows = self.session, self.fc.weight.device, roots.shape[0]
        self.sampling, self.random = sampling, random
        # each row's pairs (pending_j, f(predecessor)) and (root, f(last)), right-padded to the longest: (B, width)
        pending = self.pending[:rows]
        counts = [len(p) + 1 for p in pending]
        width = max(counts)
        host = torch.tensor([p + [0] * (width - len(p)) for p in pending], dtype=torch.long, device="cpu")
        feed = host.to(roots.device)
        last = torch.tensor([c - 1 for c in counts], dtype=torch.long, device="cpu").to(roots.device)[:, None]
        feed.scatter_(1, last, roots[:, None])
        features = torch.stack(
            [F.pad(f.to(device), (0, 0, 0, width - f.shape[0])) for f in self.pending_features[:rows]]
        )
        x = self.feed_rows(feed, features)  # (B, width, input width)
        # positions: the head's own counter (offset 0) for EAGLE-2, the target's (its offset) for EAGLE-3
        starts = torch.tensor(session.next_positions[:rows], dtype=torch.long, device="cpu").to(device)
        logits, out = session.extend(x, starts[:, None] + torch.arange(width, device=device), counts=counts)
        self.forwards += 1
        last = last.to(device)
        root_logits = logits.gather(1, last[:, :, None].expand(-1, 1, logits.shape[-1]))[:, 0]  # (B, V)
        root_end = session.lengths[:rows]
        root_position = starts + last[:, 0]  # (B,)
        slots = RoundSlots(self.setup.tree, rows, device, seen)
        # [b, slot + 1]: f̂ at the node fed there; [b, 0]: at the root (what the children's rows read)
        carried = self.carried(out)
        outputs = carried.new_zeros(rows, max(self.setup.tree.max_fed, 1) + 1, carried.shape[-1])
        outputs[:, 0] = carried.gather(1, last[:, :, None].expand(-1, 1, carried.shape[-1]))[:, 0]
        batch = torch.arange(rows, device=device)[:, None]

        def expand(tokens: torch.Tensor, parent_slots: torch.Tensor, depth: int) -> torch.Tensor:
            first_slot, w = slots.count, tokens.shape[1]
            visible, history = slots.add(tokens, parent_slots, depth)
            x = self.node_rows(tokens, outputs[batch, parent_slots + 1])
            positions = (root_position + depth)[:, None].expand(-1, w)
            logits, out = session.extend(x, positions, visible=visible, prefix=root_end)
            self.forwards += 1
            outputs[:, first_slot + 1 : first_slot + 1 + w] = self.carried(out)
            return self._logprobs(self.target_space(logits), history)

        tree = self.setup.tree.build(
            self._logprobs(self.target_space(root_logits), seen), expand, self._choose, max_depth
        )
        session.truncate(root_end)  # tree entries used the head's own features: drop them
        return tree

    # what EAGLE-3 changes (drafters/eagle3.py): how rows are formed, what a node carries, the logits' vocabulary
    def feed_rows(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Rows for committed tokens (B, n) with the target's features of their predecessors (B, n, H)."""
        return self.pairs(self.adapter.embed(tokens), features)

    def node_rows(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        """Rows for tree nodes (B, w) with what their parents carry (B, w, H): the head's own outputs."""
        return self.pairs(self.adapter.embed(tokens), parents)

    def carried(self, out: torch.Tensor) -> torch.Tensor:
        """What a node hands its children: the head's output f̂."""
        return out

    def target_space(self, logits: torch.Tensor) -> torch.Tensor:
        """The stepper's logits over the target's ids (the target's own LM head: already)."""
        return logits

    def commit(self, tree: DraftTree, accepted, next_tokens, target_hidden) -> None:
        """Next round feeds (accepted_j, f(predecessor)) for every accepted node and (next_token, f(last)), with
        the target's features of [root, *accepted], per row."""
        for row, (outcome, hidden) in enumerate(zip(accepted, target_hidden)):
            self.pending[row], self.pending_features[row] = outcome.tokens, hidden

    def move_row(self, src: int, dst: int) -> None:
        self.pending[dst], self.pending_features[dst] = self.pending[src], self.pending_features[src]
        self.session.move_row(src, dst)

    def drop_rows(self, rows: int) -> None:
        del self.pending[rows:], self.pending_features[rows:]
        self.session.drop_rows(rows)


class HeadStepper:
    """An EagleHead seen by a session (`session.ModelSession` / `StaticSession`): its inputs are the pair rows
    fc([e ‖ f]) (n, H), its positions its own 1-D counter, its cache one layer."""

    num_layers = 1

    def __init__(self, head: EagleHead):
        self.head = head

    @property
    def device(self) -> torch.device:
        return self.head.fc.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.dtype

    @property
    def attention_config(self):
        return self.head.head_config

    def new_cache(self):
        return self.head.adapter.new_cache(self.head.head_config)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(-1, *rows.shape[-2:])

    def positions(self, pos: torch.Tensor) -> torch.Tensor:
        return pos.to(self.device).reshape(-1, pos.shape[-1])

    def forward(
        self,
        rows: torch.Tensor,
        positions: torch.Tensor,
        cache,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits of the target's LM head (B, n, V) (or (B, 1, V) with `last_only`) on the head outputs f̂
        (B, n, H), for input rows (B, n, H) at positions (B, n)."""
        out = self.head.run_layer(rows, positions, cache, mask)
        return self.head.logits(out[:, -1:] if last_only else out), out
