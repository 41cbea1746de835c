"""A synthetic video world to train and measure on (no downloads): procedurally generated clips of coloured shapes
that move, bounce, collide, appear, disappear and change colour, each with a detailed caption and questions whose
answers follow from the clip's event log. See `export.py` for the files it writes.

    from specvlm.testbed import generate_world, build_text_corpus
    info = generate_world("data/world", n_clips=300, seed=0)       # mp4s + train/validation/test JSONL
    texts = build_text_corpus(n_clips=2000)                         # all the world's text, for a tokenizer
"""

from .export import (EXPLAIN_PROMPT, SPLITS, build_text_corpus, clip_id, generate_world, make_clip, split_of,
                     write_mp4)
from .language import CAPTION_PROMPTS, DESCRIBE_PROMPT, QUESTION_KINDS, conversations, is_correct
from .render import render_clip
from .world import Scene, simulate

__all__ = ["CAPTION_PROMPTS", "DESCRIBE_PROMPT", "EXPLAIN_PROMPT", "QUESTION_KINDS", "SPLITS", "Scene",
           "build_text_corpus", "clip_id", "conversations", "generate_world", "is_correct", "make_clip",
           "render_clip", "simulate", "split_of", "write_mp4"]
