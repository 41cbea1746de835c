"""`load_drafter(spec, target)`: what `specvlm generate --draft / --head` names, as something
`SpeculativeGenerator(target, drafter)` takes. The one place drafts are loaded: `specvlm generate` and `serve`
(cli.load_generator), `specvlm bench` and `specvlm demo` all call it.

    "self"                       -> "self" (the target drafts for itself)
    "none"                       -> None (no drafter: the caller decodes with the target alone, `TargetOnly`)
    an EagleHead folder          -> EagleHead.from_pretrained(folder, target)   (config.json says specvlm_head="eagle")
    a model folder or hub id     -> the draft VLM, loaded like the target (same dtype / device rules)
    an EagleHead or a model      -> itself (already loaded)

Mismatches are one-line `SpecVLMError`s before any generation: a head trained for another target architecture or
size, a draft model of another family, with other placeholder ids or (given the target's tokenizer) another
tokenizer, a folder that is neither.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecVLMError


def is_eagle_head(path) -> bool:
    """True when `path` is a folder holding a draft head: one saved by `EagleHead.save_pretrained`, or an EAGLE-3
    head (SpecForge / SGLang or vLLM speculators files, ours included)."""
    from .eagle3_files import head_format

    try:
        config = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and (config.get("specvlm_head") == "eagle" or head_format(path) is not None)


def load_drafter(
    spec,
    target,
    dtype: str = "auto",
    device: str | None = None,
    kind: str | None = None,
    tokenizer=None,
    draft_tokenizer=None,
):
    """ "self", None ("none"), a loaded draft VLM, or a loaded `EagleHead`, checked against `target` (a loaded HF
    VLM).

    `kind`: None detects from the folder; "head" insists on an EagleHead folder (`--head`), "model" on a model
    (`--draft`). `dtype` / `device` apply to a draft model ("auto" / None: the target's device, float32 on CPU);
    a head takes the target's device and dtype. `tokenizer` (the target's): a draft model of the target's input
    group must share its vocabulary (`compat.check_tokenizers`; one of another group may have its own, bridged by
    the generator), checked before the draft's weights load; that is `draft_tokenizer` when the caller has it
    already (the bench reads it from the draft's processor), else the draft folder's own."""
    from ..adapters import adapter_for
    from .eagle import EagleHead

    if kind not in (None, "head", "model"):
        raise ValueError(f"kind must be None, 'head' or 'model', got {kind!r}")
    if isinstance(spec, EagleHead):
        return _checked_head(spec, target)
    if not isinstance(spec, (str, Path)):  # an already loaded model (or another Drafter)
        return spec
    name = str(spec)
    if name in ("self", "none"):
        if kind == "head":
            raise SpecVLMError(f"--head needs the folder of a trained EagleHead, not {name!r}")
        return "self" if name == "self" else None
    path = Path(name).expanduser()
    from ..loading import is_hub_id

    if kind == "head" and not path.exists() and is_hub_id(name):
        path = _downloaded_head(name)
    if is_eagle_head(path):
        if kind == "model":
            raise SpecVLMError(f"{name} is an EagleHead folder, not a draft model; pass it as --head")
        from .eagle3 import Eagle3Head
        from .eagle3_files import head_format

        try:
            if head_format(path) is not None:
                return Eagle3Head.from_pretrained(path, target)
            return EagleHead.from_pretrained(path, target)
        except (OSError, KeyError, RuntimeError) as err:  # missing / corrupt weights file
            raise SpecVLMError(f"cannot load the head in {name}: {_first_line(err)}") from None
    if kind == "head":
        if not path.exists():
            raise SpecVLMError(f"head folder {name} does not exist")
        raise SpecVLMError(
            f"{name} is not a head folder (its config.json names neither specvlm_head='eagle' nor an EAGLE-3 "
            "head); train one with `specvlm train-head`, or pass a draft model as --draft"
        )
    from ..compat import check_models, check_tokenizers, other_input_group, shares_vocabulary
    from ..loading import load_config, load_model, load_tokenizer

    target_adapter = adapter_for(target)
    if tokenizer is not None:  # reading a tokenizer takes a moment, a model's weights much longer
        draft_tokenizer = draft_tokenizer if draft_tokenizer is not None else load_tokenizer(name)
        if not shares_vocabulary(tokenizer, draft_tokenizer) and not other_input_group(
            target_adapter.family, getattr(load_config(name), "model_type", None)
        ):  # another vocabulary is bridged only for a draft that reads its own inputs
            check_tokenizers(tokenizer, draft_tokenizer)
    if target_adapter.tp_group is not None:  # a split target: each rank holds the (small) draft on its device
        device = str(target_adapter.device)
    elif device is None or device == "auto":
        device = "cuda" if target_adapter.device.type == "cuda" else str(target_adapter.device)
    draft = load_model(name, dtype, device)
    check_models(target_adapter, adapter_for(draft))
    return draft


def _downloaded_head(name: str) -> Path:
    """A hub id's head files (config, weights), fetched into the hub cache."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as err:  # offline, unknown repo, no access: one line
        raise SpecVLMError(f"cannot fetch the head {name} from the hub: {_first_line(err)}") from None


def _checked_head(head, target):
    from ..adapters import adapter_for
    from .eagle import target_signature

    if head.adapter.model is target:
        return head
    saved, actual = head.signature, target_signature(adapter_for(target))
    if saved != actual:
        raise SpecVLMError(
            f"this EagleHead was built for a {saved['architecture']} target that differs from this "
            f"{actual['architecture']}"
        )
    raise SpecVLMError(
        "this EagleHead is bound to another target instance; load it for this one with "
        "EagleHead.from_pretrained(folder, target)"
    )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
