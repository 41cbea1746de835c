"""specvlm: lossless speculative decoding for vision-language models on unmodified Hugging Face transformers."""

from .generator import SpecOutput, SpeculativeGenerator
from .stats import SpecStats

__all__ = ["SpecOutput", "SpecStats", "SpeculativeGenerator"]
__version__ = "0.1.0"
