"""specvlm: lossless speculative decoding for vision-language models on unmodified Hugging Face transformers."""

from .drafters.eagle import EagleHead
from .drafters.loading import load_drafter
from .errors import SpecVLMError
from .generator import SpecOutput, SpeculativeGenerator
from .stats import SpecStats

__all__ = ["EagleHead", "SpecOutput", "SpecStats", "SpecVLMError", "SpeculativeGenerator", "load_drafter"]
__version__ = "0.1.0"
