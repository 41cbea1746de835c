"""`run_bench`: methods × settings over a dataset, every output checked against the target's, every time measured
in the same process so speedups compare like with like.

Per sample: decode the video / images once and build the processor inputs (untimed); on the first sample run every
method `warmup` times untimed (lazy initialisation, allocator, caches); then `repeats` timed rounds, each running
every method once, in an order rotated by one per round so slow drift of the machine spreads over all methods. A
row keeps the median round's measurement and every round's wall and decode times (`repeat_wall_s`,
`repeat_decode_s`): round r of two methods ran side by side, which is what the report's paired ratios rest on.
A method's output is lossless when its token ids equal the target-only run's on that sample.

Files written to `out` (refused when it exists non-empty, unless `force`):
    results.jsonl     one row per method × setting × sample (token ids, text, times, acceptance, forward clocks)
    summary.json      one summary per method × setting (report.summarize)
    summary.md        the markdown table with the command, machine and conventions
    pruning_curve.png τ and decode speedup vs keep ratio per pruning method (when pruning ran)
    speedup.png       achieved wall / decode speedup and the ideal per run
    config.json       the arguments and versions
"""

from __future__ import annotations

import inspect
import json
import platform
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import SpecVLMError
from ..inputs.arguments import DEFAULT_NUM_FRAMES
from ..options import DecodeConfig
from ..options import flag as spell_flag
from ..progress import progress_bar
from .datasets import LOADERS, load_dataset
from .methods import (
    DEFAULT_KEEP_RATIOS,
    DEFAULT_PRUNING_METHODS,
    Run,
    default_methods,
    generator_options,
    parse_methods,
)
from .report import acceptance_by_position, plot, summarize, summary_markdown

OUTPUT_FILES = ("results.jsonl", "summary.json", "summary.md", "config.json", "pruning_curve.png", "speedup.png")


def parse_dataset(spec: str) -> tuple[str, str]:
    """ "NAME:ROOT" (e.g. "mvbench:/data/MVBench", "testbed:/data/world") -> (name, root)."""
    name, sep, root = str(spec).partition(":")
    if not sep or not name or not root:
        raise SpecVLMError(
            f"--dataset must be NAME:ROOT (e.g. testbed:data/world, mvbench:/data/MVBench), "
            f"got {spec!r}; names: {', '.join(LOADERS)}"
        )
    return name.strip(), root.strip()


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    """ "caption,direction" -> ("caption", "direction"), checked against the testbed's record kinds (a misspelt
    kind would otherwise select nothing, or silently less than asked)."""
    if text is None:
        return None
    from ..testbed.language import QUESTION_KINDS

    known = ("caption",) + QUESTION_KINDS
    kinds = tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    if not kinds:
        raise SpecVLMError("--kinds is empty")
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise SpecVLMError(f"--kinds: unknown kind {unknown[0]!r}; known: {', '.join(known)}")
    return kinds


def load_records(
    spec: str, *, limit: int | None = None, split: str | None = None, prompt: str | None = None, kinds=None
) -> list[dict]:
    """The dataset's records with the papers' sampling (`PAPER_SETTINGS`), overridden by the options given.
    `kinds` (testbed only) keeps records of those kinds before `limit` counts: a testbed file lists each clip's
    caption and questions together, so `limit` alone takes one clip's records, while each clip has exactly one
    caption, so `kinds=("caption",)` with `limit=N` measures N different clips."""
    name, root = parse_dataset(spec)
    key = name.lower().replace("_", "-")
    options = {}
    if limit is not None:
        if limit < 1:
            raise SpecVLMError(f"--limit must be >= 1, got {limit}")
        options["limit"] = limit
    for flag, key_name, value in (
        ("--split", "split", split),
        ("--prompt-mode", "prompt", prompt),
        ("--kinds", "kinds", kinds),
    ):
        if value is None:
            continue
        loader = LOADERS.get(_canonical(key))
        if loader is not None and key_name not in inspect.signature(loader).parameters:
            raise SpecVLMError(f"{flag} does not apply to the {name} dataset")
        options[key_name] = value
    records = load_dataset(name, root, paper=True, **options)
    if not records:
        raise SpecVLMError(
            f"--dataset {spec}: no samples selected"
            + (f" of kind {', '.join(kinds)}" if kinds else "")
            + (
                " (a testbed world's test split is every 10th clip; try --split train)"
                if _canonical(key) == "testbed"
                else ""
            )
        )
    return records


