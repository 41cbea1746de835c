"""Training: online logit distillation of EagleVLM draft heads (`train_head`), and the data they learn from."""

from .._lazy import lazy_exports

# the module that defines each name, imported on its first use (so the CLI starts without torch)
_EXPORTS = {
    ".data": ("Example", "as_example", "greedy_examples", "load_examples"),
    ".config": ("TrainConfig",),
    ".head": ("TrainResult", "train_head"),
    ".loss": ("distill_loss",),
    ".run": ("run_from_args",),
    ".command": ("add_train_arguments",),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
