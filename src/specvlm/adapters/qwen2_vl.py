"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): the Qwen2.5-VL layout without time-scaled video positions.

Its `get_rope_index` ignores `second_per_grid_ts`, so the Qwen2.5-VL adapter's calls serve it unchanged.
"""

from __future__ import annotations

from .qwen2_5_vl import Qwen2_5_VLAdapter


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    model_types = ("qwen2_vl",)
