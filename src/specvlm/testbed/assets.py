"""The testbed's bundled assets: the trained target + draft of each family and a few test-split sample clips,
installed with the package (built by `specvlm testbed build`; see docs/DESIGN.md, "Testbed").

    from specvlm.testbed.assets import bundled_pair, sample_clips
    target_dir, draft_dir = bundled_pair("qwen2_5_vl")     # HF folders: from_pretrained / load_processor work
    for s in sample_clips(): print(s["video"], s["question"], s["reference"])
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecVLMError
from .recipe import FAMILIES

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / "models"
SAMPLES_DIR = HERE / "samples"
_REBUILD = f"rebuild them with `specvlm testbed build --out OUT` and copy OUT/models and OUT/samples into {HERE}"


def bundled_pair(family: str = "qwen2_5_vl") -> tuple[Path, Path]:
    """(target folder, draft folder) of the bundled pair for `family`."""
    if family not in FAMILIES:
        raise SpecVLMError(f"no bundled testbed models for {family!r}; families: {', '.join(FAMILIES)}")
    folders = tuple(MODELS_DIR / family / role for role in ("target", "draft"))
    for folder in folders:
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise SpecVLMError(f"the bundled testbed model {folder} is missing; {_REBUILD}")
    return folders


def bundled_metrics(family: str = "qwen2_5_vl") -> dict:
    """metrics.json of both bundled models: {"target": {...}, "draft": {...}} (loss, accuracy, τ of the pair)."""
    target, draft = bundled_pair(family)
    return {
        role: json.loads((folder / "metrics.json").read_text())
        for role, folder in (("target", target), ("draft", draft))
        if (folder / "metrics.json").is_file()
    }


def trained_texture(model_dir) -> str:
    """The background of the world the testbed model in `model_dir` was trained on (metrics.json's "texture"), so a
    benchmark renders its test worlds the same way; "plain" for models built before worlds had textures."""
    path = Path(model_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    return str(metrics.get("texture", "plain"))


def sample_clips(kind: str | None = None) -> list[dict]:
    """The bundled sample records (one per clip and conversation; `kind="caption"` for the long answers), each with
    "video" as an absolute path, "question", "reference" (the world's answer text), "answer" and "kind"."""
    index = SAMPLES_DIR / "samples.jsonl"
    if not index.is_file():
        raise SpecVLMError(f"the bundled testbed samples ({index}) are missing; {_REBUILD}")
    rows = []
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["video"] = str(SAMPLES_DIR / row["video"])
            if kind is None or row["kind"] == kind:
                rows.append(row)
    missing = [r["video"] for r in rows if not Path(r["video"]).is_file()]
    if missing:
        raise SpecVLMError(f"the bundled sample clip {missing[0]} is missing; {_REBUILD}")
    return rows
