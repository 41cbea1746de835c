"""`TrainConfig`: the settings of one head-training run (no torch here: the CLI's options take their defaults from
it before anything heavy is imported)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 8e-5  # the paper's 7B value (5e-5 for 13B); tiny targets want ~1e-3
    batch_size: int = 1  # examples per micro-step (sequences are processed one at a time)
    grad_accum: int = 1  # micro-steps per optimizer step: effective batch = batch_size * grad_accum
    clip_grad: float | None = 0.5  # clip by value (EAGLE-1); None = off
    feature_noise: float = 0.0  # a in U(-a, a) added to the head's input features (EAGLE uses 0.1)
    logit_weight: float = 0.1
    feature_weight: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    seed: int = 0
    shuffle: bool = True
    out_dir: str | None = None
    checkpoint_every: int = 0  # steps between checkpoints (0: only the final save)
    resume: bool = False
    overwrite: bool = False  # replace a previous run in out_dir (otherwise that is an error)
    cache_target: bool = False  # keep the frozen target's outputs per example (indexable data) in memory:
    # the same results, without re-running the target (and the media decoding)
    # on later epochs; memory ~ examples x length x (2 hidden + vocab) floats
    progress: bool = True
    ttt_steps: int = 7  # EAGLE-3 heads: drafting steps unrolled per sequence in training (SpecForge's ttt_length)
