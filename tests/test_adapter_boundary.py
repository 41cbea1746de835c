"""One door to transformers: only `specvlm/adapters/` touches its internals (model classes' inner modules, caches,
attention and rotary plumbing, private methods), so a transformers release that moves them is repaired in one
package. The rest of specvlm may use transformers' public surface: Auto* loading, configs and model classes (to
build models), GenerationConfig, tokenizers, logging, and the image / video processing utilities the input pipeline
builds on. The scan reads the source (imports, attribute paths, getattr-style string names), so it also catches code
that never runs in the suite."""

import ast
import re
from pathlib import Path

import specvlm

PACKAGE = Path(specvlm.__file__).parent
DOOR = PACKAGE / "adapters"

# transformers modules the rest of the package may import from (public API)
PUBLIC_MODULES = {
    "transformers",
    "transformers.utils",
    "transformers.utils.logging",
    "transformers.video_utils",
    "transformers.image_utils",
    "transformers.image_transforms",
    "transformers.processing_utils",
    "transformers.feature_extraction_utils",
}
# names that are internals even when importable from the top level
INTERNAL_NAMES = {
    "DynamicCache",
    "StaticCache",
    "Cache",
    "AttentionInterface",
    "ALL_ATTENTION_FUNCTIONS",
    "DynamicLayer",
    "EncoderDecoderCache",
}
# attribute names that reach into a model's inner modules; the ON_MODELS ones are common words (a recipe's `layers`,
# a clip's `visual`), so they count only on something named like a model or its decoder
INTERNAL_ATTRIBUTES = {
    "language_model",
    "rotary_emb",
    "embed_tokens",
    "vision_tower",
    "multi_modal_projector",
    "image_newline",
}
ON_MODELS = {"layers", "visual"}
MODEL_LIKE = re.compile(r"\b(model|decoder|target|draft)\b")
# private attributes of other libraries that the rest of the package may use, with why
ALLOWED_PRIVATE = {
    "_dynamo",  # torch.compile's settings (session.py)
    "_option_string_actions",  # argparse: whether a parser already defines an option
    "_exit",  # os._exit: a rank that lost its peers ends without running its stuck threads' cleanup (serve/ranks.py)
}


def violations(source: str) -> list[str]:
    """What in `source` (a module outside adapters/) touches transformers internals, one line each."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "transformers":
            if node.module not in PUBLIC_MODULES:
                found.append(f"{where}: imports from {node.module}")
            found += [f"{where}: imports {a.name}" for a in node.names if a.name in INTERNAL_NAMES]
        elif isinstance(node, ast.Import):
            found += [
                f"{where}: imports {a.name}"
                for a in node.names
                if a.name.startswith("transformers") and a.name not in PUBLIC_MODULES
            ]
        elif isinstance(node, ast.Attribute):
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            on_model = node.attr in ON_MODELS and MODEL_LIKE.search(ast.unparse(node.value))
            if (
                node.attr in INTERNAL_ATTRIBUTES
                or node.attr in INTERNAL_NAMES
                or on_model
                or (private and not own and node.attr not in ALLOWED_PRIVATE)
            ):
                found.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "setattr", "hasattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if (
                isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and (
                    name.value in INTERNAL_ATTRIBUTES
                    or (name.value.startswith("_") and not name.value.startswith("__"))
                )
            ):
                found.append(f"{where}: {node.func.id}(..., {name.value!r})")
    return found


def test_only_adapters_touch_transformers_internals():
    report = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if DOOR not in path.parents:
            found = violations(path.read_text())
            if found:
                report[str(path.relative_to(PACKAGE))] = found
    assert not report, report


def test_the_scan_finds_each_kind_of_reach():
    planted = {
        "from transformers import DynamicCache": "imports DynamicCache",
        "from transformers.cache_utils import StaticCache": "imports from transformers.cache_utils",
        "import transformers.models.qwen2_vl": "imports transformers.models.qwen2_vl",
        "layer = model.model.language_model.layers[0]": ".language_model",
        "layer = adapter.decoder.layers[0]": ".layers",
        "tower = target.model.visual": ".visual",
        "config._attn_implementation = 'sdpa'": "._attn_implementation",
        "fn = getattr(GenerationConfig, '_get_default_generation_params')": "getattr(..., '_get_default",
    }
    for source, expected in planted.items():
        assert any(expected in v for v in violations(source)), (source, violations(source))
    clean = (
        "from transformers import AutoTokenizer, GenerationConfig\nself._cache = 1\n"
        "import torch._dynamo\ntorch._dynamo.config.recompile_limit = 64\nn = recipe.arch.layers\n"
        "rows = clip.visual\nhead = self.adapter.lm_head\n"
    )
    assert violations(clean) == []
