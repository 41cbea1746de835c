"""`load_processor(model_dir)`: the family's HF processor, or the same processor without torchvision.

With a working torchvision this is `AutoProcessor.from_pretrained`. Without it (CPU machines here: the torchvision
wheels are CUDA builds) HF's combined processors cannot even be constructed, so we build a subclass of the very same
HF class (`Qwen2_5_VLProcessor`, `Qwen2VLProcessor`, `LlavaOnevisionProcessor`) whose only differences are:

- its video processor is ours (`video_processors.py`: same config files, same tensors);
- its image processor is HF's `*ImageProcessorPil`, named directly (what `AutoImageProcessor` gives without
  torchvision from 5.2x on; before, `AutoImageProcessor` itself demanded torchvision);
- the argument class check that rejects a non-HF video processor is skipped;
- it is assembled from the checkpoint's files by its own `from_pretrained` (adapters/processors.py) rather than
  HF's, whose loader builds every sub-processor through its Auto class (`AutoVideoProcessor`: torchvision).

Everything else (chat template, placeholder expansion, mm_token_type_ids, second_per_grid_ts, LLaVA-OneVision's
token counts for anyres images and pooled videos, batch_num_images) is HF's own code, so it cannot drift from HF.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ..adapters.processors import torch_free_processor_class
from .errors import InputError, first_line
from .video_processors import OnevisionVideoProcessor, QwenVLVideoProcessor

# model_type -> (HF processor class name, our video processor, HF's PIL image processor class name)
FAMILIES = {
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", QwenVLVideoProcessor, "Qwen2VLImageProcessorPil"),
    "qwen2_vl": ("Qwen2VLProcessor", QwenVLVideoProcessor, "Qwen2VLImageProcessorPil"),
    "llava_onevision": ("LlavaOnevisionProcessor", OnevisionVideoProcessor, "LlavaOnevisionImageProcessorPil"),
}
_BY_PROCESSOR_CLASS = {name: family for family, (name, *_) in FAMILIES.items()}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@functools.cache
def torchvision_usable() -> bool:
    """True only when torchvision imports and its ops load (a CUDA-built wheel beside a CPU torch fails here)."""
    try:
        import torchvision  # noqa: F401
        import torchvision.transforms.v2.functional  # noqa: F401

        return True
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return False


def processor_family(model_dir) -> str:
    """The model family of a checkpoint: config.json's model_type, else the processor class its files name."""
    folder = Path(str(model_dir)).expanduser()
    if not folder.is_dir():
        if folder.exists() or not _HUB_ID.match(str(model_dir)):
            raise InputError(
                f"model folder {model_dir} does not exist"
                if not folder.exists()
                else f"{model_dir} is a file, not a model folder"
            )
        from transformers import AutoConfig  # a hub id

        try:
            return _supported(AutoConfig.from_pretrained(str(model_dir)).model_type, model_dir)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read the config of {model_dir}: {first_line(err)}") from None
    config = _read_json(folder / "config.json")
    if config.get("model_type"):
        return _supported(config["model_type"], model_dir)
    for name in ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json"):
        family = _BY_PROCESSOR_CLASS.get(_read_json(folder / name).get("processor_class"))
        if family:
            return family
    raise InputError(f"{model_dir}: cannot tell the model family (no config.json model_type, no processor_class)")


def load_processor(model_dir, family: str | None = None, use_torchvision: bool | None = None):
    """The processor of the checkpoint at `model_dir` (a folder or hub id): call it like HF's,
    `processor(text=[...], images=[[...]], videos=[frames], video_metadata=[...], return_tensors="pt")`, or use
    `apply_chat_template`. `family` (a model_type) skips reading it from the folder. `use_torchvision=None` picks
    HF's own processor exactly when torchvision works."""
    detected = processor_family(model_dir)  # also: one-line errors for a missing folder
    if family is not None and family != detected:
        raise InputError(f"{model_dir} holds a {detected} checkpoint, not {family}")
    family = detected
    use_torchvision = torchvision_usable() if use_torchvision is None else use_torchvision
    try:
        if use_torchvision:
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(str(model_dir))
        hf_name, video_class, image_name = FAMILIES[family]
        return torch_free_processor_class(hf_name, video_class, image_name).from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot load the processor of {model_dir}: {first_line(err)}") from None


def _supported(family: str, model_dir) -> str:
    if family not in FAMILIES:
        raise InputError(
            f"{model_dir} is a {family!r} model; specvlm's input pipeline supports {', '.join(sorted(FAMILIES))}"
        )
    return family


def build_inputs(processor, prompt: str | None, images=(), video=None, messages=None, **processor_kwargs) -> dict:
    """Model inputs for one prompt: `images` (PIL images, in order) and an optional decoded `Video` are placed in
    one user turn (see `prompt.render_prompt`), or where the conversation `messages` places them, and run through
    `processor`. Returns a plain dict of tensors, exactly the processor's output (input_ids, attention_mask, pixel
    values, grids, mm_token_type_ids, ...)."""
    from .prompt import conversation_texts, render_prompt

    texts = [prompt or "", *conversation_texts(messages or ())]
    for token in (getattr(processor, "image_token", None), getattr(processor, "video_token", None)):
        if token and any(token in text for text in texts):  # HF raises on it from 5.2x, earlier ones expand nothing
            raise InputError(
                f"cannot build the model inputs: the prompt contains {token!r}, a placeholder the "
                "processor inserts itself; give the media as images / video instead"
            )
    images = list(images)
    text = render_prompt(processor, prompt, len(images), int(video is not None), messages)
    kwargs = dict(text=[text], return_tensors="pt")
    if images:
        kwargs["images"] = [images]  # nested, as apply_chat_template passes them: LLaVA-OV counts them per prompt
    if video is not None:  # frames already sampled; the metadata gives Qwen2.5-VL its second_per_grid_ts
        kwargs.update(videos=[video.frames], video_metadata=[video.metadata], do_sample_frames=False)
    try:
        out = processor(**kwargs, **processor_kwargs)
    except ValueError as err:  # e.g. a prompt that itself contains placeholder tokens
        raise InputError(f"cannot build the model inputs: {first_line(err)}") from None
    return dict(out)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
