"""A family's HF processor class without torchvision: the processor's private loading hook is overridden here, in
the one package that touches transformers internals (the input pipeline, `specvlm.inputs.processor`, decides when)."""

from __future__ import annotations

import functools


@functools.cache
def torch_free_processor_class(hf_name: str, video_class: type, image_name: str):
    """HF's processor class `hf_name`, taught to load and accept our torchvision-free `video_class` and HF's
    PIL image processor `image_name` (see `specvlm.inputs.processor` for why)."""
    import transformers

    base, image_class = getattr(transformers, hf_name), getattr(transformers, image_name)

    class Processor(base):
        def check_argument_for_proper_class(self, argument_name, argument):
            return type(argument)  # HF insists on a BaseVideoProcessor, which needs torchvision

        @classmethod
        def _get_arguments_from_pretrained(cls, model_dir, processor_dict=None, **kwargs):
            loaders = {
                "tokenizer": lambda: cls._load_tokenizer_from_pretrained("tokenizer", model_dir, **kwargs),
                "image_processor": lambda: image_class.from_pretrained(model_dir, **kwargs),
                "video_processor": lambda: video_class.from_pretrained(model_dir, **kwargs),
            }
            return [loaders[name]() for name in cls.get_attributes()]

    Processor.__name__ = Processor.__qualname__ = f"{hf_name}WithoutTorchvision"
    return Processor
