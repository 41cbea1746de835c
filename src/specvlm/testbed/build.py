"""`specvlm testbed build`: the synthetic world, one tokenizer, and a trained target + draft per family.

    specvlm testbed build --out testbed-build --minutes 80 --seed 0

writes

    OUT/world/, OUT/world-position/     the world on each background the families use (`Recipe.textures`): the
                                        same clips and words (mp4 clips + train/validation/test JSONL)
    OUT/models/<family>/{target,draft}/ HF folders: config, fp16 safetensors, generation config, tokenizer,
                                        processor files, metrics.json
    OUT/samples/                        three test-split clips (of Qwen2.5-VL's world) + samples.jsonl
    OUT/build.json                      the recipe, timings and every metric

The bundled assets (`specvlm.testbed.assets`) are OUT/models and OUT/samples copied into the package. The same
command gives the same models: every random choice is seeded and training runs a step count fixed by --minutes
(unless training overruns twice the budget: each model may take an even share of the time left until start +
2 × --minutes among the models still to train, and one that passes its share stops early, which is recorded).
An interrupted build continues with the same command plus --resume: finished models are reloaded, not retrained.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import SpecVLMError
from .recipe import FAMILIES, FAMILY_SEED, ROLES, SAMPLES_FAMILY, Recipe
from .world import WORLD_TEXTURES


def world_folder(texture: str, large: bool = False) -> str:
    """The folder in OUT of the world rendered on `texture` ("world", "world-position", "world-large", ...): a build
    renders one per background its families use (`Recipe.textures`)."""
    return ("world-large" if large else "world") + ("" if texture == "plain" else f"-{texture}")


# what --force replaces
OWNED = (
    *(world_folder(t, large) for t in WORLD_TEXTURES for large in (False, True)),
    "models",
    "samples",
    "build.json",
    "_processors",
    "build-state.json",
)
STATE = "build-state.json"  # what a build in OUT was started with; --resume continues only the same build
N_SAMPLES = 3


class Progress:
    """Progress on stderr: on a terminal, a tqdm bar per stage with the time left; else one line at most every 15 s."""

    def __init__(self, enabled: bool = True, stream=sys.stderr):
        self.enabled, self.stream, self.start = enabled, stream, time.perf_counter()
        self.tty = enabled and getattr(stream, "isatty", lambda: False)()
        self.last = 0.0
        self.bar = self.stage = None  # the current stage's tqdm bar (terminal only) and its name

    def elapsed(self) -> str:
        s = int(time.perf_counter() - self.start)
        return f"{s // 60:02d}:{s % 60:02d}"

    def __call__(self, stage: str, done: int, total: int, note: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            self._draw(stage, done, total, note)
            return
        now = time.perf_counter()
        if done < total and now - self.last < 15:
            return
        self.last = now
        bar = "#" * int(20 * done / max(total, 1))
        self.stream.write(f"[{self.elapsed()}] {stage:<28} [{bar:<20}] {done}/{total} {note}\n")
        self.stream.flush()

    def _draw(self, stage: str, done: int, total: int, note: str) -> None:
        from ..progress import progress_bar

        if self.bar is None or self.stage != stage:  # a new stage: a new bar (its rate is its own)
            self._close()
            self.bar, self.stage = progress_bar(total, stage, "it", file=self.stream), stage
        self.bar.n = done
        self.bar.set_postfix_str(note, refresh=False)
        self.bar.refresh()
        if done >= total:
            self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = self.stage = None

    def say(self, message: str) -> None:
        if self.enabled:
            self._close()
            self.stream.write(f"[{self.elapsed()}] {message}\n")
            self.stream.flush()


def prepare_out(out: Path, force: bool, resume: bool = False) -> None:
    """Refuse to touch a non-empty folder without --force or --resume; with --force, replace only what a build
    writes; with --resume, keep it (`check_resume` then decides what can be reused)."""
    if out.exists() and not out.is_dir():
        raise SpecVLMError(f"--out {out} is a file, not a folder")
    if force and resume:
        raise SpecVLMError("--force and --resume contradict each other: --force starts over, --resume continues")
    if out.is_dir() and any(out.iterdir()) and not resume:
        if not force:
            raise SpecVLMError(
                f"--out {out} is not empty; pass --force to replace a previous build there, or "
                f"--resume to continue an interrupted one"
            )
        for name in OWNED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise SpecVLMError(f"--out {out} is not writable: {err.strerror or err}") from None


def check_resume(out: Path, state: dict, resume: bool) -> None:
    """Record what this build is (`state`); when resuming, the folder must hold a build of the same state."""
    path, state = out / STATE, json.loads(json.dumps(state))  # as JSON keeps it (tuples become lists)
    if resume and path.is_file() and json.loads(path.read_text()) != state:
        raise SpecVLMError(
            f"--out {out} holds a build with another recipe, seed or arithmetic; --resume continues "
            f"only the same command (use --force to start over)"
        )
    path.write_text(json.dumps(state, indent=1) + "\n")


def default_threads() -> int:
    """The CPUs this process may run on: what torch uses in a fresh process, whatever a caller set since."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def global_torch_state(grad: bool, dtype, threads: int, flush_denormal: bool):
    """Within the block: torch's global grad mode, default dtype, intra-op threads and flush-to-zero as given; the
    previous ones are restored on the way out."""
    import torch

    from ..numerics import flush_denormal_enabled

    saved = (torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads(), flush_denormal_enabled())
    try:
        torch.set_grad_enabled(grad)
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush_denormal)
        yield
    finally:
        torch.set_grad_enabled(saved[0])
        torch.set_default_dtype(saved[1])
        torch.set_num_threads(saved[2])
        torch.set_flush_denormal(saved[3])


