"""Training examples for draft heads: processor-shaped model inputs of a whole conversation, plus which token
positions are the response (the loss is masked to them).

Sources: any iterable of examples (`Example`, `{"inputs": ..., "response": ...}` or `(inputs, response)`), where
`response` is a bool mask over the sequence, a list of positions, or the index where the response starts;
`greedy_examples` (the target's own greedy answers to given prompts: self-distillation, as EAGLE-3 regenerates its
data with the target); and `load_examples(path)` for files: `.pt` (a torch.save'd list of examples) or a JSONL
of conversations about a video or images (`ConversationData`; the testbed world's split files work as they are,
and a world folder means its `train.jsonl`).

JSONL records: {"video": path} or {"image": path | [paths]} / {"images": [paths]} (relative paths are relative to
the JSONL's folder), and "conversation": [{"role": "user", "content": text}, {"role": "assistant", "content":
text}, ...]. The media go with the first user turn, which is rendered exactly as `specvlm generate` renders a
prompt (`specvlm.inputs.build_inputs`: the processor's chat template with the generation prompt). Each assistant
turn is then its text followed by the end-of-turn token (`<|im_end|>`), i.e. what the model itself emits after
that generation prompt; these tokens are the response the loss is masked to. Later user turns are text, laid out
as the family's chat template renders a text turn (what the testbed's own trainer does too).
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
    inputs: dict  # processor outputs for the whole sequence (prompt + response), batch of one
    response: torch.Tensor  # (L,) bool: positions whose tokens are the response

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


def load_examples(path, processor_dir=None, **options):
    """Examples from a file: `.pt` (a list of examples), or a `.jsonl` of conversations / a testbed world folder,
    which need the target's processor folder (`processor_dir`; `options` go to `ConversationData`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SpecVLMError(f"training data {path} does not exist")
    if path.is_dir():
        split = options.pop("split", "train")
        if not (path / f"{split}.jsonl").is_file():
            raise SpecVLMError(f"training data {path} is a folder without {split}.jsonl (not a testbed world)")
        path = path / f"{split}.jsonl"
    options.pop("split", None)
    if path.suffix == ".pt":
        try:
            items = torch.load(path, weights_only=False)
        except Exception as err:  # a corrupt or foreign file: say which
            raise SpecVLMError(f"cannot read training data {path}: {_first_line(err)}") from None
        try:
            return [as_example(item) for item in items]
        except (TypeError, ValueError, KeyError) as err:
            raise SpecVLMError(f"{path}: {err}") from None
    if path.suffix == ".jsonl":
        if processor_dir is None:
            raise SpecVLMError(f"{path}: JSONL conversations need the target's processor (its model folder)")
        return ConversationData(path, processor_dir, **options)
    raise SpecVLMError(
        f"{path}: training data must be a .jsonl of conversations, a testbed world folder or a .pt list of examples"
    )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


END_OF_TURN = "<|im_end|>"


class ConversationData:
    """A JSONL of conversations as a lazy sequence of `Example`s (index -> processed inputs), so a large world
    never sits in memory as pixel tensors. Every record is checked when the file is opened (one-line errors naming
    the line); decoded videos / images are cached for the last `cache` media files. `num_frames` / `fps` /
    `max_pixels` sample and size the media as `specvlm generate --num-frames / --fps / --max-pixels` do;
    `limit` keeps the first records only."""

    def __init__(
        self,
        path,
        processor_dir,
        num_frames: int | None = None,
        fps: float | None = None,
        max_pixels: int | None = None,
        limit: int | None = None,
        cache: int = 8,
        model_config=None,
    ):
        from collections import OrderedDict

        from ..inputs import load_processor, processor_family
        from ..inputs.pipeline import DEFAULT_NUM_FRAMES, _size_options
        from ..inputs.video import check_sampling

        self.path = Path(path)
        if num_frames is None and fps is None:
            num_frames = DEFAULT_NUM_FRAMES
        check_sampling(num_frames, fps)
        self.num_frames, self.fps = num_frames, fps
        self.processor_dir = processor_dir
        family = processor_family(processor_dir)
        self.processor = load_processor(processor_dir)
        if model_config is not None:
            self.check_against(model_config)
        self.size_options = _size_options(self.processor, family, max_pixels)
        self.records = _read_conversations(self.path)
        if limit is not None:
            if limit < 1:
                raise SpecVLMError(f"limit must be >= 1, got {limit}")
            self.records = self.records[:limit]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.end_of_turn = END_OF_TURN if END_OF_TURN in vocab else tokenizer.eos_token
        if self.end_of_turn is None:
            raise SpecVLMError(f"the tokenizer in {processor_dir} has no end-of-turn token ({END_OF_TURN} or eos)")
        self._media: OrderedDict = OrderedDict()
        self._cache = cache

    def check_against(self, model_config) -> None:
        """The processor must speak the model's placeholder ids (else the pixels would land nowhere)."""
        from ..inputs.pipeline import _load_checked

        _load_checked(self.processor_dir, model_config.model_type, model_config)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        record = self.records[index]
        images, video = self._load_media(record)
        from ..inputs import build_inputs

        turns = record["conversation"]
        inputs = build_inputs(self.processor, turns[0]["content"], images, video, **self.size_options)
        ids = inputs["input_ids"]
        response = [False] * ids.shape[-1]
        for turn in turns[1:]:
            if turn["role"] == "assistant":
                new = self._tokens(turn["content"] + self.end_of_turn)
                flag = True
            else:
                new = self._tokens(self._followup(turn["content"]))
                flag = False
            inputs = append_tokens(inputs, new)
            response += [flag] * len(new)
        return Example(inputs, torch.tensor(response))

    def response_tokens(self) -> list[int]:
        """Every record's response token ids, from the text alone (no media is decoded)."""
        return [
            token
            for record in self.records
            for turn in record["conversation"][1:]
            if turn["role"] == "assistant"
            for token in self._tokens(turn["content"] + self.end_of_turn)
        ]

    def _followup(self, question: str) -> str:
        """A later user turn and the generation prompt, laid out as each family's chat template renders a text
        turn (Qwen: a newline after <|im_end|>, "user\\n"; LLaVA-OneVision: no newline, "user \\n")."""
        eot = self.end_of_turn
        if getattr(self.processor, "video_token", None) == "<|video_pad|>":
            return f"\n<|im_start|>user\n{question}{eot}\n<|im_start|>assistant\n"
        return f"<|im_start|>user \n{question}{eot}<|im_start|>assistant\n"

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _load_media(self, record: dict):
        from ..inputs import load_image, load_video
        from ..inputs.video import sampler

        key = (record.get("video"), tuple(record.get("images", ())))
        if key not in self._media:
            images = [load_image(p) for p in record.get("images", ())]
            video = None
            if record.get("video"):
                sample = sampler(
                    self.num_frames,
                    self.fps,
                    sample_frames=getattr(self.processor.video_processor, "sample_frames", None),
                )
                video = load_video(record["video"], sample_indices_fn=sample)
            self._media[key] = (images, video)
            while len(self._media) > self._cache:
                self._media.popitem(last=False)
        self._media.move_to_end(key)
        return self._media[key]


