"""What a `generate(**inputs, **kwargs)` call asks for, resolved the way Hugging Face's `generate` resolves it: the
model inputs (left padding dropped), sampling settings, stop conditions, and the outputs wanted.

Compatibility rule: a keyword HF's `generate` takes either means the same here, or is accepted at its default
value only (one-line `SpecVLMError` otherwise, naming it); nothing is silently ignored that would change the
output. The table in docs/DESIGN.md ("HF generate compatibility") lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig

from ..errors import SpecVLMError
from .sampling import Sampling, effective_config, max_new_tokens

# GenerationConfig fields honoured here (the rest must stay at HF's default).
SAMPLING_KEYS = ("max_new_tokens", "max_length", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
HONOURED_KEYS = set(SAMPLING_KEYS) | {
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",  # pad: what finished rows of a batch are padded with
    "use_cache",  # a KV cache is always used; the output is the same
    "num_beams",
    "num_return_sequences",  # 1 only: checked by Sampling.resolve
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "cache_implementation",
    "compile_config",
    "disable_compile",  # how HF would run; ours is fast anyway
}
# keywords of `generate` that are not GenerationConfig fields: accepted when empty / None
EMPTY_OK = (
    "logits_processor",
    "stopping_criteria",
    "prefix_allowed_tokens_fn",
    "assistant_model",
    "negative_prompt_ids",
    "negative_prompt_attention_mask",
    "custom_generate",
)
IGNORED = ("synced_gpus", "tokenizer", "assistant_tokenizer")  # multi-GPU sync, stop-string tokenizers: no effect


@dataclass
class Request:
    """One sequence to decode: a row of a `generate` call's batch, or one server request."""

    inputs: dict  # model inputs, batch of one, left padding removed
    draft_inputs: dict
    prompt_ids: torch.Tensor  # (1, L) as given (padding included): the head of `sequences`
    sampling: Sampling
    max_new: int
    eos: set[int]
    generator: torch.Generator | None = None
    keeps_rows: bool = False  # output_scores / output_logits: keep each new token's rows
    scores: list = field(default_factory=list)  # (1, V) per new token, when asked
    logits: list = field(default_factory=list)
    logprobs: int | None = None  # the server's `logprobs`: keep each new token's TokenLogprob with this many of the
    # most likely tokens (None: off); unlike `logits` only a few numbers a token stay on the host
    token_logprobs: list = field(default_factory=list)  # TokenLogprob per new token, when asked


@dataclass
class BatchRequest:
    """What a `generate(**inputs, **kwargs)` call asks for: one `Request` per row of the batch, and the batch-wide
    outputs (HF's `sequences` is the prompt as given, then the new tokens, right-padded with `pad_token_id`)."""

    rows: list[Request]
    prompt_ids: torch.Tensor  # (B, L) as given
    pad_token_id: int | None
    streamer: object = None
    return_dict: bool = False
    output_scores: bool = False
    output_logits: bool = False


