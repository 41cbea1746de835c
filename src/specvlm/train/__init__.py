"""Training: online logit distillation of EagleVLM draft heads (`train_head`), and the data they learn from."""

from .data import Example, as_example, greedy_examples, load_examples
from .head import TrainConfig, TrainResult, add_train_arguments, distill_loss, run_from_args, train_head

__all__ = ["Example", "TrainConfig", "TrainResult", "add_train_arguments", "as_example", "distill_loss",
           "greedy_examples", "load_examples", "run_from_args", "train_head"]
