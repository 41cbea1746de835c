"""Reading published EAGLE-3 heads: SpecForge / SGLang's layout and vLLM's speculators layout, into one
`Eagle3Shape` and a state dict named like `Eagle3Head`'s modules. Every mismatch with the target is one line.

    SpecForge / SGLang   config: architectures LlamaForCausalLMEagle3 (or vLLM's aliases), flat llama fields,
                         draft_vocab_size, target_model_type, optional eagle_config.eagle_aux_hidden_state_layer_ids
                         (decoder layers whose OUTPUT is read: HF index id + 1), norm_output (norm before lm_head)
                         weights: fc, midlayer.*, norm, lm_head, d2t, t2d (ignored), embed_tokens only sometimes
    speculators          config: speculators_model_type "eagle3", transformer_layer_config (the layer's sizes),
                         draft_vocab_size, eagle_aux_hidden_state_layer_ids (layers whose INPUT is read: HF index
                         id), norm_before_residual (vLLM's default when absent: true), norm_before_fc, fc_norm,
                         norm_output (the normed state is carried), target_hidden_size
                         weights: fc, layers.0.*, norm, lm_head, d2t, t2d, often embed_tokens, input_norm
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SpecVLMError

ARCHITECTURES = ("LlamaForCausalLMEagle3", "Eagle3LlamaForCausalLM", "Eagle3Qwen2_5vlForCausalLM")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def default_features(num_layers: int) -> tuple[int, ...]:
    """HF `hidden_states` indices of the low, middle and high layers EAGLE-3 reads by default: (2, L/2, L-3), the
    inputs of those decoder layers (clamped into 0..L-1 for targets of fewer than 6 layers, e.g. tiny tests')."""
    return tuple(sorted(min(max(i, 0), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3)))


@dataclass(frozen=True)
class Eagle3Shape:
    """What an EAGLE-3 head is, whatever file format it came in."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    draft_vocab_size: int
    features: tuple[int, ...]  # HF hidden_states indices of the target layers it reads
    target_hidden_size: int
    attention_bias: bool = False
    norm_before_residual: bool = False  # speculators: the residual is norm_g(g), not g
    norm_before_fc: bool = False  # speculators: one RMSNorm over the concatenated features (`input_norm`)
    fc_norm: bool = False  # EAGLE-3.1: one RMSNorm per feature before fc
    carry_normed: bool = False  # speculators' norm_output: nodes hand their children norm(h)
    norm_logits: bool = True  # SpecForge's norm_output: lm_head reads norm(h) (False: h)
    rope_theta: float | None = None  # None: the target's


def head_format(path) -> str | None:
    """ "specforge", "speculators", or None when `path` holds no EAGLE-3 head."""
    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if config.get("speculators_model_type") == "eagle3":
        return "speculators"
    if any(name in ARCHITECTURES for name in config.get("architectures") or []):
        return "specforge"
    return None


def read_head(path: Path, adapter) -> tuple[Eagle3Shape, dict[str, torch.Tensor]]:
    fmt = head_format(path)
    if fmt is None:
        raise SpecVLMError(f"{path}: not an EAGLE-3 head (its config.json names neither {ARCHITECTURES[0]} nor eagle3)")
    config = json.loads((path / "config.json").read_text())
    shape = _shape(config, fmt, adapter, path)
    state = _state(_weights(path), fmt, path)
    _check(shape, state, adapter, path, config)
    return shape, state


def _shape(config: dict, fmt: str, adapter, path) -> Eagle3Shape:
    text = adapter.text_config
    layers = int(text.num_hidden_layers)
    if fmt == "speculators":
        layer = config.get("transformer_layer_config") or {}
        ids = config.get("eagle_aux_hidden_state_layer_ids")
        features = tuple(int(i) for i in ids) if ids else default_features(layers)  # inputs of layers
        flags = dict(
            norm_before_residual=bool(config.get("norm_before_residual", True)),  # vLLM's default when absent
            norm_before_fc=bool(config.get("norm_before_fc", False)),
            carry_normed=bool(config.get("norm_output", False)),
            norm_logits=True,
        )
    else:
        layer = config
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        features = tuple(int(i) + 1 for i in ids) if ids else default_features(layers)  # outputs of layers
        flags = dict(
            norm_before_residual=bool(config.get("norm_before_residual", False)),
            norm_logits=bool(config.get("norm_output", True)),
        )
    if int(layer.get("num_hidden_layers", 1)) != 1:
        raise SpecVLMError(f"{path}: EAGLE-3 heads with {layer['num_hidden_layers']} layers are not supported (one)")
    if not all(0 <= i < layers for i in features):
        raise SpecVLMError(f"{path}: the head reads target layers {list(features)}, but the target has {layers}")
    try:
        hidden, heads = int(layer["hidden_size"]), int(layer["num_attention_heads"])
        rope = layer.get("rope_parameters") or {}
        return Eagle3Shape(
            hidden_size=hidden,
            intermediate_size=int(layer["intermediate_size"]),
            num_attention_heads=heads,
            num_key_value_heads=int(layer.get("num_key_value_heads") or heads),
            head_dim=int(layer.get("head_dim") or hidden // heads),
            rms_norm_eps=float(layer.get("rms_norm_eps", 1e-6)),
            draft_vocab_size=int(config.get("draft_vocab_size") or layer.get("vocab_size") or adapter.vocab_size),
            features=features,
            target_hidden_size=int(config.get("target_hidden_size") or hidden),
            attention_bias=bool(layer.get("attention_bias", False)),
            fc_norm=bool(config.get("fc_norm", False)),
            rope_theta=rope.get("rope_theta", layer.get("rope_theta")),
            **flags,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SpecVLMError(f"{path}: the EAGLE-3 config lacks or garbles {err}") from None


def _weights(path: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file))
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt or truncated file: one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SpecVLMError(f"{file}: cannot read the EAGLE-3 weights: {first}") from None
    raise SpecVLMError(f"{path}: no EAGLE-3 weights ({' or '.join(WEIGHT_FILES)})")


def _state(weights: dict[str, torch.Tensor], fmt: str, path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under `Eagle3Head`'s names."""
    layer_prefix = "layers.0." if fmt == "speculators" else "midlayer."
    state = {}
    for key, value in weights.items():
        key = key.removeprefix("model.")
        if key == "t2d" or key.startswith(("verifier_", "rotary")):
            continue  # t2d follows from d2t; the verifier's copies are training-only
        if key.startswith(("q_norm", "k_norm")) or ".q_norm." in key or ".k_norm." in key:
            raise SpecVLMError(f"{path}: Qwen3-style EAGLE-3 heads (per-head q/k norms) are not supported")
        if key == "embed_tokens.weight":
            key = "own_embeddings.weight"  # the target's table, copied into the checkpoint
        elif key.startswith(layer_prefix):
            key = "layer." + key.removeprefix(layer_prefix)
        elif key.startswith(("layers.", "midlayers.")):
            raise SpecVLMError(f"{path}: EAGLE-3 heads with more than one layer are not supported ({key})")
        state[key] = value
    return state


def _check(shape: Eagle3Shape, state: dict, adapter, path, config: dict) -> None:
    family = config.get("target_model_type")
    if family and family != adapter.config.model_type:
        raise SpecVLMError(
            f"{path}: this EAGLE-3 head was trained for a {family} target, not {adapter.config.model_type}"
        )
    if shape.target_hidden_size != adapter.hidden_size:
        raise SpecVLMError(
            f"{path}: the head reads target features of width {shape.target_hidden_size}, the target's are "
            f"{adapter.hidden_size}"
        )
    d2t = state.get("d2t")
    if d2t is None:  # no draft vocabulary of its own: the target's ids
        state["d2t"] = torch.zeros(shape.draft_vocab_size, dtype=torch.long, device="cpu")
        return
    if d2t.numel() != shape.draft_vocab_size:
        raise SpecVLMError(f"{path}: d2t has {d2t.numel()} entries, draft_vocab_size says {shape.draft_vocab_size}")
    targets = torch.arange(d2t.numel(), device=d2t.device) + d2t.long()
    if int(targets.min()) < 0 or int(targets.max()) >= adapter.vocab_size:
        raise SpecVLMError(f"{path}: d2t maps draft ids outside the target's {adapter.vocab_size} ids")
    state["d2t"] = d2t.long()
