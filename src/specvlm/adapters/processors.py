"""A family's HF processor class without torchvision: the processor's loading is redone here, in the one package
that touches transformers internals (the input pipeline, `specvlm.inputs.processor`, decides when)."""

from __future__ import annotations

import functools
import inspect


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
        def from_pretrained(cls, model_dir, **kwargs):
            """HF's `from_pretrained` with our sub-processors: the processor's settings and chat template come from
            `get_processor_dict` (unchanged from 5.3 to 5.25), the tokenizer from `AutoTokenizer`, the image
            processor from HF's PIL class, the video processor from ours, and the constructor takes them all.
            HF's own step in between, the private hook that loads every sub-processor through its Auto class
            (`AutoVideoProcessor`: torchvision), was `_get_arguments_from_pretrained` up to 5.24 and became
            `_resolve_subprocessors` + `from_dict` in 5.25; overriding neither keeps this independent of it."""
            settings, _ = cls.get_processor_dict(model_dir, **kwargs)
            loaders = {
                "tokenizer": lambda: transformers.AutoTokenizer.from_pretrained(model_dir, **kwargs),
                "image_processor": lambda: image_class.from_pretrained(model_dir, **kwargs),
                "video_processor": lambda: video_class.from_pretrained(model_dir, **kwargs),
            }
            parts = {name: loaders[name]() for name in cls.get_attributes()}
            # what HF's from_dict / from_args_and_dict pass on: the config's keys that __init__ names (chat_template,
            # LLaVA-OneVision's num_image_tokens, ...), never the sub-processors' own configs
            accepted = [
                name
                for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self" and name not in parts
            ]
            return cls(**parts, **{name: settings[name] for name in accepted if name in settings})

    Processor.__name__ = Processor.__qualname__ = f"{hf_name}WithoutTorchvision"
    return Processor
