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
from functools import cached_property

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

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
    input_ids: torch.Tensor  # (1, L)
    embeds: torch.Tensor  # (1, L, H): text embeddings with visual features scattered in
    positions: torch.Tensor  # the model's position ids for the L tokens: (1, L), or (3, 1, L) for M-RoPE
    next_position: int  # 1-D position of the first generated token
    spans: list[VisualSpan] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def visual_mask(self) -> torch.Tensor:
        """(L,) bool on the host: which prompt positions are visual (bookkeeping, like the spans)."""
        mask = torch.zeros(len(self), dtype=torch.bool, device="cpu")
        for span in self.spans:
            mask[span.start : span.start + span.length] = True
        return mask

    def keep_visual(self, keep: torch.Tensor, contiguous: bool, positions_of) -> Prompt:
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
            kept = int(rows[span.start : span.start + span.length].sum())
            new_start = int(rows[: span.start].sum())
            if kept:
                spans.append(VisualSpan(span.modality, new_start, kept, None, 0))
        if contiguous:
            positions, next_position = positions_of(torch.arange(index.numel(), device="cpu")), index.numel()
        else:
            positions, next_position = self.positions[..., index.to(self.positions.device)], self.next_position
        return Prompt(
            self.input_ids[:, index], self.embeds[:, index.to(self.embeds.device)], positions, int(next_position), spans
        )


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

    @cached_property
    def input_names(self) -> frozenset[str]:
        """The model-input keywords HF's `generate` passes to this model (`generation.model_input_names`)."""
        from .generation import model_input_names

        return model_input_names(self.model)

    def unknown_inputs(self, names) -> list[str]:
        """Of the model-input keywords `names`, those HF's `generate` would refuse for this model."""
        return sorted(name for name in names if name not in self.input_names)

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
        """1-D positions of text tokens, (B, n) (or (n,) for a batch of one) -> the model's position ids (B, n)."""
        return pos.to(self.device).reshape(-1, pos.shape[-1])

    # ---- shared ----------------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, n, H) of ids (B, n) (or (n,) for a batch of one)."""
        return self.embeddings(ids.to(self.device).reshape(-1, ids.shape[-1]))

    def token_id(self, modality: str) -> int | None:
        return self.image_token_id if modality == "image" else self.video_token_id

    def merge(self, input_ids: torch.Tensor, features: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """Token embeddings with visual feature rows scattered into the placeholders, as HF's forward does."""
        embeds = self.embed(input_ids)
        for modality, items in features.items():
            rows, token_id = torch.cat(items), self.token_id(modality)
            where = (input_ids.to(self.device) == token_id).reshape(1, -1, 1)
            if int(where.sum()) != rows.shape[0]:
                raise ValueError(
                    f"{self.family}: the prompt has {int(where.sum())} {modality} placeholder tokens "
                    f"but the {modality} input gives {rows.shape[0]} feature rows"
                )
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

    @cached_property
    def tp_group(self):
        """The process group the model's tensor-parallel shards span (transformers' TP plan under torchrun), or
        None for a model that is whole on this process."""
        if int(getattr(self.model, "tp_size", None) or 1) <= 1:
            return None
        import torch.distributed as dist

        mesh = getattr(self.model, "_device_mesh", None)
        try:
            return mesh["tp"].get_group()
        except (KeyError, RuntimeError, TypeError):  # a 1-D mesh, or none recorded: the whole world
            return dist.group.WORLD

    def new_cache(self, config=None) -> DynamicCache:
        """An empty HF cache for the language model (or for layers built from `config`, e.g. a draft head's)."""
        return DynamicCache(config=config or self.text_config)

    # ---- batches: a processor output for B prompts -> B batch-of-one inputs ------------------------------------
    visual_keys: tuple[str, ...] = ()  # the family's visual inputs, which `split_visual` assigns to rows

    def split_batch(self, inputs: dict) -> list[dict]:
        """B dicts, row b's inputs exactly as the family's processor returns them for prompt b alone, except that
        the row's left padding stays: input_ids / attention_mask / mm_token_type_ids (and any (B, L) token tensor)
        become (1, L) slices, so `request.left_padding` / `strip_left_padding` still see the pads.

        Visual tensors are handed to rows in order (row 0's items first), which is how HF's batched forward consumes
        them: it scatters the features of all items over the placeholders of the flattened batch. Each family says
        how many items a row holds (`split_visual`); every count is checked against the row's placeholder tokens
        where the layout allows, and anything that does not add up, or any tensor whose split is unknown, is a
        one-line ValueError: a wrong split would still decode, silently, with another row's image.

        Rows are views of the batch's tensors (same dtype and device); only small counts go to the host. A batch of
        one comes back as `[inputs]`."""
        batch, length = batch_shape(inputs)
        if batch == 1:
            return [inputs]
        visual = self.split_visual(inputs, inputs["input_ids"])
        rows: list[dict] = [{} for _ in range(batch)]
        for key, value in inputs.items():
            if value is None or isinstance(value, (bool, int, float, str)):
                for row in rows:  # nothing per row in it: every row gets it
                    row[key] = value
            elif key in self.visual_keys:
                for row, parts in zip(rows, visual):
                    if key in parts:
                        row[key] = parts[key]
            elif isinstance(value, torch.Tensor) and tuple(value.shape) == (batch, length):
                for b, row in enumerate(rows):
                    row[key] = value[b : b + 1]
            elif isinstance(value, torch.Tensor) and value.dim() == 0:
                for row in rows:
                    row[key] = value
            else:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"{self.family}: cannot split {key!r} ({shape}) over a batch of {batch}: it is "
                    f"neither a ({batch}, {length}) token tensor nor one of the family's visual inputs "
                    f"({', '.join(self.visual_keys)})"
                )
        return rows

    def split_visual(self, inputs: dict, input_ids: torch.Tensor) -> list[dict]:
        """Per row, {key: tensor} of the family's visual inputs that row holds (keys of `visual_keys`; a row without
        images or videos gets none, as its processor output would have none)."""
        return [{} for _ in range(input_ids.shape[0])]

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

    def new_eagle3_layer(self, config, attention_bias: bool = False) -> torch.nn.Module:
        """An EAGLE-3 decoder layer of the model's own classes, sized by `config` (`one_layer_config` with the
        head's hidden / intermediate size, heads, KV heads, head_dim): its norms and MLP at hidden_size, its
        attention reading [normed embedding ; normed feature] (2 * hidden_size) into heads x head_dim and writing
        hidden_size back, plus `hidden_norm` (the feature's RMSNorm). The attention class is built at
        hidden_size = heads * head_dim (some classes derive their head size from it), then its projections are
        replaced."""
        layer = self.new_layer(config)
        hidden, heads, kv, head_dim = (
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        inner = copy.deepcopy(config)
        inner.hidden_size = heads * head_dim
        attention = type(layer.self_attn)(inner, layer_idx=0)
        attention.q_proj = torch.nn.Linear(2 * hidden, heads * head_dim, bias=attention_bias)
        attention.k_proj = torch.nn.Linear(2 * hidden, kv * head_dim, bias=attention_bias)
        attention.v_proj = torch.nn.Linear(2 * hidden, kv * head_dim, bias=attention_bias)
        attention.o_proj = torch.nn.Linear(heads * head_dim, hidden, bias=False)
        layer.self_attn = attention
        layer.hidden_norm = type(layer.input_layernorm)(hidden, eps=config.rms_norm_eps)
        return layer

    def new_rotary(self, config) -> torch.nn.Module:
        """The model's rotary embedding module for `config` (Qwen's M-RoPE takes 3-D position ids: `positions`)."""
        return type(self.decoder.rotary_emb)(config=config)

    @torch.no_grad()
    def forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        cache: Cache,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        features: tuple[int, ...] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the language model over `embeds` (B, n, H) appended to `cache` (`mask`: additive (B, 1, n, keys) or
        None for causal). Returns float32 logits (B, n, V) (or (B, 1, V) with `last_only`) and the final hidden
        states (B, n, H) after the last norm; with `features` (indices into HF's `hidden_states`: i is the input of
        decoder layer i, the un-normed residual stream) those states concatenated instead, (B, n, len * H), what
        an EAGLE-3 head reads."""
        out = self.decoder(
            inputs_embeds=embeds,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            output_hidden_states=features is not None,
            **{self.cache_keyword: cache},
        )
        hidden = out.last_hidden_state
        rows = hidden[:, -1:] if last_only else hidden
        if features is not None:
            hidden = torch.cat([out.hidden_states[i] for i in features], dim=-1)
        return self.lm_head(rows).float(), hidden


def is_shard(tensor: torch.Tensor) -> bool:
    """Whether a parameter is a tensor-parallel shard (a DTensor), which only its own module may multiply."""
    return callable(getattr(tensor, "full_tensor", None))


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A parameter as one ordinary tensor: a tensor-parallel shard is gathered whole (a collective: every rank)."""
    return tensor.full_tensor() if is_shard(tensor) else tensor


def keep_cache_entries(cache: DynamicCache, prefix: int, extra=()) -> None:
    """Keep the first `prefix` cache entries, then the entries at positions `extra` (host ints, all >= prefix), in
    order. This is how a verified tree collapses to its accepted path without recomputing any K/V."""
    extra = list(extra)
    moved = extra and extra != list(range(prefix, prefix + len(extra)))
    host = torch.tensor(extra, dtype=torch.long, device="cpu")
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        keys, values = layer.keys, layer.values
        if moved:
            index = host.to(keys.device)
            keys[..., prefix : prefix + len(extra), :] = keys[..., index, :]
            values[..., prefix : prefix + len(extra), :] = values[..., index, :]
        layer.keys = keys[..., : prefix + len(extra), :]
        layer.values = values[..., : prefix + len(extra), :]


# ---- batch bookkeeping (host ints), shared by the families' `split_visual` ----------------------------------------
def batch_shape(inputs: dict) -> tuple[int, int]:
    """(B, L) of a processor-shaped batch, after checking that its token tensors agree on it."""
    input_ids = inputs.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"a batch needs input_ids of shape (B, L), got {shape}")
    batch, length = input_ids.shape
    for key in ("attention_mask", "mm_token_type_ids"):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and tuple(value.shape) != (batch, length):
            raise ValueError(f"{key} has shape {tuple(value.shape)} but input_ids has ({batch}, {length})")
    return int(batch), int(length)


