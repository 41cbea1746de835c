"""The prompt text around the visual placeholders.

With a chat template (the processor's, else the tokenizer's) the conversation is one user turn holding the images,
then the video, then the question, rendered with `add_generation_prompt=True`, exactly what HF's
`processor.apply_chat_template` would build. Without one, `fallback_prompt` uses the ChatML layout both families
were trained on:

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


def render_prompt(processor, prompt: str, num_images: int = 0, num_videos: int = 0) -> str:
    """The prompt string (placeholders not yet expanded) for `processor(text=...)`."""
    if prompt is None or not prompt.strip():
        raise InputError("--prompt is empty: give a question or instruction")
    messages = conversation(prompt, num_images, num_videos)
    tokenizer = getattr(processor, "tokenizer", processor)
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return fallback_prompt(processor, prompt, num_images, num_videos)


def fallback_prompt(processor, prompt: str, num_images: int = 0, num_videos: int = 0) -> str:
    image, video = processor.image_token, processor.video_token
    if image == "<|image_pad|>":  # Qwen-VL: each item between vision start / end markers
        marks = [f"<|vision_start|>{image}<|vision_end|>"] * num_images
        marks += [f"<|vision_start|>{video}<|vision_end|>"] * num_videos
        placeholders = "".join(marks)
    else:  # LLaVA-OneVision: placeholders, then the text on a new line
        placeholders = image * num_images + video * num_videos
        placeholders += "\n" if placeholders else ""
    return f"<|im_start|>user\n{placeholders}{prompt}<|im_end|>\n<|im_start|>assistant\n"