@contextlib.contextmanager
def build_arithmetic(threads: int):
    """The torch state a build computes under, whatever the caller left: autograd off (training switches it on for
    its own steps), float32 default dtype, no autocast, denormals kept, `threads` intra-op threads, and the global
    RNG seeded inside the build (every model and loop seeds it) and given back to the caller as it was. All of it
    is restored on the way out. Grad mode, dtype, autocast and threads change what is computed; a caller's RNG or
    flush-to-zero (specvlm demo and bench turn it on) must not reach the build, nor the build's reach the caller."""
    import torch

    with (
        global_torch_state(False, torch.float32, threads, False),
        torch.random.fork_rng(devices=[]),
        torch.autocast("cpu", enabled=False),
    ):
        yield


def build_testbed(
    out,
    minutes: float = 80.0,
    seed: int = 0,
    families=FAMILIES,
    recipe: Recipe | None = None,
    force: bool = False,
    progress: bool = True,
    resume: bool = False,
    threads: int | None = None,
) -> dict:
    """Run the whole build into `out` and return build.json's content. `recipe` overrides the full recipe scaled to
    `minutes` (tests pass a miniature one). With `resume`, a build of the same recipe and seed interrupted in `out`
    continues: the world is reused and every model whose folder is complete (its metrics.json, written last) is
    reloaded instead of trained again. `threads`: torch intra-op threads (default: every CPU this process may use);
    part of the arithmetic, so recorded and checked by `resume`. The caller's torch state (grad mode, dtype,
    threads, RNG, autocast, flush-to-zero) neither changes the result nor is changed by the build
    (`build_arithmetic`)."""
    threads = threads or default_threads()
    with build_arithmetic(threads):
        return _build(out, minutes, seed, families, recipe, force, progress, resume, threads)


