"""The served model: how one request's files become model inputs and then tokens.

Inputs go through `specvlm.inputs.inputs_from_args`, the very function `specvlm generate` calls on its
`--video / --image / --prompt / --num-frames` flags, so the chat template, frame sampling, processor and the draft's
own inputs are the generate command's, and a greedy request answers exactly what `specvlm generate` prints.

Two modes: speculative (`SpeculativeGenerator.generate`, the default) and target-only (`--draft none`: the target's
own Hugging Face `generate`, the baseline speculation is measured against). Both stream through the same HF
streamer protocol (see worker.TextSink).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from .media import TurnFiles
from .schema import Decoding


@dataclass(frozen=True)
class Frames:
    """The server's --num-frames / --fps / --max-pixels, applied to every request."""
    num_frames: int | None = None
    fps: float | None = None
    max_pixels: int | None = None


def model_inputs(models, frames: Frames, files: TurnFiles, max_new_tokens: int, with_draft: bool) -> dict:
    """Model inputs for one request, built exactly as `specvlm generate --prompt ... --video ...` builds them (the
    draft's own inputs too when `with_draft`); `InputError` (400) for bad media or a prompt too long."""
    from ..inputs import inputs_from_args

    args = argparse.Namespace(prompt=files.prompt, image=[str(p) for p in files.images],
                              video=None if files.video is None else str(files.video), num_frames=frames.num_frames,
                              fps=frames.fps, max_pixels=frames.max_pixels, max_new_tokens=max_new_tokens)
    draft_dir, draft_config = (models.draft_dir, models.draft_config) if with_draft else (None, None)
    return inputs_from_args(args, models.target_dir, models.target_config, draft_dir, draft_config)


class Engine:
    """The loaded target (and generator, unless target-only) and the per-request steps the worker runs."""

    def __init__(self, models, target, tokenizer, generator=None, frames: Frames = Frames()):
        self.models, self.target, self.tokenizer, self.generator, self.frames = \
            models, target, tokenizer, generator, frames
        eos = target.generation_config.eos_token_id
        self.eos = set([eos] if isinstance(eos, int) else (eos or []))
        # how error messages name the model folders (clients need not learn the server's file system)
        self.folder_names = {str(models.target_dir): "the target model"}
        if generator is not None and models.draft_dir is not None:
            self.folder_names[str(models.draft_dir)] = "the draft model"

    @property
    def mode(self) -> str:
        return "target-only" if self.generator is None else "speculative"

    def prepare(self, files: TurnFiles, decoding: Decoding) -> dict:
        """Model inputs for the request (see `model_inputs`)."""
        return model_inputs(self.models, self.frames, files, decoding.max_new_tokens, self.generator is not None)

    def generate(self, inputs: dict, decoding: Decoding, streamer) -> None:
        """Generates into `streamer`. Sampling is seeded by the request's seed when it gives one: a torch.Generator
        for the speculative generator; torch's global generator for HF's generate, which takes none (the worker is
        the only thread that generates)."""
        options = decoding.generate_options()
        sampled, seed = options["do_sample"], decoding.seed
        with torch.no_grad():   # grad mode is per thread: the worker thread needs its own
            if self.generator is not None:
                rng = torch.Generator(device="cpu").manual_seed(seed) if sampled and seed is not None else None
                self.generator.generate(**inputs, **options, streamer=streamer, generator=rng)
                return
            if sampled and seed is not None:
                torch.manual_seed(seed)
            inputs = {k: v for k, v in inputs.items() if k != "draft_inputs"}
            self.target.generate(**inputs, **options, streamer=streamer)

    def stats(self, sink) -> dict:
        """The response's "specvlm" object: speculation statistics of the request just generated."""
        if self.generator is None:
            first = sink.first_at or sink.started
            end = sink.last_at or first
            return dict(mode=self.mode, tau=None, acceptance_by_position=None, rounds=len(sink.tokens),
                        prefill_s=first - sink.started, decode_s=end - first)
        stats = self.generator.stats
        return dict(mode=self.mode, tau=stats.mean_accepted_tokens, acceptance_by_position=stats.acceptance_by_position,
                    rounds=stats.rounds, accepted_tokens=stats.accepted_tokens, drafted_tokens=stats.drafted_tokens,
                    prefill_s=stats.prefill_s, decode_s=stats.decode_s)
