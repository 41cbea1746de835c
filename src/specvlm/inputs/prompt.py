"""The prompt text around the visual placeholders.

With a chat template (the processor's, else the tokenizer's) a prompt is one user turn holding the images, then the
video, then the question, rendered with `add_generation_prompt=True`, exactly what HF's
`processor.apply_chat_template` would build. A whole conversation (`messages`: system, user and assistant turns in
HF's chat format, media as {"type": "image"} / {"type": "video"} parts where they appear) is rendered by the same
template, parts in their order. Without a template, `fallback_prompt` uses the ChatML layout both families were
trained on:

    <|im_start|>user\\n{placeholders}{question}<|im_end|>\\n<|im_start|>assistant\\n

with one placeholder per image / video: `<|vision_start|><|image_pad|><|vision_end|>` (`<|video_pad|>` for video)
for Qwen-VL, `<image>` / `<video>` followed by a newline for LLaVA-OneVision. The processor later expands each
placeholder to the item's visual token count.
"""

from __future__ import annotations

from .errors import InputError


def conversation(prompt: str, num_images: int = 0, num_videos: int = 0) -> list[dict]:
    content = [{"type": "image"}] * num_images + [{"type": "video"}] * num_videos
    return [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]


def render_prompt(processor, prompt: str | None, num_images: int = 0, num_videos: int = 0, messages=None) -> str:
    """The prompt string (placeholders not yet expanded) for `processor(text=...)`: one user turn of `prompt` and
    the media counts, or the conversation `messages` (whose media parts must number `num_images` / `num_videos`)."""
    if messages is None:
        if prompt is None or not prompt.strip():
            raise InputError("--prompt is empty: give a question or instruction")
        messages = conversation(prompt, num_images, num_videos)
    else:
        check_conversation(messages, num_images, num_videos)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    return "".join(fallback_turn(processor, message) for message in messages) + "<|im_start|>assistant\n"


ROLES = ("system", "user", "assistant")


def check_conversation(messages, num_images: int, num_videos: int) -> None:
    """A conversation specvlm can render: system / user / assistant turns, ending with a user turn that the answer
    follows, some text, and as many media parts as media given."""
    if not messages:
        raise InputError("the conversation is empty")
    kinds = []
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise InputError(f"message {i}: role {message.get('role')!r} is not one of {', '.join(ROLES)}")
        kinds += [part.get("type") for part in message_parts(message)]
    if messages[-1]["role"] != "user":
        raise InputError("the conversation must end with a user message (the answer follows it)")
    if not any(text.strip() for text in conversation_texts(messages)):
        raise InputError("the conversation has no text: add the question or instruction")
    if (kinds.count("image"), kinds.count("video")) != (num_images, num_videos):
        raise InputError(
            f"the conversation has {kinds.count('image')} image and {kinds.count('video')} video parts, but "
            f"{num_images} images and {num_videos} videos were given"
        )


def conversation_texts(messages) -> list[str]:
    """Every text part of a conversation, in order."""
    return [part.get("text", "") for m in messages for part in message_parts(m) if part.get("type") == "text"]


def message_parts(message) -> list[dict]:
    """A message's content as a list of parts (a string content is one text part)."""
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def fallback_turn(processor, message: dict) -> str:
    """One conversation turn in ChatML, media placeholders where their parts are."""
    text = ""
    for part in message_parts(message):
        kind = part["type"]
        text += part["text"] if kind == "text" else placeholders(processor, int(kind == "image"), int(kind == "video"))
    return f"<|im_start|>{message['role']}\n{text}<|im_end|>\n"


def fallback_prompt(processor, prompt: str, num_images: int = 0, num_videos: int = 0) -> str:
    marks = placeholders(processor, num_images, num_videos)
    return f"<|im_start|>user\n{marks}{prompt}<|im_end|>\n<|im_start|>assistant\n"


def placeholders(processor, num_images: int = 0, num_videos: int = 0) -> str:
    image, video = processor.image_token, processor.video_token
    if image == "<|image_pad|>":  # Qwen-VL: each item between vision start / end markers
        marks = [f"<|vision_start|>{image}<|vision_end|>"] * num_images
        marks += [f"<|vision_start|>{video}<|vision_end|>"] * num_videos
        return "".join(marks)
    # LLaVA-OneVision: placeholders, then the text on a new line
    marks = image * num_images + video * num_videos
    return marks + ("\n" if marks else "")
