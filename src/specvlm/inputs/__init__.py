"""Files to model inputs, without torchvision: video decoding (PyAV), images (Pillow), the family's processor
(HF's own where torchvision works, else HF's processor class with our video processor), prompts, CLI hooks.

    processor = load_processor("path/to/Qwen2.5-VL")
    video = load_video("clip.mp4", num_frames=8)
    inputs = build_inputs(processor, "What happens?", video=video)     # what HF's processor returns
    model.generate(**inputs)
"""

from .cli_args import add_input_arguments, inputs_from_args
from .errors import InputError
from .image import load_image
from .processor import build_inputs, load_processor, processor_family, torchvision_usable
from .prompt import conversation, fallback_prompt, render_prompt
from .video import Video, load_video, sampler, uniform_indices

__all__ = ["InputError", "Video", "add_input_arguments", "build_inputs", "conversation", "fallback_prompt",
           "inputs_from_args", "load_image", "load_processor", "load_video", "processor_family", "render_prompt",
           "sampler", "torchvision_usable", "uniform_indices"]
