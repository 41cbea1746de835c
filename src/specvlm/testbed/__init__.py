"""A synthetic video world to train and measure on (no downloads): procedurally generated clips of coloured shapes
that move, bounce, collide, appear, disappear and change colour, each with a detailed caption and questions whose
answers follow from the clip's event log. See `export.py` for the files it writes.

    from specvlm.testbed import generate_world, build_text_corpus
    info = generate_world("data/world", n_clips=300, seed=0)       # mp4s + train/validation/test JSONL
    texts = build_text_corpus(n_clips=2000)                         # all the world's text, for a tokenizer
"""

from .._lazy import lazy_exports

# the module that defines each name, imported on its first use (so the CLI starts without torch)
_EXPORTS = {
    ".export": (
        "EXPLAIN_PROMPT",
        "SPLITS",
        "build_text_corpus",
        "clip_id",
        "generate_world",
        "make_clip",
        "split_of",
        "write_mp4",
    ),
    ".language": ("CAPTION_PROMPTS", "DESCRIBE_PROMPT", "QUESTION_KINDS", "conversations", "is_correct"),
    ".render": ("render_clip",),
    ".world": ("Scene", "simulate"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
