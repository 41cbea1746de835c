"""EAGLE-3 draft heads (issue 22): read the target's low, middle and high layers, draft in their own vocabulary.

    g_i   = fc([a_i ‖ b_i ‖ c_i])          the target's hidden states at token i from three layers (HF indices
                                           `features`, default (2, L/2, L-3): the inputs of those decoder layers,
                                           the un-normed residual stream), concatenated, projected to H
    x_i   = [norm_e(e_{i+1}) ‖ norm_g(g_i)]  e: the target's embedding of token i+1 (at visual positions the
                                           placeholder token's, as SpecForge trains); width 2H
    h_i   = g_i + Attn(x_i); h_i += MLP(norm(h_i))   ONE layer built from the target's own classes whose q/k/v read
                                           2H (`adapters.new_eagle3_layer`); speculators' `norm_before_residual`
                                           takes norm_g(g_i) as the residual instead
    token ~ d2t(lm_head(norm(h_i)))        the head's own vocabulary (`draft_vocab_size` ids); draft id d is
                                           target id d + d2t[d]

Tree nodes: a node's row is [norm_e(e_node) ‖ norm_g(h_parent)], h_parent the head's own output at its parent
(pre-norm; normed with speculators' `norm_output`). Positions are the target's: entry i sits at token i's position
(Qwen's 3-D M-RoPE ids in the prompt), so a public head sees what it was trained on; nodes sit at root + depth.
The bookkeeping is the EAGLE-2 head's (eagle.py): committed pairs with the target's features, tree entries dropped
after each round.

Files: `save_pretrained` writes SpecForge / SGLang's layout (`LlamaForCausalLMEagle3`: fc, midlayer.*, norm,
lm_head, d2t, t2d; no embeddings), which SGLang serves as is; `from_pretrained` also reads vLLM's speculators
layout (`speculators_model_type: "eagle3"`, layers.0.*). Which layers feed the head, per format: SpecForge's
`eagle_aux_hidden_state_layer_ids` name the decoder layers whose OUTPUT is read (HF index id + 1), speculators'
the layers whose INPUT is read (HF index = id); both default to HF indices (2, L/2, L-3).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..adapters import adapter_for, cache_keyword, whole
from ..adapters.attention import additive_mask, implementation
from ..errors import SpecVLMError
from .base import DraftContext, DraftSetup, onto_target_ids
from .eagle import EagleHead, HeadStepper
from .eagle3_files import Eagle3Shape, default_features, read_head


class Eagle3Head(EagleHead):
    """`Eagle3Head.init_for(target, ...)` (untrained), `Eagle3Head.from_pretrained(folder, target)` (SpecForge /
    SGLang or speculators files), `save_pretrained(folder)`; use it as `SpeculativeGenerator(target, head)`."""

    def __init__(self, target, shape: Eagle3Shape, dtype: torch.dtype | None = None, own_embeddings: bool = False):
        nn.Module.__init__(self)
        adapter = adapter_for(target)
        self.adapter, self.shape, self.compressor = adapter, shape, None
        self.target_features = shape.features
        config = adapter.one_layer_config()
        config.hidden_size, config.intermediate_size = shape.hidden_size, shape.intermediate_size
        config.num_attention_heads, config.num_key_value_heads = shape.num_attention_heads, shape.num_key_value_heads
        config.head_dim, config.rms_norm_eps = shape.head_dim, shape.rms_norm_eps
        if shape.rope_theta is not None:
            config.rope_parameters = {**config.rope_parameters, "rope_theta": shape.rope_theta}
        self.head_config = config
        width = len(shape.features) * shape.target_hidden_size
        self.layer = adapter.new_eagle3_layer(config, shape.attention_bias)
        norm = lambda size: type(self.layer.input_layernorm)(size, eps=shape.rms_norm_eps)
        self.input_norm = norm(width) if shape.norm_before_fc else None
        self.fc_norm = nn.ModuleList(norm(shape.target_hidden_size) for _ in shape.features) if shape.fc_norm else None
        self.fc = nn.Linear(width, shape.hidden_size, bias=False)
        self.norm = norm(shape.hidden_size)
        self.lm_head = nn.Linear(shape.hidden_size, shape.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(shape.draft_vocab_size, dtype=torch.long, device=adapter.device))
        self.own_embeddings = nn.Embedding(adapter.vocab_size, shape.hidden_size) if own_embeddings else None
        self.cache_keyword = cache_keyword(self.layer.self_attn)
        self.rotary = adapter.new_rotary(config)
        dtype = dtype or adapter.dtype
        self.to(device=adapter.device, dtype=dtype)  # d2t stays int64: only floating tensors change dtype
        self.rotary.to(device=adapter.device)  # inv_freq stays float32
        self.eval()

    # ---- construction ------------------------------------------------------------------------------------------
    @classmethod
    def init_for(
        cls,
        target,
        draft_vocab: torch.Tensor | list[int] | None = None,
        features: tuple[int, ...] | None = None,
        dtype=None,
        seed: int | None = None,
    ) -> Eagle3Head:
        """An untrained head with the target's text sizes, reading `features` (default (2, L/2, L-3)) and
        drafting over `draft_vocab` (target ids, default all); its LM head starts as the target's rows."""
        adapter = adapter_for(target)
        text = adapter.text_config
        every = torch.arange(adapter.vocab_size, device="cpu")
        ids = every if draft_vocab is None else torch.as_tensor(draft_vocab, device="cpu").long()
        ids = ids.sort().values  # draft id d <-> the d-th smallest target id, as SpecForge orders them
        hidden = adapter.hidden_size
        shape = Eagle3Shape(
            hidden_size=hidden,
            intermediate_size=int(text.intermediate_size),
            num_attention_heads=int(text.num_attention_heads),
            num_key_value_heads=int(getattr(text, "num_key_value_heads", text.num_attention_heads)),
            head_dim=int(getattr(text, "head_dim", None) or hidden // text.num_attention_heads),
            rms_norm_eps=float(text.rms_norm_eps),
            draft_vocab_size=int(ids.numel()),
            features=tuple(features or default_features(int(text.num_hidden_layers))),
            target_hidden_size=hidden,
        )
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            head = cls(target, shape, dtype)
        with torch.no_grad():
            head.d2t.copy_(ids.to(head.d2t.device) - torch.arange(ids.numel(), device=head.d2t.device))
            rows = whole(adapter.lm_head.weight.detach())[ids.to(adapter.lm_head.weight.device)]
            head.lm_head.weight.copy_(rows.to(head.lm_head.weight.device, head.lm_head.weight.dtype))
        return head

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def draft_to_target(self) -> torch.Tensor:
        """(Vd,) the target id of each draft id."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    # ---- the network -------------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The target's embeddings of target ids (B, n) -> (B, n, H) (the checkpoint's own copy if it has one),
        frozen: training never reaches the target's table (nor a copy, which SpecForge freezes too)."""
        if self.own_embeddings is not None:
            return self.own_embeddings(ids.to(self.own_embeddings.weight.device)).detach()
        return self.adapter.embed(ids).detach()

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """g = fc of the target's concatenated layer features (..., n_features * Ht) -> (..., H)."""
        x = features.to(self.fc.weight.device, self.dtype)
        if self.input_norm is not None:
            x = self.input_norm(x)
        if self.fc_norm is not None:
            x = torch.cat([norm(part) for norm, part in zip(self.fc_norm, x.chunk(len(self.fc_norm), dim=-1))], -1)
        return self.fc(x)

    def feed_rows(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(tokens).to(self.dtype), self.fuse(features)], dim=-1)  # (B, n, 2H)

    def node_rows(self, tokens: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embed(tokens).to(self.dtype), parents], dim=-1)

    def carried(self, out: torch.Tensor) -> torch.Tensor:
        return self.norm(out) if self.shape.carry_normed else out

    def draft_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the head's own vocabulary (..., Vd)."""
        return self.lm_head(self.norm(h) if self.shape.norm_logits else h).float()

    def target_space(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits (..., Vd) over the target's ids (..., V): -inf where the head cannot draft."""
        width = self.setup.vocab_size if hasattr(self, "setup") else self.adapter.vocab_size
        return onto_target_ids(logits, self.draft_to_target.to(logits.device), width)

    def run_layer(
        self, rows: torch.Tensor, positions: torch.Tensor, cache=None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The layer over rows (B, n, 2H) = [e ‖ g] at the model's `positions` ((B, n), or (3, B, n) for M-RoPE),
        appended to `cache`; `mask` additive 4-D or None for causal. Returns h (B, n, H), pre-norm."""
        n, hidden = rows.shape[1], self.shape.hidden_size
        past = cache.get_seq_length() if cache is not None else 0
        if mask is None and n > 1 and (past > 0 or implementation(self.head_config) != "sdpa"):
            causal = torch.ones(n, n, dtype=torch.bool, device=rows.device).tril()
            mask = additive_mask(causal, past, rows.dtype, rows.device)
        layer = self.layer
        embeds, fused = rows[..., :hidden], rows[..., hidden:]
        fused_normed = layer.hidden_norm(fused)
        residual = fused_normed if self.shape.norm_before_residual else fused
        x = torch.cat([layer.input_layernorm(embeds), fused_normed], dim=-1)
        out = layer.self_attn(
            hidden_states=x,
            attention_mask=mask,
            position_embeddings=self.rotary(x, positions.to(x.device)),
            **{self.cache_keyword: cache},
        )
        h = residual + (out[0] if isinstance(out, tuple) else out)
        return h + layer.mlp(layer.post_attention_layernorm(h))

    # ---- Drafter -----------------------------------------------------------------------------------------------
    @property
    def stepper(self) -> Eagle3Stepper:
        if "_stepper" not in self.__dict__:
            self.__dict__["_stepper"] = Eagle3Stepper(self)
        return self.__dict__["_stepper"]

    def start(self, setup: DraftSetup) -> None:
        if setup.view.prunes:
            raise SpecVLMError(
                "an EAGLE-3 head reads the target's features at every prompt position: drop --pruning (its draft "
                "steps never read the visual tokens again)"
            )
        super().start(setup)

    @torch.no_grad()
    def add_row(self, row: int, ctx: DraftContext) -> int:
        prompt, features = ctx.target_prompt, ctx.target_hidden  # features (L, n_features * Ht)
        n = len(prompt) - 1
        if n < 1:
            raise SpecVLMError("an EAGLE-3 head needs a prompt of at least two tokens")
        x = self.feed_rows(prompt.input_ids[:, 1:], features[None, :-1])  # pair i: (e_{i+1}, g_i) at token i
        rows = type(prompt)(
            torch.zeros(1, n, dtype=torch.long, device="cpu"),
            x,
            prompt.positions[..., :-1],
            prompt.next_position - 1,  # the next pair (root) sits at the last prompt token's position
        )
        return self._prefill_row(row, rows, ctx.reserve, features[-1:])

    # ---- files -------------------------------------------------------------------------------------------------
    def save_pretrained(self, path) -> None:
        """SpecForge / SGLang's layout: `config.json` (LlamaForCausalLMEagle3) and `model.safetensors` (fc,
        midlayer.*, norm, lm_head, d2t, t2d; never the target's embeddings)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {}
        for key, value in self.state_dict().items():
            if key.startswith("own_embeddings."):
                continue
            state["midlayer." + key.removeprefix("layer.") if key.startswith("layer.") else key] = value
        t2d = torch.zeros(self.adapter.vocab_size, dtype=torch.bool, device="cpu")
        t2d[self.draft_to_target.cpu()] = True
        state["t2d"] = t2d
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(specforge_config(self), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path, target, dtype: torch.dtype | None = None) -> Eagle3Head:
        """A head in SpecForge / SGLang's or vLLM speculators' layout for `target`; every mismatch is one line."""
        shape, state = read_head(Path(path), adapter_for(target))
        head = cls(target, shape, dtype, own_embeddings="own_embeddings.weight" in state)
        missing, unexpected = head.load_state_dict(
            {k: v.to(head.adapter.device) for k, v in state.items()}, strict=False
        )
        missing = [k for k in missing if not k.startswith("rotary.")]
        if missing or unexpected:
            raise SpecVLMError(
                f"{path}: the EAGLE-3 weights do not fit their config (missing {missing[:3]}, unexpected "
                f"{unexpected[:3]})"
            )
        return head


class Eagle3Stepper(HeadStepper):
    """An Eagle3Head seen by a session: rows [e ‖ g] (n, 2H), the target's positions, float32 logits over the
    head's own vocabulary."""

    def positions(self, pos: torch.Tensor) -> torch.Tensor:
        return self.head.adapter.positions(pos.to(self.device))

    def forward(self, rows, positions, cache, mask=None, last_only: bool = False):
        out = self.head.run_layer(rows, positions, cache, mask)
        return self.head.draft_logits(out[:, -1:] if last_only else out), out


def specforge_config(head: Eagle3Head) -> dict:
    """The head's config.json in SpecForge's layout (what SGLang loads), with specvlm's own record beside it."""
    shape, text = head.shape, head.adapter.text_config
    config = dict(
        architectures=["LlamaForCausalLMEagle3"],
        model_type="llama",
        target_model_type=head.adapter.config.model_type,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        hidden_act="silu",
        rms_norm_eps=shape.rms_norm_eps,
        attention_bias=shape.attention_bias,
        vocab_size=head.adapter.vocab_size,
        draft_vocab_size=shape.draft_vocab_size,
        target_hidden_size=shape.target_hidden_size,
        tie_word_embeddings=False,
        max_position_embeddings=int(getattr(text, "max_position_embeddings", 32768)),
        norm_before_residual=shape.norm_before_residual,
        norm_output=shape.norm_logits,
        fc_norm=shape.fc_norm,
        eagle_config={"eagle_aux_hidden_state_layer_ids": [i - 1 for i in shape.features]},  # output-of-layer ids
        specvlm={"head": "eagle3", "shape": asdict(shape)},
    )
    rope = dict(getattr(head.head_config, "rope_parameters", None) or {})
    config["rope_theta"] = rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))
    if rope.get("mrope_section"):
        config["rope_scaling"] = {"type": "mrope", "mrope_section": list(rope["mrope_section"])}
    return config