def resolve(
    model_config: GenerationConfig | None, input_ids, kwargs: dict, split=None, draft_split=None, accepts=None
) -> BatchRequest:
    """A BatchRequest from `generate`'s arguments (`kwargs` holds everything but input_ids). `split` (the target
    adapter's `split_batch`) and `draft_split` (the draft's, for `draft_inputs`) cut a batch of B > 1 rows into
    batch-of-one inputs. `accepts(inputs)` (the target adapter's `unknown_inputs`) names the model inputs the
    model would refuse."""
    kwargs = dict(kwargs)
    generation_config = kwargs.pop("generation_config", None)
    draft_inputs = kwargs.pop("draft_inputs", None)
    generator = kwargs.pop("generator", None)
    streamer = kwargs.pop("streamer", None)
    inputs: dict[str, torch.Tensor] = {}
    options: dict[str, Any] = {}
    defaults = GenerationConfig()
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and key in ("eos_token_id", "pad_token_id"):  # HF takes them as tensors
            options[key] = value.reshape(-1).tolist() if key == "eos_token_id" else int(value.reshape(-1)[0])
        elif isinstance(value, torch.Tensor):
            inputs[key] = value
        elif value is None or key in IGNORED or (key in EMPTY_OK and not value):
            continue
        elif key in HONOURED_KEYS:
            options[key] = value
        elif hasattr(defaults, key):
            default = getattr(defaults, key)
            if value != default and (value or default):  # False / None / 0 / [] all mean "off"
                raise SpecVLMError(f"generate option {key}={value!r} is not supported by speculative decoding")
        else:
            raise SpecVLMError(f"generate() got an unsupported argument {key}={value!r}")
    if input_ids is None:
        raise SpecVLMError("generate() needs input_ids (the processor's output)")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise SpecVLMError(f"input_ids must be (batch, length) with a prompt, got shape {tuple(input_ids.shape)}")
    mask = inputs.get("attention_mask")
    if mask is not None and tuple(mask.shape) != tuple(input_ids.shape):
        raise SpecVLMError(
            f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}: they must match"
        )
    unknown = accepts(inputs) if accepts is not None else []
    if unknown:
        raise SpecVLMError(
            f"generate() got model inputs the model does not take: {', '.join(unknown)} (a typo? HF refuses them too)"
        )
    rows = input_ids.shape[0]
    if rows > 1 and streamer is not None:
        raise SpecVLMError(f"a streamer takes a batch of one (as HF's streamers do); this batch has {rows} rows")
    inputs["input_ids"] = input_ids
    eos_override = options.pop("eos_token_id", None)
    pad_override = options.pop("pad_token_id", None)
    flags = {k: bool(options.pop(k, False)) for k in ("return_dict_in_generate", "output_scores", "output_logits")}
    config = effective_config(model_config, generation_config, **{k: options.get(k) for k in SAMPLING_KEYS})
    for key in ("num_beams", "num_return_sequences"):
        if key in options:
            setattr(config, key, options[key])
    flags = {k: v or bool(getattr(config, k, False)) for k, v in flags.items()}
    sampling = Sampling.resolve(config)
    eos = eos_override if eos_override is not None else config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    pad: int | None = pad_override if pad_override is not None else config.pad_token_id
    if pad is None and eos:  # HF pads finished rows with the first eos id then
        first = eos_override if eos_override is not None else config.eos_token_id
        pad = first if isinstance(first, int) else int(list(first)[0])
    max_new = max_new_tokens(config, input_ids.shape[1])  # HF counts max_length with the padding
    keeps_rows = flags["output_scores"] or flags["output_logits"]
    row_inputs = [inputs] if rows == 1 else _split(split, inputs, rows, "inputs")
    if draft_inputs and rows > 1:
        row_drafts = _split(draft_split, draft_inputs, rows, "draft_inputs")
    else:
        row_drafts = [draft_inputs] * rows
    requests = []
    for row, (one, draft) in enumerate(zip(row_inputs, row_drafts)):
        pads = left_padding(one.get("attention_mask"))
        one = strip_left_padding(one, pads)
        draft = strip_left_padding(draft, pads) if draft else one
        requests.append(Request(one, draft, input_ids[row : row + 1], sampling, max_new, eos, generator, keeps_rows))
    return BatchRequest(
        requests,
        input_ids,
        pad,
        streamer,
        flags["return_dict_in_generate"],
        flags["output_scores"],
        flags["output_logits"],
    )


def _split(split, inputs: dict, rows: int, name: str) -> list[dict]:
    if split is None:
        raise SpecVLMError(f"a batch of {rows} rows needs its {name} split per row, and nothing here can split them")
    try:
        out = split(inputs)
    except ValueError as err:
        raise SpecVLMError(f"cannot split the batch's {name} into its {rows} rows: {err}") from None
    if len(out) != rows:
        raise SpecVLMError(f"{name} hold {len(out)} rows, input_ids {rows}")
    return out


def left_padding(attention_mask: torch.Tensor | None) -> int:
    """How many leading positions a batch-of-one `attention_mask` (1, L) pads; zeros anywhere after the first one
    (right padding, holes) are an error, as HF only supports left padding for generation."""
    if attention_mask is None:
        return 0
    row = attention_mask.reshape(-1).to(device="cpu", dtype=torch.bool)
    if bool(row.all()):
        return 0
    pads = int((~row).int().cumprod(0).sum())
    if pads == row.numel():
        raise SpecVLMError("attention_mask is all zeros: there is no prompt to generate from")
    if not bool(row[pads:].all()):
        raise SpecVLMError(
            "attention_mask has zeros after the prompt's first token: only left padding is "
            "supported (as in HF generate for decoder-only models)"
        )
    return pads


def strip_left_padding(inputs: dict, pads: int) -> dict:
    """The inputs without the first `pads` positions of every token-aligned (1, L) tensor: the same prompt as HF
    sees under its mask, at the same positions (HF counts positions and M-RoPE ids over unmasked tokens only)."""
    if not pads:
        return inputs
    length = inputs["input_ids"].shape[1]
    return {
        k: v[:, pads:] if isinstance(v, torch.Tensor) and tuple(v.shape) == (1, length) else v
        for k, v in inputs.items()
    }