def frequent_tokens(data, size: int, vocab_size: int) -> torch.Tensor:
    """The `size` target ids the responses of `data` use most (an EAGLE-3 head's draft vocabulary, as SpecForge
    picks it), ascending; ties and unused ids by id. A `ConversationData` is read as text; other data as examples."""
    if not 0 < size <= vocab_size:
        raise SpecVLMError(f"--draft-vocab must be in 1..{vocab_size}, got {size}")
    if hasattr(data, "response_tokens"):
        tokens = torch.tensor(data.response_tokens(), dtype=torch.long, device="cpu")
    else:
        examples = [as_example(item) for item in data]
        tokens = torch.cat([example.inputs["input_ids"][0][example.response] for example in examples])
    counts = torch.bincount(tokens.cpu(), minlength=vocab_size)[:vocab_size]
    order = sorted(range(vocab_size), key=lambda i: (-int(counts[i]), i))
    return torch.tensor(sorted(order[:size]), dtype=torch.long, device="cpu")


def _read_conversations(path: Path) -> list[dict]:
    """Checked records: {"video": abs path | None, "images": [abs paths], "conversation": [...]}."""
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecVLMError(f"cannot read training data {path} ({_first_line(err)})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            row = json.loads(line)
        except ValueError as err:
            raise SpecVLMError(f"{where}: malformed JSON ({_first_line(err)})") from None
        if not isinstance(row, dict):
            raise SpecVLMError(f"{where}: expected a JSON object")
        images = row.get("images", row.get("image")) or []
        images = [images] if isinstance(images, str) else images
        video = row.get("video")
        if (
            not isinstance(images, list)
            or not all(isinstance(p, str) for p in images)
            or (video is not None and not isinstance(video, str))
        ):
            raise SpecVLMError(f"{where}: 'video' must be a path and 'image' / 'images' a path or a list of paths")
        resolve = lambda p: str(Path(p).expanduser() if Path(p).expanduser().is_absolute() else path.parent / p)
        media = [resolve(p) for p in images] + ([resolve(video)] if video else [])
        missing = next((p for p in media if not Path(p).is_file()), None)
        if missing is not None:
            raise SpecVLMError(f"{where}: media file {missing} does not exist")
        conv = row.get("conversation")
        if (
            not isinstance(conv, list)
            or not conv
            or not all(
                isinstance(t, dict) and t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
                for t in conv
            )
        ):
            raise SpecVLMError(f"{where}: 'conversation' must be a list of {{role: user|assistant, content: text}}")
        if conv[0]["role"] != "user" or not any(t["role"] == "assistant" for t in conv):
            raise SpecVLMError(f"{where}: a conversation starts with a user turn and has an assistant turn")
        if any(a["role"] == b["role"] for a, b in zip(conv, conv[1:])):
            raise SpecVLMError(f"{where}: user and assistant turns must alternate")
        records.append(
            {"video": resolve(video) if video else None, "images": [resolve(p) for p in images], "conversation": conv}
        )
    if not records:
        raise SpecVLMError(f"training data {path} holds no records")
    return records
