"""Training examples for draft heads: processor-shaped model inputs of a whole conversation, plus which token
positions are the response (the loss is masked to them).

Sources: any iterable of examples (`Example`, `{"inputs": ..., "response": ...}` or `(inputs, response)`), where
`response` is a bool mask over the sequence, a list of positions, or the index where the response starts;
`greedy_examples` (the target's own greedy answers to given prompts: self-distillation, as EAGLE-3 regenerates its
data with the target); and `load_examples(path)` for files (`.pt`: a torch.save'd list of examples; `.jsonl` of
{video|image path, conversation} goes through `specvlm.inputs` once that pipeline offers it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SpecVLMError

# Processor outputs that run along the token axis: extended when a response is appended.
_TOKEN_AXIS = {"input_ids": None, "attention_mask": 1, "mm_token_type_ids": 0, "token_type_ids": 0}


@dataclass
class Example:
    inputs: dict               # processor outputs for the whole sequence (prompt + response), batch of one
    response: torch.Tensor     # (L,) bool: positions whose tokens are the response

    def __post_init__(self):
        length = self.inputs["input_ids"].shape[-1]
        if self.response.shape != (length,):
            raise ValueError(f"response mask has shape {tuple(self.response.shape)}, the sequence is {length} long")
        if not bool(self.response.any()):
            raise ValueError("an example needs at least one response token")


def response_mask(response, length: int) -> torch.Tensor:
    """A bool mask (L,) from a mask, a list of positions, or the index where the response starts."""
    if isinstance(response, int):
        mask = torch.zeros(length, dtype=torch.bool)
        mask[response:] = True
        return mask
    response = torch.as_tensor(response)
    if response.dtype == torch.bool:
        return response.reshape(-1).cpu()
    mask = torch.zeros(length, dtype=torch.bool)
    mask[response.long().reshape(-1)] = True
    return mask


def as_example(item) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, dict) and "inputs" in item:
        inputs, response = item["inputs"], item["response"]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        inputs, response = item
    else:
        raise TypeError("a training example is an Example, {'inputs': ..., 'response': ...} or (inputs, response)")
    return Example(inputs, response_mask(response, inputs["input_ids"].shape[-1]))


def append_tokens(inputs: dict, tokens: list[int]) -> dict:
    """Processor outputs for the prompt followed by `tokens` (text)."""
    out = dict(inputs)
    new = torch.tensor([tokens], dtype=inputs["input_ids"].dtype, device=inputs["input_ids"].device)
    for key, fill in _TOKEN_AXIS.items():
        value = inputs.get(key)
        if value is None:
            continue
        extra = new if fill is None else torch.full_like(new, fill, dtype=value.dtype)
        out[key] = torch.cat([value, extra.to(value.device)], dim=-1)
    return out


@torch.no_grad()
def greedy_examples(target, prompts, max_new_tokens: int = 32, **generate_kwargs) -> list[Example]:
    """Self-distillation data: each prompt (processor outputs) followed by the target's own greedy answer (cut
    before any visual placeholder id, which only random tiny models emit and which no processor could pair with
    pixels)."""
    placeholders = {getattr(target.config, name, None) for name in ("image_token_id", "video_token_id")}
    out = []
    for inputs in prompts:
        prompt_len = inputs["input_ids"].shape[-1]
        ids = target.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, **generate_kwargs)
        answer = ids[0, prompt_len:].tolist()
        cut = next((i for i, token in enumerate(answer) if token in placeholders), len(answer))
        answer = answer[:cut]
        if answer:
            out.append(Example(append_tokens(inputs, answer), response_mask(prompt_len, prompt_len + len(answer))))
    return out


def load_examples(path) -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise SpecVLMError(f"training data {path} does not exist")
    if path.suffix == ".pt":
        try:
            items = torch.load(path, weights_only=False)
        except Exception as err:  # a corrupt or foreign file: say which
            raise SpecVLMError(f"cannot read training data {path}: {err}") from None
        try:
            return [as_example(item) for item in items]
        except (TypeError, ValueError, KeyError) as err:
            raise SpecVLMError(f"{path}: {err}") from None
    if path.suffix == ".jsonl":
        raise SpecVLMError(f"{path}: JSONL conversations need the input pipeline (specvlm.inputs), which is not "
                           "wired to training yet; pass a .pt list of examples, or --tiny for a smoke run")
    raise SpecVLMError(f"{path}: training data must be a .pt list of examples or a .jsonl of conversations")
