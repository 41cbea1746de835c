"""Who proposes tokens: a draft VLM (`DraftModelDrafter`, small model or "self")."""

from .base import DraftContext, Drafter, fit_vocab
from .draft_model import DraftModelDrafter

__all__ = ["DraftContext", "DraftModelDrafter", "Drafter", "fit_vocab"]