def _build(out, minutes, seed, families, recipe, force, progress, resume, threads) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    from ..inputs import load_processor
    from . import build_text_corpus, generate_world
    from .recipe import (
        LARGE_BALL_SEED,
        family_tokenizer,
        make_model,
        save_checkpoint,
        save_processor,
        train_bpe,
        visual_tokens,
    )
    from .train import (
        Formatter,
        answer_accuracy,
        bf16_is_fast,
        load_clips,
        one_ball_captions,
        one_colour_answers,
        pretrain_vision,
        probe_accuracy,
        speculative_tau,
        train,
        validation_loss,
    )

    if not minutes > 0:
        raise SpecVLMError(f"--minutes must be > 0, got {minutes}")
    families = list(dict.fromkeys(families))
    if not families or any(f not in FAMILIES for f in families):
        raise SpecVLMError(f"--families must be among {', '.join(FAMILIES)}, got {', '.join(families) or 'none'}")
    out = Path(out).expanduser()
    prepare_out(out, force, resume)
    recipe = recipe or Recipe().scaled(minutes)
    check_resume(
        out, {"seed": seed, "recipe": recipe.to_dict(), "bf16_autocast": bf16_is_fast(), "threads": threads}, resume
    )
    show = Progress(progress)
    hf_logging.disable_progress_bar()  # HF's per-save / per-load bars would bury our one status line
    start = time.perf_counter()
    budget_end = start + 2 * minutes * 60  # the hard stop for training; normally never reached
    report = {
        "command": f"specvlm testbed build --minutes {minutes:g} --seed {seed} --families {' '.join(families)}",
        "seed": seed,
        "recipe": recipe.to_dict(),
        "torch_threads": threads,
        "bf16_autocast": bf16_is_fast(),
        "families": {},
        "timings_s": {},
    }

    worlds, large_worlds = {}, {}  # by background: one world per texture the families use, the same story on each
    for texture in dict.fromkeys(recipe.texture(f) for f in families):
        worlds[texture] = out / world_folder(texture)
        generate_world(
            worlds[texture],
            recipe.n_clips,
            seed=seed,
            frames=tuple(recipe.clip_frames),
            size=recipe.world_size,
            questions=recipe.questions,
            workers=2,
            texture=texture,
            progress=lambda d, n, texture=texture: show(f"world ({texture}): clips", d, n),
        )
        if recipe.large_ball_clips and recipe.large_ball_share > 0:
            large_worlds[texture] = out / world_folder(texture, large=True)
            generate_world(
                large_worlds[texture],
                recipe.large_ball_clips,
                seed=seed + LARGE_BALL_SEED,
                frames=tuple(recipe.clip_frames),
                size=recipe.world_size,
                questions=recipe.questions,
                workers=2,
                ball="large",
                texture=texture,
                progress=lambda d, n, texture=texture: show(f"world ({texture}): large-ball clips", d, n),
            )
    report["timings_s"]["world"] = round(time.perf_counter() - start, 1)
    # the words are the same whatever the background, so one tokenizer serves every world
    bpe = train_bpe(build_text_corpus(next(iter(worlds.values())) / "train.jsonl"), recipe.vocab)

    for fi, family in enumerate(families):
        t0 = time.perf_counter()
        tokenizer = family_tokenizer(bpe, family, recipe.vocab)
        proc_dir = out / "_processors" / family
        save_processor(proc_dir, recipe, family, tokenizer, make_model(recipe, family, "draft", 0))
        processor = load_processor(proc_dir)
        fmt = Formatter(processor)
        world, large_world = worlds[recipe.texture(family)], large_worlds.get(recipe.texture(family))
        train_clips = load_clips(
            world,
            "train",
            processor,
            recipe.num_frames,
            progress=lambda d, n, family=family: show(f"{family}: pixel cache", d, n),
        )
        val_clips = load_clips(
            world, "validation", processor, recipe.num_frames, limit=recipe.eval_clips, pixel_dtype=torch.float32
        )
        large_clips = (
            load_clips(
                large_world,
                "train",
                processor,
                recipe.num_frames,
                progress=lambda d, n, family=family: show(f"{family}: large-ball pixel cache", d, n),
            )
            if large_world is not None
            else []
        )
        fam = report["families"][family] = {
            "visual_tokens": train_clips[0].n_visual,
            "train_pixels_sha256": pixels_digest(train_clips),
            "expected_visual_tokens": visual_tokens(recipe, family),
            "train_clips": len(train_clips),
            "validation_clips": len(val_clips),
        }
        report["timings_s"][f"{family}/pixel_cache"] = round(time.perf_counter() - t0, 1)
        models = {}
        for ri, role in enumerate(ROLES):
            t1 = time.perf_counter()
            folder = out / "models" / family / role
            if resume and (folder / "metrics.json").is_file():
                fam[role] = {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k != "pair"}
                models[role] = _reload(folder)
                show.say(f"{family} {role}: reused from the interrupted build")
                continue
            model = make_model(recipe, family, role, seed=1000 * seed + 10 * FAMILY_SEED[family] + ri)
            remaining = max(budget_end - t1, 0)
            share = remaining / (2 * (len(families) - fi) - ri)  # the models still to train split what is left
            probe, vision = None, None
            if recipe.vision_steps[role]:
                probe, vision = pretrain_vision(
                    model,
                    train_clips,
                    recipe.vision_steps[role],
                    recipe.vision_lr,
                    seed=seed * 7919 + ri,
                    batch=recipe.vision_batch,
                    warmup=recipe.warmup,
                    progress=lambda d, n, loss, tag=f"{family}: vision {role}": show(
                        tag, d, n, f"probe loss {loss:.3f}"
                    ),
                )
            if vision is not None:  # what the tower sees before the language model trains (and moves it)
                vision["probe_accuracy_before_language"] = probe_accuracy(model, probe, val_clips)
            text, video = recipe.text_steps[role], recipe.steps[role]
            single = recipe.turns_per_step > 0  # evaluate as the model was trained: one turn or one pack
            large = int(recipe.large_ball_share * video) if large_clips else 0
            common = dict(
                lr=recipe.lr[role],
                seed=seed * 7919 + ri,
                warmup=recipe.warmup,
                caption_first=recipe.caption_first,
                probe_weight=recipe.probe_weight,
                probe=probe,
                teacher=models.get("target") if role == "draft" else None,
                distill=recipe.distill,
                freeze_vision=recipe.freeze_vision,
                turns_per_step=recipe.turns_per_step,
                shared_video=recipe.shared_video,
                deadline=t1 + share,
            )
            warm_up = None
            if large:  # the text steps, then the large balls (see Recipe.large_ball_share)
                warm_up = train(
                    model,
                    large_clips,
                    fmt,
                    text + large,
                    text_steps=text,
                    kinds=tuple(recipe.warm_up_kinds),
                    progress=lambda d, n, loss, tag=f"{family}: warm-up {role}": show(tag, d, n, f"loss {loss:.3f}"),
                    **common,
                )
                text = 0
                warm_up["video_gap"] = video_gap(model, val_clips, fmt, single)  # on the small balls, at once
            dense_stages, dense = [], [int(stage.share * (video - large)) for stage in recipe.dense_stages]
            for stage, steps in zip(recipe.dense_stages, dense):  # (the text steps, then) each on its kinds
                done = train(
                    model,
                    [one_ball_captions(one_colour_answers(c)) for c in train_clips]
                    if stage.one_colour
                    else train_clips,
                    fmt,
                    text + steps,
                    text_steps=text,
                    dense_steps=steps,
                    dense_keep=recipe.dense_keep,
                    kinds=tuple(stage.kinds or recipe.video_kinds),
                    progress=lambda d, n, loss, tag=f"{family}: dense {role}": show(tag, d, n, f"loss {loss:.3f}"),
                    **dict(common, lr=recipe.lr[role] * stage.lr),
                )
                text = 0
                done["video_gap"] = video_gap(model, val_clips, fmt, single)
                done["video_gap_by_kind"] = video_gap_by_kind(model, val_clips, fmt, single)
                dense_stages.append(done)
            if dense_stages:
                common["lr"] = recipe.lr[role] * recipe.after_dense_lr
            result = train(
                model,
                train_clips,
                fmt,
                text + video - large - sum(dense),
                text_steps=text,
                question_steps=int(recipe.question_share * (video - large)),
                dense_keep=recipe.dense_keep,
                dense_mix=recipe.dense_mix,
                kinds=tuple(recipe.video_kinds),
                mixed_in=large_clips if large else None,
                mix=recipe.large_ball_mix,
                progress=lambda d, n, loss, tag=f"{family}: train {role}": show(tag, d, n, f"loss {loss:.3f}"),
                **common,
            )
            if warm_up is not None:
                result["large_ball_warm_up"] = warm_up
            if dense_stages:
                result["dense_stages"] = dense_stages
            if vision is not None:
                result["vision_pretraining"] = dict(vision, probe_accuracy=probe_accuracy(model, probe, val_clips))
            save_checkpoint(folder, model, recipe, family, tokenizer)
            models[role] = reloaded = _reload(folder)
            show.say(f"{family} {role}: evaluating on {len(val_clips)} validation clips ...")
            metrics = {
                "family": family,
                "role": role,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "arch": recipe.to_dict()["arch"][role],
                "visual_tokens_per_clip": fam["visual_tokens"],
                "texture": recipe.texture(family),  # its world's background (assets.trained_texture)
                "train": result,
            }
            own = validation_loss(reloaded, val_clips, fmt, single_turns=single)
            metrics["validation_loss"] = round(own, 4)
            metrics["video_gap"] = video_gap(reloaded, val_clips, fmt, single, own=own)
            metrics["video_gap_by_kind"] = video_gap_by_kind(reloaded, val_clips, fmt, single)
            metrics.update(answer_accuracy(reloaded, val_clips, fmt, recipe.eval_questions))
            fam[role] = metrics
            (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")  # last: the folder is complete
            report["timings_s"][f"{family}/{role}"] = round(time.perf_counter() - t1, 1)
            del model
        del train_clips, large_clips
        show.say(f"{family}: measuring τ on {recipe.tau_clips} validation captions ...")
        tau_clips = val_clips[: recipe.tau_clips]
        fam["speculative"] = {
            "static_tree": speculative_tau(models["target"], models["draft"], tau_clips, fmt, recipe.tau_tokens),
            "chain_5": speculative_tau(
                models["target"], models["draft"], tau_clips, fmt, recipe.tau_tokens, tree="chain", num_draft_tokens=5
            ),
            "untrained_pair_static_tree": speculative_tau(
                make_model(recipe, family, "target", 1).eval(),
                make_model(recipe, family, "draft", 2).eval(),
                tau_clips,
                fmt,
                recipe.tau_tokens,
            ),
        }
        for role in ROLES:
            (out / "models" / family / role / "metrics.json").write_text(
                json.dumps(dict(fam[role], pair=fam["speculative"]), indent=1) + "\n"
            )
    shutil.rmtree(out / "_processors", ignore_errors=True)
    samples_family = SAMPLES_FAMILY if SAMPLES_FAMILY in families else families[0]
    write_samples(worlds[recipe.texture(samples_family)], out / "samples", N_SAMPLES)
    report["timings_s"]["total"] = round(time.perf_counter() - start, 1)
    (out / "build.json").write_text(json.dumps(report, indent=1) + "\n")
    show.say(f"done in {show.elapsed()}: {out}")
    return report


def video_gap(model, clips, fmt, single_turns: bool, own: float | None = None) -> float:
    """What the video is worth to the answers: the validation loss with another clip's video minus with its own
    (`validation_loss`; `own` when the caller has it already); about 0 when the model ignores the video."""
    from .train import validation_loss

    if own is None:
        own = validation_loss(model, clips, fmt, single_turns=single_turns)
    other = validation_loss(model, clips, fmt, another_video=True, single_turns=single_turns)
    return round(other - own, 4)


def video_gap_by_kind(model, clips, fmt, single_turns: bool) -> dict[str, float]:
    """`video_gap` on each kind of turn alone ("caption", "colors", ...): a reading that starts on one kind shows
    there long before it moves the gap over every turn. With captions, also on their colour words alone: every
    mention ("caption colours") and the first mention of each colour in a caption ("caption first colours"), the
    few tokens of a caption a draft can read off the video only, where a repeat can be copied from the caption; and on
    the first word of each place ("caption places": " top" in "at the top left"), which a tower that sees where
    decides (docs/DESIGN.md, Testbed: the ceiling)."""
    from .train import (
        after,
        among,
        answer_token_losses,
        caption_colour_ids,
        caption_place_ids,
        first_mentions,
        mean_answer_loss,
        only_kinds,
    )

    kinds = sorted({turn[3] for clip in clips for turn in clip.turns})
    gaps = {}
    for kind in kinds:
        alone = [c for c in (only_kinds(c, (kind,)) for c in clips) if c.turns]
        own = answer_token_losses(model, alone, fmt, single_turns=single_turns)
        other = answer_token_losses(model, alone, fmt, another_video=True, single_turns=single_turns)
        masks = {kind: None}
        if kind == "caption":
            colours = caption_colour_ids(fmt)
            masks |= {
                "caption colours": functools.partial(among, colours),
                "caption first colours": functools.partial(first_mentions, colours),
                "caption places": functools.partial(after, *caption_place_ids(fmt)),
            }
        for name, counted in masks.items():
            gaps[name] = round(mean_answer_loss(other, counted) - mean_answer_loss(own, counted), 4)
    return gaps


def pixels_digest(clips) -> str:
    """SHA-256 of the clips' processed pixel tensors in order: what training reads from the world's decoded video.
    Recorded per family, so two builds that differ can be told apart as "different inputs" or "same inputs,
    different arithmetic"."""
    digest = hashlib.sha256()
    for clip in clips:
        for key in sorted(clip.visual):
            digest.update(clip.visual[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def _reload(folder: Path):
    """The saved checkpoint as the engine will see it: fp16 on disk, float32 in memory."""
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()


def write_samples(world: Path, out: Path, n: int) -> Path:
    """The first `n` test clips (mp4 + every conversation) in `load_testbed`'s record layout, plus the fields
    "question" and "reference" (first user / assistant turn)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in (world / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    clips = sorted({r["clip"] for r in rows})[:n]
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            if r["clip"] in clips:
                name = Path(r["video"]).name
                shutil.copyfile(world / r["video"], out / name)
                r = dict(
                    r, video=name, question=r["conversation"][0]["content"], reference=r["conversation"][1]["content"]
                )
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return out


# ---- CLI ----------------------------------------------------------------------------------------------------------
def add_build_command(testbed_parser) -> None:
    """`specvlm testbed build` under the `testbed` parser that cli.py creates."""
    sub = testbed_parser.add_subparsers(dest="testbed_command", required=True)
    p = sub.add_parser(
        "build",
        help="generate the world and train a target + draft per family (CPU, about 50 minutes on 2 cores)",
        description="Generate the synthetic video world (on each family's background), train one byte-level BPE "
        "tokenizer on its text, and train "
        "from scratch a target and a draft VLM (real HF classes) for each family on its train split. "
        "Writes OUT/world, OUT/models/<family>/{target,draft} (HF folders with metrics.json), "
        "OUT/samples and OUT/build.json. Deterministic for a given --minutes and --seed.",
    )
    p.add_argument(
        "--out",
        default="testbed-build",
        help="output folder (default: ./testbed-build); must be empty or absent unless --force",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=80.0,
        help="the budget that sets the training steps (default 80, the bundled build: about 50 minutes on 2 CPU "
        "cores; a hard stop at twice it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the world, the initialisation and the data order")
    p.add_argument(
        "--families",
        nargs="+",
        default=list(FAMILIES),
        choices=FAMILIES,
        metavar="FAMILY",
        help=f"families to build (default: all of {', '.join(FAMILIES)})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a previous build's world/, models/, samples/ and build.json in --out "
        "(other files there are left alone)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted build of the same command in --out: reuse its world and the models it finished",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    if not args.minutes > 0:
        raise SpecVLMError(f"--minutes must be > 0, got {args.minutes}")
    out = Path(args.out).expanduser()
    if os.environ.get("OMP_WAIT_POLICY") is None:
        # Every check on --out (file, non-empty without --force, not creatable or writable) runs here, so the
        # one-line error comes from this process, before the child below starts.
        prepare_out(out, args.force, args.resume)
        # OpenMP threads that spin-wait at every barrier slow training 5-10x when other processes share the two
        # cores (measured: 1.4-2 s against 5-22 s a step). The policy is read once when torch loads, so the build
        # runs in a child process that starts with it.
        argv = (
            ["--out", str(out), "--minutes", str(args.minutes), "--seed", str(args.seed), "--families", *args.families]
            + ["--force"] * args.force
            + ["--resume"] * args.resume
            + ["--quiet"] * args.quiet
        )
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        return subprocess.call([sys.executable, "-m", "specvlm", "testbed", "build", *argv], env=env)
    report = build_testbed(
        out,
        minutes=args.minutes,
        seed=args.seed,
        families=args.families,
        force=args.force,
        progress=not args.quiet,
        resume=args.resume,
    )
    print(json.dumps(summary(report), indent=1))
    return 0


def summary(report: dict) -> dict:
    """The headline numbers: per family and role, validation loss and accuracy; τ of the pair."""
    rows = {}
    for family, fam in report["families"].items():
        rows[family] = {
            role: {"val_loss": fam[role]["validation_loss"], "accuracy": fam[role]["accuracy"]} for role in ROLES
        }
        rows[family]["tau_static_tree"] = fam["speculative"]["static_tree"]["tau"]
        rows[family]["tau_chain_5"] = fam["speculative"]["chain_5"]["tau"]
        rows[family]["tau_untrained"] = fam["speculative"]["untrained_pair_static_tree"]["tau"]
    return {"families": rows, "seconds": report["timings_s"]["total"]}