def placeholder_counts(input_ids: torch.Tensor, token_id: int | None) -> list[int]:
    """Per row, how many placeholder tokens `token_id` it holds, counted like HF's forward counts them (every
    position, pads included: a pad is never a placeholder)."""
    if token_id is None:
        return [0] * input_ids.shape[0]
    return (input_ids == token_id).sum(1).tolist()


def items_by_tokens(counts: list[int], lengths: list[int], modality: str) -> list[range]:
    """Per row, the range of items (images or videos, in batch order) whose token `lengths` fill its `counts`
    placeholders: row 0 takes the first items until their tokens add up to its count, then row 1, ... exactly as
    one masked_scatter over the flattened batch hands them out. A row that cannot be filled exactly, or items left
    over, is a ValueError."""
    out, item = [], 0
    for row, count in enumerate(counts):
        start, tokens = item, 0
        while tokens < count and item < len(lengths):
            tokens, item = tokens + lengths[item], item + 1
        if tokens != count:
            raise ValueError(
                f"row {row} has {count} {modality} placeholder tokens but the batch's {modality}s, taken "
                f"in order, give it {tokens} ({modality} token lengths: {lengths})"
            )
        out.append(range(start, item))
    if item != len(lengths):
        raise ValueError(
            f"the batch has {len(lengths)} {modality}s but its {modality} placeholder tokens "
            f"({sum(counts)}, per row {counts}) take only the first {item}"
        )
    return out


def hand_out(rows: list[dict], items: list[range], tensors: dict) -> None:
    """Give each row its items' slice (dim 0) of every tensor in `tensors`; a row without items gets no key."""
    for row, mine in zip(rows, items):
        if mine:
            row.update({key: value[mine.start : mine.stop] for key, value in tensors.items()})


def offsets(sizes: list[int]) -> list[int]:
    """Cumulative starts: item i occupies [offsets[i], offsets[i + 1]) of a tensor that concatenates them."""
    out = [0]
    for size in sizes:
        out.append(out[-1] + size)
    return out
