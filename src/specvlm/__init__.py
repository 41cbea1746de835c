"""specvlm: lossless speculative decoding for vision-language models on unmodified Hugging Face transformers."""

from ._lazy import lazy_exports

# the module that defines each name, imported on its first use (so the CLI starts without torch)
_EXPORTS = {
    ".drafters.eagle": ("EagleHead",),
    ".drafters.loading": ("load_drafter",),
    ".errors": ("SpecVLMError",),
    ".engine.generator": ("SpecOutput", "SpeculativeGenerator"),
    ".options": ("DecodeConfig",),
    ".engine.stats": ("SpecStats",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
__version__ = "0.1.0"
