"""The served model: how one request's files become model inputs and then tokens.

Inputs go through `specvlm.inputs.prepare_inputs`, the pipeline `specvlm generate` runs on its
`--video / --image / --prompt / --num-frames` flags, so the chat template, frame sampling, processor and the draft's
own inputs are the generate command's, and a greedy request answers exactly what `specvlm generate` prints.

Two modes through the same batched engine (`SpeculativeGenerator.batch`, see worker.py): speculative (the default)
and target-only (`--draft none`: a generator that drafts nothing, one token a round, the baseline speculation is
measured against, batched the same way). Both stream through the same HF streamer protocol (see worker.TextSink).
"""

from __future__ import annotations

import torch

from ..inputs.limits import MediaLimits
from ..inputs.pipeline import FrameOptions, InputModels, MediaPrompt, prepare_inputs
from .media import TurnFiles
from .schema import Decoding


def model_inputs(
    models,
    frames: FrameOptions,
    files: TurnFiles,
    max_new_tokens: int,
    with_draft: bool,
    limits: MediaLimits = MediaLimits(),
    check=None,
) -> dict:
    """Model inputs for one request, built by the pipeline `specvlm generate --prompt ... --video ...` uses (the
    draft's own inputs too when `with_draft`); `InputError` (400) for bad media, media past `limits` or a prompt too
    long. What `check()` raises (called as the media decode) abandons the work."""
    draft = (models.draft_dir, models.draft_config) if with_draft else (None, None)
    return prepare_inputs(
        InputModels(models.target_dir, models.target_config, *draft),
        MediaPrompt(files.prompt, tuple(files.images), files.video, files.messages),
        frames,
        max_new_tokens,
        limits=limits,
        check=check,
    )


class Engine:
    """The loaded target, its generator (a SpeculativeGenerator; for --draft none one that drafts nothing, so that
    target-only serving batches exactly like speculation) and the per-request steps the worker runs."""

    def __init__(
        self, models, target, tokenizer, generator, frames: FrameOptions = FrameOptions(), limits=MediaLimits()
    ):
        self.models, self.target, self.tokenizer, self.generator = models, target, tokenizer, generator
        self.frames, self.limits = frames, limits
        # how error messages name the model folders (clients need not learn the server's file system)
        self.folder_names = {str(models.target_dir): "the target model"}
        if models.draft_dir is not None:
            self.folder_names[str(models.draft_dir)] = "the draft model"

    @property
    def mode(self) -> str:
        return self.generator.mode

    def prepare(self, files: TurnFiles, decoding: Decoding, check=None) -> dict:
        """Model inputs for the request (see `model_inputs`)."""
        speculative = self.mode == "speculative"
        return model_inputs(self.models, self.frames, files, decoding.max_new_tokens, speculative, self.limits, check)

    def request(self, inputs: dict, decoding: Decoding):
        """The decoding request `generate(**inputs, **options)` would make of it (HF's option resolution, the target's
        generation_config), with the request's seed as its own torch.Generator when it samples."""
        options = decoding.generate_options()
        seed = decoding.seed if options["do_sample"] else None
        rng = None if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        request = self.generator.request(**inputs, **options, generator=rng)
        request.logprobs = decoding.logprobs
        return request

    @property
    def group(self):
        """The ranks the target is split over (tensor parallelism under torchrun), or None."""
        return self.generator.target.tp_group

    @property
    def keep_alive_s(self) -> float | None:
        """How long the model thread may idle before `keep_alive` (None: forever)."""
        from .ranks import KEEP_ALIVE_S

        return None if self.group is None else KEEP_ALIVE_S

    def batch(self, max_rows: int):
        """A running batch of at most `max_rows` requests (`batch.DecodeBatch`; with a split target one whose every
        operation the other ranks repeat, ranks.py)."""
        if self.group is None:
            return self.generator.batch(max_rows)
        from .ranks import LeaderBatch

        return LeaderBatch(self.generator, self.group, max_rows)

    def keep_alive(self, batch) -> None:
        """No request runs: tell the other ranks, which wait in a collective (split targets only)."""
        if self.group is not None:
            batch.keep_alive()

    def close(self, batch) -> None:
        """The server stops: the other ranks stop following (split targets only)."""
        if self.group is not None:
            batch.close()

    def follow(self) -> int:
        """A rank other than 0: repeat rank 0's batch operations until the server stops (ranks.py)."""
        from .ranks import follow

        return follow(self.generator, self.group)

    def warm_up(self, max_rows: int) -> list[int]:
        """Compile the steps before the first request: batches of every row bucket up to `max_rows` (compiled steps
        pad their rows to one), each for two rounds of a text-only request that reserves RESERVE_AHEAD new tokens,
        so the slot cache is already as long as typical requests need (a longer one grows it and recompiles once).
        Returns the row counts warmed up."""
        from ..engine.batch import RESERVE_AHEAD
        from ..engine.session import bucket

        decoding = Decoding(
            max_new_tokens=RESERVE_AHEAD, temperature=0.0, top_p=1.0, top_k=0, seed=None, stop=(), ignore_eos=True
        )
        inputs = self.prepare(TurnFiles("Hello.", (), None, {}), decoding)
        sizes = sorted({bucket(rows) for rows in range(1, max_rows + 1)} | {max_rows})
        sizes = [rows for rows in sizes if rows <= max_rows]
        batch = self.batch(max_rows)
        with torch.no_grad():  # grad mode is per thread
            for rows in sizes:
                for _ in range(rows):
                    batch.add(self.request(inputs, decoding))
                for _ in range(2):
                    batch.step()
                while len(batch):
                    batch.remove(batch.rows[-1])
        return sizes

    def stats(self, sink, stats) -> dict:
        """The response's "specvlm" object: the request's own speculation statistics (`stats`, its row's)."""
        if self.mode == "target-only":
            return dict(
                mode=self.mode,
                tau=None,
                acceptance_by_position=None,
                rounds=stats.rounds,
                prefill_s=stats.prefill_s,
                decode_s=stats.decode_s,
            )
        tau = stats.mean_accepted_tokens if stats.rounds else None  # undefined without a round (a one-token answer)
        return dict(
            mode=self.mode,
            tau=tau,
            acceptance_by_position=stats.acceptance_by_position,
            rounds=stats.rounds,
            accepted_tokens=stats.accepted_tokens,
            drafted_tokens=stats.drafted_tokens,
            prefill_s=stats.prefill_s,
            decode_s=stats.decode_s,
        )
