"""What every family adapter provides, and the parts that are the same for all of them.

An adapter wraps one unmodified Hugging Face `*ForConditionalGeneration` model and exposes exactly what the
speculative loop needs, through HF's public levers only (`get_*_features`, `inputs_embeds`, explicit
`position_ids`, 4-D float attention masks, `DynamicCache`):

- `prepare(inputs)`: processor outputs -> a `Prompt` (merged embeddings, the positions stock `generate` would
  use, where the visual spans are and how their tokens are laid out);
- `forward(...)`: new tokens with explicit positions, a cache and an optional 4-D tree mask -> float32 logits and
  final (post-norm) hidden states;
- `positions(p)`: 1-D positions of text tokens in the model's own format (Qwen's M-RoPE repeats them on its
  three axes).

Family files fill in `visual_features`, `visual_spans` and `prompt_positions`; nothing else knows the family.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .attention import implementation


@dataclass
class VisualSpan:
    """A run of visual placeholder tokens in the prompt. `grid` is the (t, h, w) layout of the first t*h*w of them
    in raster order per frame (t frames or temporal groups), when the layout is regular; `tail` counts tokens after
    the grid that belong to the span (LLaVA-OneVision's one newline token per video)."""
    modality: str
    start: int
    length: int
    grid: tuple[int, int, int] | None = None
    tail: int = 0


@dataclass
class Prompt:
    input_ids: torch.Tensor            # (1, L)
    embeds: torch.Tensor               # (1, L, H): text embeddings with visual features scattered in
    positions: torch.Tensor            # the model's position ids for the L tokens: (1, L), or (3, 1, L) for M-RoPE
    next_position: int                 # 1-D position of the first generated token
    spans: list[VisualSpan] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def visual_mask(self) -> torch.Tensor:
        """(L,) bool on the host: which prompt positions are visual (bookkeeping, like the spans)."""
        mask = torch.zeros(len(self), dtype=torch.bool, device="cpu")
        for span in self.spans:
            mask[span.start: span.start + span.length] = True
        return mask

    def keep_visual(self, keep: torch.Tensor, contiguous: bool, positions_of) -> "Prompt":
        """This prompt with only the visual tokens `keep` (indices among its visual tokens, in order) and all text.
        Positions: `contiguous` renumbers the shorter sequence 0..L'-1 (`positions_of` formats them for the model);
        otherwise every kept token keeps its original position id (Qwen's stock (t, h, w) M-RoPE ids) and
        generation continues at the full prompt's next position."""
        visual = self.visual_mask.nonzero().flatten()
        dropped = torch.ones(visual.numel(), dtype=torch.bool, device="cpu")
        dropped[keep.long().cpu()] = False
        rows = torch.ones(len(self), dtype=torch.bool, device="cpu")
        rows[visual[dropped]] = False
        index = rows.nonzero().flatten()
        spans = []
        for span in self.spans:
            kept = int(rows[span.start: span.start + span.length].sum())
            new_start = int(rows[: span.start].sum())
            if kept:
                spans.append(VisualSpan(span.modality, new_start, kept, None, 0))
        if contiguous:
            positions, next_position = positions_of(torch.arange(index.numel(), device="cpu")), index.numel()
        else:
            positions, next_position = self.positions[..., index.to(self.positions.device)], self.next_position
        return Prompt(self.input_ids[:, index], self.embeds[:, index.to(self.embeds.device)], positions,
                      int(next_position), spans)


def cache_keyword(module) -> str:
    """The name under which `module.forward` takes its KV cache: transformers 5.24 renamed `past_key_values` to
    `cache` (the old name still works there, with a FutureWarning, until 5.40)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def feature_items(pooler_output, hidden_size: int) -> list[torch.Tensor]:
    """HF returns visual features as one tensor (items stacked on dim 0) or a tuple of per-item tensors; this gives
    one (tokens, H) tensor per image or video."""
    items = pooler_output if isinstance(pooler_output, (list, tuple)) else list(pooler_output.unbind(0))
    return [item.reshape(-1, hidden_size) for item in items]


class VLMAdapter:
    model_types: tuple[str, ...] = ()
    uses_mrope = False

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.text_config = model.config.get_text_config()
        self.decoder = model.model.language_model
        self.cache_keyword = cache_keyword(self.decoder)
        self.lm_head = model.get_output_embeddings()
        self.embeddings = model.get_input_embeddings()
        self.image_token_id = getattr(self.config, "image_token_id", None)
        self.video_token_id = getattr(self.config, "video_token_id", None)
        if "sliding_attention" in (getattr(self.text_config, "layer_types", None) or ()):
            raise ValueError(f"{type(model).__name__} uses sliding-window attention, which specvlm cannot roll back")

    @property
    def family(self) -> str:
        return self.model_types[0]

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def attention_config(self):
        """The config whose `_attn_implementation` the language model's attention layers read."""
        return self.decoder.config

    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embeddings.weight.dtype

    # ---- family-specific -------------------------------------------------------------------------------------
    def visual_features(self, inputs: dict) -> dict[str, list[torch.Tensor]]:
        """{"image": [...], "video": [...]}: per image / video, the (tokens, H) rows that replace its placeholders,
        in prompt order, computed by the model's own vision tower and projector."""
        raise NotImplementedError

    def item_layout(self, modality: str, index: int, inputs: dict) -> tuple[tuple[int, int, int] | None, int]:
        """(grid, tail) of one image / video's tokens; see `VisualSpan`. Irregular layouts return (None, 0)."""
        return None, 0

    def prompt_positions(self, inputs: dict, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Position ids for the prompt exactly as stock `generate` computes them, and the next 1-D position."""
        length = input_ids.shape[1]
        return torch.arange(length, device=self.device)[None], length

    def positions(self, pos: torch.Tensor) -> torch.Tensor:
        """1-D positions (n,) of text tokens -> position ids for a batch of one."""
        return pos.to(self.device)[None]

    # ---- shared ----------------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings(ids.to(self.device).reshape(1, -1))

    def token_id(self, modality: str) -> int | None:
        return self.image_token_id if modality == "image" else self.video_token_id

    def merge(self, input_ids: torch.Tensor, features: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """Token embeddings with visual feature rows scattered into the placeholders, as HF's forward does."""
        embeds = self.embed(input_ids)
        for modality, items in features.items():
            rows, token_id = torch.cat(items), self.token_id(modality)
            where = (input_ids.to(self.device) == token_id).reshape(1, -1, 1)
            if int(where.sum()) != rows.shape[0]:
                raise ValueError(f"{self.family}: the prompt has {int(where.sum())} {modality} placeholder tokens "
                                 f"but the {modality} input gives {rows.shape[0]} feature rows")
            embeds = embeds.masked_scatter(where, rows.to(embeds.device, embeds.dtype))
        return embeds

    def spans(self, inputs: dict, input_ids: torch.Tensor, features: dict[str, list[torch.Tensor]]) -> list[VisualSpan]:
        out = []
        for modality, items in features.items():
            where = (input_ids[0] == self.token_id(modality)).nonzero().flatten().tolist()
            offset = 0
            for index, item in enumerate(items):
                grid, tail = self.item_layout(modality, index, inputs)
                out.append(VisualSpan(modality, where[offset], item.shape[0], grid, tail))
                offset += item.shape[0]
        return sorted(out, key=lambda span: span.start)

    def prepare(self, inputs: dict) -> Prompt:
        input_ids = inputs["input_ids"]
        if input_ids.shape[0] != 1:
            raise ValueError("an adapter prepares one sequence at a time; split batches first")
        with torch.no_grad():
            features = self.visual_features(inputs)
            embeds = self.merge(input_ids, features)
        positions, next_position = self.prompt_positions(inputs, input_ids)
        return Prompt(input_ids, embeds, positions, int(next_position), self.spans(inputs, input_ids, features))

    def new_cache(self, config=None) -> DynamicCache:
        """An empty HF cache for the language model (or for layers built from `config`, e.g. a draft head's)."""
        return DynamicCache(config=config or self.text_config)

    # ---- a standalone decoder layer of the model's own class (EAGLE's draft head) ------------------------------
    def one_layer_config(self):
        """The text config cut to one full-attention layer; SDPA unless the model runs eager attention (a head needs
        arbitrary 4-D tree masks, which flash kernels do not take)."""
        config = copy.deepcopy(self.text_config)
        config.num_hidden_layers = 1
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = ["full_attention"]
        config.use_sliding_window = False
        if implementation(config) not in ("eager", "sdpa"):
            config._attn_implementation = "sdpa"
        return config

    def new_layer(self, config) -> torch.nn.Module:
        """A freshly initialised decoder layer of the model's own class, configured by `config` (layer index 0)."""
        return type(self.decoder.layers[0])(config, layer_idx=0)

    def new_rotary(self, config) -> torch.nn.Module:
        """The model's rotary embedding module for `config` (Qwen's M-RoPE takes 3-D position ids: `positions`)."""
        return type(self.decoder.rotary_emb)(config=config)

    @torch.no_grad()
    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                mask: torch.Tensor | None = None, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the language model over `embeds` (1, n, H) appended to `cache`. Returns float32 logits (n, V) (or
        (1, V) with `last_only`) and the final hidden states (n, H) after the last norm."""
        out = self.decoder(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=True,
                           **{self.cache_keyword: cache})
        hidden = out.last_hidden_state[0]
        rows = hidden[-1:] if last_only else hidden
        return self.lm_head(rows).float(), hidden


def keep_cache_entries(cache: DynamicCache, prefix: int, extra=()) -> None:
    """Keep the first `prefix` cache entries, then the entries at positions `extra` (host ints, all >= prefix), in
    order. This is how a verified tree collapses to its accepted path without recomputing any K/V."""
    from .static_cache import _on_devices

    extra = list(extra)
    index = _on_devices(extra)
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        keys, values = layer.keys, layer.values
        if extra and extra != list(range(prefix, prefix + len(extra))):
            keys[..., prefix: prefix + len(extra), :] = keys[..., index(keys.device), :]
            values[..., prefix: prefix + len(extra), :] = values[..., index(values.device), :]
        layer.keys = keys[..., : prefix + len(extra), :]
        layer.values = values[..., : prefix + len(extra), :]
