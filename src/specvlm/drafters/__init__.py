"""Who proposes tokens: a draft VLM (`DraftModelDrafter`, small model or "self") or an EagleVLM head
(`drafters.eagle.EagleHead`); `load_drafter(spec, target)` turns a CLI spec ("self", "none", a model folder, a head
folder) into one of them (None for "none"); every command loads its drafts through it."""

from .base import DraftContext, Drafter, DraftSetup, NoDraft, fit_vocab
from .draft_model import DraftModelDrafter
from .loading import is_eagle_head, load_drafter

__all__ = [
    "DraftContext",
    "DraftModelDrafter",
    "DraftSetup",
    "Drafter",
    "NoDraft",
    "fit_vocab",
    "is_eagle_head",
    "load_drafter",
]
