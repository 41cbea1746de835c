"""Files to model inputs, without torchvision: video decoding (PyAV), images (Pillow), the family's processor
(HF's own where torchvision works, else HF's processor class with our video processor), prompts, and the pipeline
from a request's values to model inputs (`prepare_inputs`).

    processor = load_processor("path/to/Qwen2.5-VL")
    video = load_video("clip.mp4", num_frames=8)
    inputs = build_inputs(processor, "What happens?", video=video)     # what HF's processor returns
    model.generate(**inputs)
"""

from .._lazy import lazy_exports

# the module that defines each name, imported on its first use (so the CLI starts without torch)
_EXPORTS = {
    ".arguments": ("add_input_arguments",),
    ".pipeline": ("FrameOptions", "InputModels", "MediaPrompt", "inputs_from_args", "prepare_inputs"),
    ".errors": ("InputError",),
    ".image": ("load_image",),
    ".limits": ("MediaLimits",),
    ".processor": ("build_inputs", "load_processor", "processor_family", "torchvision_usable"),
    ".prompt": ("conversation", "fallback_prompt", "render_prompt"),
    ".video": ("Video", "load_video", "sampler", "uniform_indices"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