def _canonical(key: str) -> str:
    return {
        "vdc": "videodetailcaption",
        "video-detail-caption": "videodetailcaption",
        "llava-bench-in-the-wild": "llava-bench",
        "llavabench": "llava-bench",
    }.get(key, key)


def prepare_out(out, force: bool) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SpecVLMError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SpecVLMError(f"--out {out} exists and is not empty; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (out / name).unlink(missing_ok=True)
    return out


# ---- inputs ---------------------------------------------------------------------------------------------------------
def load_frame_folder(path: Path, num_frames: int):
    """A folder of frame images (MVBench's "frame" tasks) as a `Video`, frames sampled uniformly. The frame rate
    comes from a "fpsN" in the path (MVBench's tvqa/frames_fps3_hq), else 1."""
    from ..inputs.image import load_image
    from ..inputs.video import Video, uniform_indices

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise SpecVLMError(f"frame folder {path} holds no images")
    indices = [int(i) for i in uniform_indices(len(files), num_frames)]
    match = re.search(r"fps(\d+(?:\.\d+)?)", str(path))
    fps = float(match.group(1)) if match else 1.0
    frames = np.stack([np.asarray(load_image(files[i])) for i in indices])
    return Video(frames, indices, [i / fps for i in indices], fps, len(files), str(path))


def sample_inputs(
    record: dict, processor, draft_processor, num_frames: int, draft_num_frames: int | None = None
) -> tuple[dict, dict | None]:
    """(target inputs, draft inputs or None when the draft reads the same tensors) for one record: its media loaded
    the dataset's way (a video file, a frame folder, image files or images), then the input pipeline's processor
    stage (`inputs.build_inputs`, `inputs.pipeline.own_draft_inputs`), as `specvlm generate` runs it.
    `draft_num_frames`: the draft's own view of the video (--draft-num-frames), sampled by its processor's rule."""
    from ..inputs import build_inputs, load_image
    from ..inputs.pipeline import own_draft_inputs

    images = [load_image(p) if isinstance(p, str) else p for p in record.get("images", [])]
    video = _sample_video(record, processor, num_frames)
    inputs = build_inputs(processor, record["question"], images, video)
    if draft_num_frames is not None:
        draft_video = _sample_video(record, draft_processor, draft_num_frames)
        return inputs, own_draft_inputs(inputs, processor, draft_processor, record["question"], images, draft_video)
    if draft_processor is None or draft_processor is processor:
        return inputs, None
    return inputs, own_draft_inputs(inputs, processor, draft_processor, record["question"], images, video)


def _sample_video(record: dict, processor, num_frames: int):
    """The record's video (a file or a frame folder) sampled to `num_frames` by `processor`'s rule, or None."""
    from ..inputs import load_video
    from ..inputs.video import sampler

    if record.get("video") is None:
        return None
    path = Path(record["video"])
    if path.is_dir():
        return load_frame_folder(path, num_frames)
    return load_video(
        path, sample_indices_fn=sampler(num_frames, sample_frames=processor.video_processor.sample_frames)
    )


# ---- models ----------------------------------------------------------------------------------------------------------
def _check_folders(target: str, draft: str | None, head: str | None) -> None:
    """Cheap checks before any output or loading: model folders exist (or are hub ids), the head folder is one."""
    from ..drafters.eagle import EagleHead
    from ..loading import resolve

    resolve(target)
    if draft is not None:
        resolve(draft)
    if head is not None and not EagleHead.is_head_folder(head):
        raise SpecVLMError(f"--head {head}: not an EagleHead folder (no config.json with specvlm_head='eagle')")


class Models:
    """The target, its processor, and whatever drafts the runs need (loaded once)."""

    def __init__(
        self,
        target: str,
        draft: str | None,
        head: str | None,
        runs: list[Run],
        dtype: str = "auto",
        device: str = "auto",
        say: Callable[[str], None] = lambda m: None,
    ):
        from ..drafters.loading import load_drafter
        from ..inputs import InputError, load_processor
        from ..loading import load_model

        say(f"loading target {target} ...")
        self.target = load_model(target, dtype, device)
        self.processor = load_processor(target)
        self.draft = self.draft_processor = self.head = None
        if draft is not None and any(r.drafter in ("draft", "hf") for r in runs):
            say(f"loading draft {draft} ...")
            try:
                self.draft_processor = load_processor(draft)
            except InputError:  # a draft folder without processor files reads the target's inputs
                self.draft_processor = self.processor
            # a model, not a drafter: HF assisted generation takes it too
            self.draft = load_drafter(
                draft,
                self.target,
                dtype,
                device,
                kind="model",
                tokenizer=self.processor.tokenizer,
                draft_tokenizer=self.draft_processor.tokenizer,
            )
        if head is not None and any(r.drafter == "head" for r in runs):
            say(f"loading EAGLE head {head} ...")
            self.head = load_drafter(head, self.target, kind="head")


def build_generators(
    models: Models,
    runs: list[Run],
    num_draft_tokens: int,
    draft_positions: str | None = None,
    engine: str = "fast",
    compile="auto",
) -> dict:
    from ..engine.generator import SpeculativeGenerator

    generators = {}
    for run in runs:
        if run.drafter in ("none", "hf"):
            continue
        draft = {"draft": models.draft, "self": "self", "head": models.head}[run.drafter]
        generators[run.name] = SpeculativeGenerator(
            models.target,
            draft,
            processor=models.processor,
            draft_processor=models.draft_processor if run.drafter == "draft" else None,
            engine=engine,
            compile=compile,
            **generator_options(run, num_draft_tokens, draft_positions),
        )
    return generators


# ---- the loop -------------------------------------------------------------------------------------------------------
def execute(
    run: Run,
    models: Models,
    generators: dict,
    inputs: dict,
    draft_inputs: dict | None,
    gen_kwargs: dict,
    hf_assistant_tokens: int | None = None,
):
    from .measure import measure_hf_assisted, measure_speculative, measure_target

    if run.drafter == "none":
        return measure_target(models.target, inputs, gen_kwargs)
    if run.drafter == "hf":
        if draft_inputs is not None and not _same_ids(inputs, draft_inputs):
            raise SpecVLMError(
                "hf-assisted needs a draft that reads the target's prompt (same visual token "
                "counts); this draft's processor gives another prompt: drop hf-assisted"
            )
        return measure_hf_assisted(
            models.target, models.draft, inputs, draft_inputs or inputs, gen_kwargs, hf_assistant_tokens
        )
    return measure_speculative(
        generators[run.name], models.target, inputs, draft_inputs if run.drafter == "draft" else None, gen_kwargs
    )


def _same_ids(a: dict, b: dict) -> bool:
    return a["input_ids"].shape == b["input_ids"].shape and bool((a["input_ids"] == b["input_ids"]).all())


def _median_round(trials: list):
    """The round of median wall time (the lower of two)."""
    return sorted(trials, key=lambda t: t.wall_s)[(len(trials) - 1) // 2]


def _row(run: Run, record: dict, index: int, trials: list, reference: list[int] | None, tokenizer) -> dict:
    """The median round's measurement and every round's times; lossless when every round's output is `reference`."""
    m = _median_round(trials)
    row = {
        "run": run.name,
        "method": run.method,
        "setting": run.setting,
        "keep_ratio": run.keep_ratio,
        "tree": run.tree,
        "pruning": run.pruning,
        "sample": record["id"],
        "index": index,
        "dataset": record.get("dataset"),
        "subset": record.get("subset"),
    }
    data = m.as_dict()
    extra = data.pop("extra")
    row.update(data)
    row.update(extra)
    row["text"] = tokenizer.decode(m.token_ids, skip_special_tokens=True) if tokenizer is not None else None
    row["lossless"] = reference is None or all(t.token_ids == reference for t in trials)
    row["tokens_per_s"] = m.new_tokens / m.wall_s if m.wall_s > 0 else None
    row["tau"] = m.accepted / m.rounds if m.rounds else None
    row["acceptance_by_position"] = acceptance_by_position(m.accept_histogram)
    row["repeat_wall_s"] = [t.wall_s for t in trials]
    row["repeat_decode_s"] = [t.decode_s for t in trials]
    return row


def run_bench(
    dataset: str,
    target: str,
    out,
    *,
    draft: str | None = None,
    head: str | None = None,
    methods: str | None = None,
    keep_ratios=DEFAULT_KEEP_RATIOS,
    pruning_methods=DEFAULT_PRUNING_METHODS,
    max_new_tokens: int = 128,
    num_frames: int = DEFAULT_NUM_FRAMES,
    draft_num_frames: int | None = None,
    limit: int | None = None,
    split: str | None = None,
    prompt: str | None = None,
    kinds=None,
    repeats: int = 3,
    warmup: int = 1,
    ignore_eos: bool = False,
    num_draft_tokens: int = DecodeConfig.num_draft_tokens,
    tree: str = "static",
    hf_assistant_tokens: int | None = None,
    draft_positions: str | None = None,
    engine: str = "fast",
    compile="auto",
    dtype: str = "auto",
    device: str = "auto",
    force: bool = False,
    command: str | None = None,
    say: Callable[[str], None] = lambda m: None,
    progress: bool = False,
) -> list[dict]:
    """Run the benchmark and write its files to `out`; returns the summaries (`report.summarize`). `progress`: a
    bar per sample, with the time left, on stderr when it is a terminal."""
    import torch

    from ..numerics import denormals_flushed

    if max_new_tokens < 1:
        raise SpecVLMError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if num_frames < 1:
        raise SpecVLMError(f"--num-frames must be >= 1, got {num_frames}")
    if draft_num_frames is not None and draft_num_frames < 1:
        raise SpecVLMError(f"--draft-num-frames must be >= 1, got {draft_num_frames}")
    if repeats < 1 or warmup < 0:
        raise SpecVLMError(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    # the decoding options every method shares, checked as the library checks them (errors name the flags)
    shared = dict(num_draft_tokens=num_draft_tokens, draft_positions=draft_positions, engine=engine, compile=compile)
    DecodeConfig(**shared, spell=spell_flag)
    if hf_assistant_tokens is not None and hf_assistant_tokens < 1:
        raise SpecVLMError(f"--hf-assistant-tokens must be >= 1, got {hf_assistant_tokens}")
    runs = parse_methods(
        methods or default_methods(draft is not None, head is not None),
        keep_ratios=keep_ratios,
        pruning_methods=pruning_methods,
        has_draft=draft is not None,
        has_head=head is not None,
        tree=tree,
    )
    if draft_num_frames is not None:
        other = [r.name for r in runs if r.drafter not in ("none", "draft") or r.pruning != "none"]
        if other:
            raise SpecVLMError(
                f"--draft-num-frames gives the draft model its own view, which {', '.join(other)} cannot take "
                "(hf-assisted reads the target's prompt, pruning the target's visual tokens): run target and sd-*"
            )
    records = load_records(dataset, limit=limit, split=split, prompt=prompt, kinds=kinds)
    _check_folders(
        target,
        draft if any(r.drafter in ("draft", "hf") for r in runs) else None,
        head if any(r.drafter == "head" for r in runs) else None,
    )
    out = prepare_out(out, force)

    models = Models(target, draft, head, runs, dtype, device, say)
    generators = build_generators(models, runs, num_draft_tokens, draft_positions, engine, compile)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False)
    if ignore_eos:
        gen_kwargs["eos_token_id"] = -1
    tokenizer = getattr(models.processor, "tokenizer", None)
    context = {
        "dataset": dataset,
        "command": command,
        "machine": machine(),
        "target": target,
        "draft": draft,
        "head": head,
        "samples": len(records),
        "max_new_tokens": max_new_tokens,
        "num_frames": num_frames,
        "draft_num_frames": draft_num_frames,
        "repeats": repeats,
        "warmup": warmup,
        "order": "methods rotated by one per timed round",
        "runs": [r.name for r in runs],
        "ignore_eos": ignore_eos,
        "num_draft_tokens": num_draft_tokens,
        "tree": tree,
        "hf_assistant_tokens": hf_assistant_tokens,
        "draft_positions": draft_positions,
        "engine": engine,
        "compile": compile,
        "keep_ratios": list(keep_ratios),
        "pruning_methods": list(pruning_methods),
        "limit": limit,
        "split": split,
        "kinds": list(kinds) if kinds else None,
        "prompt": prompt,
        "versions": versions(),
    }
    (out / "config.json").write_text(json.dumps(context, indent=1) + "\n")

    rows: list[dict] = []
    bar = progress_bar(len(records), "bench", "sample", progress)
    if not bar.disable:  # the per-run lines go above the bar instead of through it
        say = lambda message: bar.write(message, file=sys.stderr)
    try:
        # denormals flushed (random or small weights produce them, and CPUs crawl on them), for this loop only
        with torch.no_grad(), denormals_flushed(), open(out / "results.jsonl", "w", encoding="utf-8") as results:
            for index, record in enumerate(records):
                for row in _sample_rows(
                    index,
                    record,
                    runs,
                    models,
                    generators,
                    gen_kwargs,
                    (num_frames, draft_num_frames),
                    warmup,
                    repeats,
                    hf_assistant_tokens,
                    tokenizer,
                    say,
                    len(records),
                ):
                    rows.append(row)
                    results.write(json.dumps(row, ensure_ascii=False) + "\n")
                results.flush()
                bar.update(1)
    finally:  # also after an interrupt: the summary of the samples completed so far
        bar.close()
        summary = summarize(rows)
        if rows:
            (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            (out / "summary.md").write_text(summary_markdown(summary, context), encoding="utf-8")
            plot(summary, out)
    return summary


def _sample_rows(
    index: int,
    record: dict,
    runs: list[Run],
    models: Models,
    generators: dict,
    gen_kwargs: dict,
    frames: tuple[int, int | None],  # (target's frames, the draft's own view or None)
    warmup: int,
    repeats: int,
    hf_assistant_tokens,
    tokenizer,
    say,
    n_records: int,
) -> list[dict]:
    """Every run on one sample (warm-up first on sample 0), `repeats` rounds of every run, the order rotated by one
    per round over the whole benchmark; rows in run order."""
    inputs, draft_inputs = sample_inputs(record, models.processor, models.draft_processor, *frames)
    go = lambda run: execute(run, models, generators, inputs, draft_inputs, gen_kwargs, hf_assistant_tokens)
    if index == 0:
        for w in range(warmup):
            for run in runs:
                say(f"warm-up {w + 1}/{warmup}: {run.name}")
                go(run)
    trials = {run: [] for run in runs}
    for r in range(repeats):
        shift = (index * repeats + r) % len(runs)
        for run in runs[shift:] + runs[:shift]:
            m = go(run)
            trials[run].append(m)
            tau = f", τ={m.accepted / m.rounds:.2f}" if m.rounds else ""
            of = f" (round {r + 1}/{repeats})" if repeats > 1 else ""
            say(f"[{index + 1}/{n_records}] {record['id']} {run.name}: {m.new_tokens} tokens, {m.wall_s:.3f}s{tau}{of}")
    reference = _median_round(trials[runs[0]]).token_ids  # runs[0] is the target
    rows = [_row(run, record, index, trials[run], reference, tokenizer) for run in runs]
    differ = [row["run"] for row in rows if not row["lossless"]]
    if differ:
        say(f"[{index + 1}/{n_records}] {record['id']}: OUTPUT DIFFERS FROM TARGET for {', '.join(differ)}")
    return rows


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads, {gpu}, "
        f"Python {platform.python_version()}"
    )


def versions() -> dict:
    import torch
    import transformers

    from .. import __version__

    return {"specvlm": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
