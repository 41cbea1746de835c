"""Training data, the training loop and the evaluation of the testbed models.

Data: each clip's pixels go through the family's real processor once (`build_inputs`) and are cached; its visual
token count then lets us build any prompt's ids by expanding the one video placeholder, exactly as the processor
does (checked against `build_inputs` on the first clip). A training example is one clip with all of its
conversations (caption + questions) as one multi-turn chat in a random order: the visual tokens dominate the cost,
so packing six answers behind one copy of them gives six times the supervision per forward. The first turn is laid
out exactly like a single-turn inference prompt; loss is on the assistant answers and their <|im_end|> only.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..adapters.attention import additive_mask
from ..inputs import build_inputs, load_video, render_prompt, sampler
from .language import REGION_NAMES, is_correct
from .probe import VisualProbe, token_grid, visual_labels
from .world import COLORS

VISUAL_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
PER_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")  # `Formatter.batch`'s (B, L) inputs


@dataclass
class Clip:
    id: str
    video: str  # absolute path of the mp4
    visual: dict  # the processor's pixel tensors for this clip (fp16 in the training cache)
    n_visual: int  # video placeholder tokens after expansion
    turns: list  # [(question, answer_text, canonical answer or None, kind)], caption first
    labels: torch.Tensor | None = None  # (n_visual, 2) what each visual token shows (probe.visual_labels)


def float_pixels(visual: dict) -> dict:
    """A clip's cached processor tensors with the pixels in float32 (the cache holds the training split in fp16)."""
    return {k: v.float() if k == "pixel_values_videos" else v for k, v in visual.items()}


class Formatter:
    """Token ids of prompts and answers for one family's processor, without re-running the video processor."""

    def __init__(self, processor):
        self.processor, self.tok = processor, processor.tokenizer
        self.qwen = processor.video_token == "<|video_pad|>"
        self.video_id = self.tok.convert_tokens_to_ids(processor.video_token)
        self.eos = self.tok.convert_tokens_to_ids("<|im_end|>")

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt(self, question: str, n_visual: int) -> list[int]:
        """The single-turn inference prompt (chat template, generation prompt) with the video expanded."""
        ids = self.ids(render_prompt(self.processor, question, 0, 1))
        i = ids.index(self.video_id)
        return ids[:i] + [self.video_id] * n_visual + ids[i + 1 :]

    def followup(self, question: str) -> list[int]:
        """A later user turn and the generation prompt, as each family's chat template renders a text-only turn
        (Qwen: "user\\n" + text; LLaVA-OV: "user " + "\\n" + text, and no newline after <|im_end|>)."""
        if self.qwen:
            return self.ids(f"\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
        return self.ids(f"<|im_start|>user \n{question}<|im_end|><|im_start|>assistant\n")

    def answer(self, text: str) -> list[int]:
        return self.ids(text) + [self.eos]

    def inputs(self, clip: Clip, ids: list[int], video: bool = True) -> dict:
        """Model inputs shaped like the processor's output, in float32 pixels (none when `video` is False)."""
        return self.batch(clip, [(ids, [], [])], video)[0]

    def example(self, clip: Clip, order, video: bool = True) -> tuple[list[int], list[int], list[float]]:
        """(input_ids, labels, weights) of the clip's turns in `order`; labels are -100 outside the answers. The
        caption weighs half the loss, the questions the other half, each answer of n tokens sqrt(n) of it: with
        per-token weights the 150-token captions dominate and the questions are never read; with equal or sqrt
        weights over 17 turns the captions (the long outputs benchmarks measure) were answered "It is pink."."""
        ids, labels, weights, kinds = [], [], [], []
        for n, k in enumerate(order):
            question, answer = clip.turns[k][0], clip.turns[k][1]
            if n == 0:
                prompt = (
                    self.prompt(question, clip.n_visual)
                    if video
                    else self.ids(render_prompt(self.processor, question, 0, 0))
                )
            else:
                prompt = self.followup(question)
            reply = self.answer(answer)
            ids += prompt + reply
            labels += [-100] * len(prompt) + reply
            weights += [0.0] * len(prompt) + [len(reply) ** -0.5] * len(reply)
            kinds += [clip.turns[k][2] is None] * (len(prompt) + len(reply))
        halves = [sum(w for w, c in zip(weights, kinds) if c == side) for side in (True, False)]
        share = [0.5 / h if h else 0.0 for h in halves]
        if not all(halves):  # only captions or only questions: that side takes it all
            share = [2 * s for s in share]
        return ids, labels, [w * share[0 if c else 1] for w, c in zip(weights, kinds)]

    def batch(self, clip: Clip, rows: list, video: bool = True) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """Several `example` rows (ids, labels, weights) of one clip as one right-padded batch: (model inputs with the
        clip's pixels once per row, labels (B, L) with -100 on padding, weights (B, L) with 0 there). `inputs` is
        the batch of one."""
        width = max(len(ids) for ids, _, _ in rows)
        pad = self.tok.pad_token_id

        def padded(values, fill):
            return torch.tensor([list(v) + [fill] * (width - len(v)) for v in values], device="cpu")

        input_ids = padded([ids for ids, _, _ in rows], pad)
        out = {"input_ids": input_ids, "attention_mask": padded([[1] * len(ids) for ids, _, _ in rows], 0)}
        if self.qwen:
            out["mm_token_type_ids"] = (input_ids == self.video_id).long() * 2
        if video:
            for k, v in float_pixels(clip.visual).items():
                out[k] = torch.cat([v] * len(rows))  # Qwen: (patches, dim) and (1, 3) per video; OV: (1, T, C, H, W)
        return out, padded([labels for _, labels, _ in rows], -100), padded([w for _, _, w in rows], 0.0)

    def shared(self, clip: Clip, rows: list, adapter) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One-turn `example` rows of one clip as one sequence that holds their common prompt prefix (through the
        video) once, then each row's rest (its question and answer) one after another; a 4-D mask lets each rest
        see the prefix and itself only, and its positions continue from the prefix as in its own conversation. So
        every row's logits are those of its conversation alone, and the video passes through the language model
        once for all of them instead of once per row. Returns (model inputs, targets (1, L), weights (1, L)):
        position t's next token within its own part (-100 at each part's end), and its loss weight. Pruned to some
        visual tokens: `pruned(joined(...))`."""
        if len(rows) == 1:  # one conversation: the plain causal batch
            inputs, labels, weights = self.batch(clip, rows)
            return inputs, labels[:, 1:], weights[:, 1:]
        return self.joined(clip, rows, adapter)

    def joined(self, clip: Clip, rows: list, adapter) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """`shared`'s sequence, always in its general form (4-D mask, explicit positions), as ids and pixels."""
        first = rows[0][0]
        last_visual = max((i for i, t in enumerate(first) if t == self.video_id), default=len(first))
        prefix = min(len(ids) for ids, _, _ in rows) if len(rows) > 1 else last_visual + 1
        for ids, _, _ in rows[1:]:
            prefix = next((i for i, (a, b) in enumerate(zip(first[:prefix], ids)) if a != b), prefix)
        if prefix <= last_visual or any(labels[prefix] != -100 for _, labels, _ in rows):
            raise ValueError(f"clip {clip.id}: its rows share no prompt prefix through the video")
        ids, targets, weights = list(first[:prefix]), list(rows[0][1][1:prefix]) + [-100], [0.0] * prefix
        part = [-1] * prefix  # which row each token belongs to; -1: the shared prefix
        for n, (row_ids, labels, row_weights) in enumerate(rows):
            ids += row_ids[prefix:]
            targets += list(labels[prefix + 1 :]) + [-100]
            weights += list(row_weights[prefix + 1 :]) + [0.0]
            part += [n] * (len(row_ids) - prefix)
        inputs = self.batch(clip, [(ids, [], [])])[0]
        # the prefix's positions as its own prompt has them (Qwen: M-RoPE over the video grid), and the next one
        head = {k: v[:, :prefix] if k in PER_TOKEN_KEYS else v for k, v in inputs.items()}
        positions, following = adapter.prompt_positions(head, head["input_ids"])
        rests = [adapter.positions(torch.arange(len(r[0]) - prefix, device="cpu") + following) for r in rows]
        part_of = torch.tensor(part, device="cpu")
        causal = torch.ones(len(ids), len(ids), dtype=torch.bool, device="cpu").tril()
        visible = causal & ((part_of[None, :] == -1) | (part_of[None, :] == part_of[:, None]))  # (L, L)
        positions = torch.cat([positions.to(adapter.device), *rests], dim=-1)
        targets, weights = torch.tensor([targets], device="cpu"), torch.tensor([weights], device="cpu")
        inputs["attention_mask"] = additive_mask(visible, 0, torch.float32, adapter.device)
        inputs["position_ids"] = positions
        return inputs, targets, weights

    def pruned(self, shared: tuple, keep: torch.Tensor, adapter) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """`joined`'s (inputs, targets, weights) with only the visual tokens `keep` (indices among the clip's, in
        order), each at its own position, as a pruned draft sees them. The inputs become embeddings made by
        `adapter`'s model (its own tower and width: a teacher and its student each prune the same sequence); the
        dropped tokens are prompt rows, so no target names them and the text after them stays."""
        inputs, targets, weights = shared
        visual = (inputs["input_ids"][0].cpu() == self.video_id).nonzero().flatten()
        dropped = torch.ones(visual.numel(), dtype=torch.bool, device="cpu")
        dropped[keep.cpu()] = False
        rows_kept = torch.ones(targets.shape[1], dtype=torch.bool, device="cpu")
        rows_kept[visual[dropped]] = False
        kept = rows_kept.to(adapter.device)
        embeds = adapter.merge(inputs["input_ids"].to(adapter.device), adapter.visual_features(inputs))
        mask = inputs["attention_mask"].to(adapter.device)[..., kept, :][..., kept]  # (1, 1, L', L')
        return (
            {
                "inputs_embeds": embeds[:, kept],
                "attention_mask": mask,
                "position_ids": inputs["position_ids"].to(adapter.device)[..., kept],
            },
            targets[:, rows_kept],
            weights[:, rows_kept],
        )


def load_clips(
    world: Path,
    split: str,
    processor,
    num_frames: int,
    limit: int | None = None,
    pixel_dtype=torch.float16,
    progress: Callable[[int, int], None] | None = None,
) -> list[Clip]:
    """The clips of `split` with their pixels preprocessed once by the real processor."""
    from .export import clip_scene

    fmt = Formatter(processor)
    world_info = json.loads((world / "world.json").read_text())
    merge = getattr(processor.video_processor, "merge_size", 2) or 2
    by_clip: dict[str, list[dict]] = {}
    for line in (world / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_clip.setdefault(row["clip"], []).append(row)
    names = sorted(by_clip)[:limit]
    clips = []
    for n, name in enumerate(names):
        rows = by_clip[name]
        path = str(world / rows[0]["video"])
        video = load_video(
            path, sample_indices_fn=sampler(num_frames, sample_frames=processor.video_processor.sample_frames)
        )
        full = build_inputs(processor, rows[0]["conversation"][0]["content"], video=video)
        n_visual = int((full["input_ids"] == fmt.video_id).sum())
        visual = {
            k: full[k].to(pixel_dtype) if k == "pixel_values_videos" else full[k] for k in VISUAL_KEYS if k in full
        }
        turns = [
            (r["conversation"][0]["content"], r["conversation"][1]["content"], r["answer"], r["kind"]) for r in rows
        ]
        scene = clip_scene(
            int(name.rsplit("_", 1)[1]),
            world_info["seed"],
            world_info["frames"],
            world_info["fps"],
            world_info.get("ball", "small"),
        )
        labels = visual_labels(
            scene, video.indices, world_info["size"], *token_grid(visual, n_visual, len(video.indices), merge)
        )
        clip = Clip(name, path, visual, n_visual, turns, labels)
        if n == 0:  # our prompt ids must be the processor's, token for token
            mine = fmt.inputs(clip, fmt.prompt(turns[0][0], n_visual))
            for k in ("input_ids", "mm_token_type_ids"):
                if k in full and not torch.equal(mine[k], full[k].long()):
                    raise RuntimeError(f"prompt layout differs from the processor's {k}")
        clips.append(clip)
        if progress:
            progress(n + 1, len(names))
    return clips


@functools.cache
def bf16_is_fast() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16): there bf16 autocast trains ~1.4x faster; on
    others (e.g. AVX2-only AMD EPYC) a bf16 matmul is ~100x slower than fp32 (measured 2.5 s vs 0.02 s at 1024^2),
    so training stays in fp32. Read from /proc/cpuinfo: a fixed property of the machine, so a build stays
    reproducible on it (recorded in build.json)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pretrain_vision(
    model,
    clips: list[Clip],
    steps: int,
    lr: float,
    seed: int,
    batch: int = 4,
    warmup: float = 0.05,
    progress: Callable[[int, int, float], None] | None = None,
    colour_words: torch.Tensor | None = None,
    quiet_background: float = 0.0,
) -> tuple[VisualProbe, dict]:
    """The vision tower and projector alone, trained on the visual-token probe (probe.py): `steps` AdamW steps of
    `batch` clips each, no language model in the loop (the features come from the adapter's `visual_features`,
    the rows the LM would receive). Returns the trained probe (the LM steps keep training it) and a summary with
    the probe's loss curve. Like pretraining a VLM's vision encoder before its language steps: a step costs ~0.1 s
    per clip against ~1 s for a packed LM step, and 100 steps of 4 clips make the colours linearly readable from
    the LM's first video step on (99.5 % of object cells; shape stays at chance, see docs/DESIGN.md).
    `colour_words`: the colour read-out is aligned to these word embeddings (`probe.WordAligned`).
    `quiet_background`: the probe's `quiet` (the empty background's rows pushed towards zero; the language steps
    that keep training the probe keep it)."""
    with torch.enable_grad():
        return _pretrain_vision(model, clips, steps, lr, seed, batch, warmup, progress, colour_words, quiet_background)


def _pretrain_vision(model, clips, steps, lr, seed, batch, warmup, progress, colour_words, quiet_background):
    from ..adapters import adapter_for

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    adapter = adapter_for(model)
    probe = VisualProbe(model.config.get_text_config().hidden_size, colour_words, quiet_background)
    params = [p for _, p in vision_parameters(model)] + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    losses, start, stream = [], time.perf_counter(), shuffled_forever(clips, rng)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        total = 0.0
        for clip in itertools.islice(stream, batch):
            embeds = adapter.visual_features(float_pixels(clip.visual))["video"][0]  # (n_visual, hidden)
            loss = probe.loss(embeds, clip.labels) / batch
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)
        if progress:
            progress(step + 1, steps, float(np.mean(losses[-50:])))
    model.eval()
    return probe, {
        "steps": steps,
        "batch": batch,
        "seconds": round(time.perf_counter() - start, 1),
        "probe_loss_curve": _curve(losses),
    }


def vision_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """The vision tower's and projector's (name, parameter) pairs: everything but the language model, its
    embeddings and its head (both families; LLaVA-OV's `image_newline` counts as vision)."""
    return [
        (n, p)
        for n, p in model.named_parameters()
        if "language_model" not in n and "lm_head" not in n and "embed_tokens" not in n
    ]


def shuffled_forever(clips: list[Clip], rng: np.random.Generator):
    """The clips one at a time, epoch after epoch, each epoch in a new order drawn from `rng` when it starts."""
    while True:
        order = list(rng.permutation(len(clips)))
        while order:
            yield clips[order.pop()]


def mixed_stream(clips: list[Clip], mixed_in: list[Clip] | None, mix: float, rng: np.random.Generator):
    """`shuffled_forever(clips)`, each clip replaced with probability `mix` by the next of `mixed_in`'s own shuffled
    stream (`Recipe.large_ball_mix`). Without `mixed_in` or at mix 0 it draws nothing more from `rng`, so the clips
    are those of `clips` alone."""
    stream = shuffled_forever(clips, rng)
    if not mixed_in or mix <= 0:
        yield from stream
        return
    extra = shuffled_forever(mixed_in, rng)
    while True:
        yield next(extra if rng.random() < mix else stream)


def dense_visual(clip: Clip, share: float, rng: np.random.Generator) -> torch.Tensor:
    """The indices of the clip's visual tokens a ball covers (the probe's colour label is set) and of a random
    `share` of the others, in order: the clip's information at a density a from-scratch model finds
    (`Recipe.dense_stages`), each ball's token as it looks in the whole video."""
    ball = clip.labels[:, 0] > 0
    others = (~ball).nonzero().flatten()
    chosen = torch.from_numpy(rng.random(others.numel()) < share)
    return torch.cat([ball.nonzero().flatten(), others[chosen]]).sort().values


def lr_at(step: int, steps: int, peak: float, warmup: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    w = max(1, int(steps * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def turn_shares(is_caption: list[bool]) -> list[float]:
    """Each one-turn conversation's share of a step's loss, as in a pack (`Formatter.example`): the captions half,
    the questions the other half, equally within each side; one side alone takes it all. With equal shares the
    caption is one turn of 17 and came out broken (pilot v11: "The purple side."), as in packs before their halves."""
    captions = sum(is_caption)
    questions = len(is_caption) - captions
    half = 0.5 if captions and questions else 1.0
    return [half / captions if c else half / questions for c in is_caption]


def example_loss(
    model,
    fmt: Formatter,
    clip: Clip,
    order,
    autocast: bool,
    video: bool = True,
    probe: VisualProbe | None = None,
    probe_weight: float = 0.0,
    teacher=None,
    distill: float = 0.0,
    parts: dict | None = None,
    single_turns: bool = False,
    shared_video: bool = False,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The weighted answer loss of one packed example (`Formatter.example`), plus `probe_weight` x the probe's
    loss on the visual tokens' embeddings, and with a `teacher`, each answer token's loss mixed as
    (1 - distill) x cross-entropy + distill x KL(teacher || model) on the teacher's logits for the same ids.
    `single_turns`: each turn of `order` is its own one-turn conversation instead, all in one batch, and the loss
    is theirs weighted by `turn_shares` (no answer can be read off another turn's answer); with `shared_video`
    too, they are computed as one sequence that holds the video once (`Formatter.shared`: the same losses, the
    video's cost paid once), and `keep` (indices among the visual tokens) leaves the others out of it.
    `parts`, when given, receives the probe's unweighted loss under "probe"."""
    if single_turns:  # each row's weights sum to 1: scaled to its turn's share of the step's loss
        shares = turn_shares([clip.turns[k][2] is None for k in order])
        rows = [
            (ids, labels, [w * share for w in weights])
            for (ids, labels, weights), share in zip((fmt.example(clip, [k], video) for k in order), shares)
        ]
    else:
        rows = [fmt.example(clip, order, video)]
    teacher_inputs = None
    if shared_video and single_turns and video:
        from ..adapters import adapter_for

        if keep is None:
            inputs, target, weights = fmt.shared(clip, rows, adapter_for(model))  # (1, L) each
        else:  # one sequence, pruned for each model: its own tower and width make its embeddings
            whole = fmt.joined(clip, rows, adapter_for(model))
            inputs, target, weights = fmt.pruned(whole, keep, adapter_for(model))
            if teacher is not None:
                teacher_inputs = fmt.pruned(whole, keep, adapter_for(teacher))[0]
    else:
        inputs, labels, weights = fmt.batch(clip, rows, video)  # (B, L) each
        target, weights = labels[:, 1:], weights[:, 1:]
    use_probe = probe is not None and probe_weight > 0 and video and clip.labels is not None and keep is None
    # no autocast cache: it holds bf16 copies of the weights until the *outermost* autocast region exits, and the
    # build runs inside its own (build_arithmetic), so with the cache every step reused the first step's copies
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast, cache_enabled=False):
        out = model(**inputs, output_hidden_states=use_probe)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(**(teacher_inputs or inputs)).logits[:, : target.shape[1]].float()
    logits = out.logits[:, : target.shape[1]].float()  # (B, T, vocab): the positions `target` holds
    per_token = torch.nn.functional.cross_entropy(
        logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
    )  # (B, T)
    if teacher is not None:
        log_p = torch.log_softmax(teacher_logits, -1)
        kl = (log_p.exp() * (log_p - torch.log_softmax(logits, -1))).sum(-1)  # (B, T) forward KL per position
        per_token = (1 - distill) * per_token + distill * kl * (target != -100)
    loss = (per_token * weights).sum()
    if use_probe:
        embeds = out.hidden_states[0][0, inputs["input_ids"][0] == fmt.video_id]  # (n_visual, hidden): row 0's
        probe_loss = probe.loss(embeds, clip.labels)
        loss = loss + probe_weight * probe_loss
        if parts is not None:
            parts["probe"] = float(probe_loss.detach())
    return loss


def train(
    model,
    clips: list[Clip],
    fmt: Formatter,
    steps: int,
    lr: float,
    seed: int,
    warmup: float = 0.05,
    text_steps: int = 0,
    question_steps: int = 0,
    caption_first: float = 0.0,
    probe_weight: float = 0.0,
    probe: VisualProbe | None = None,
    teacher=None,
    distill: float = 0.0,
    freeze_vision: bool = False,
    turns_per_step: int = 0,
    shared_video: bool = False,
    dense_steps: int = 0,
    dense_keep: float = 0.1,
    dense_mix: float = 0.0,
    kinds: tuple = (),
    mixed_in: list[Clip] | None = None,
    mix: float = 0.0,
    deadline: float | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """AdamW on one clip per step (bf16 autocast where the CPU has bf16 units, `bf16_is_fast`; weights stay fp32),
    the first `text_steps` of `steps` on the clip's conversations without the video, the next `question_steps`
    on its questions only (see `Recipe.text_steps`); each step's turns in a random order, the caption first with
    probability `caption_first`;
    `probe_weight` > 0 adds the visual-token probe (probe.py; `probe`, e.g. `pretrain_vision`'s, or a fresh
    one), a `teacher` distils its logits (`example_loss`). `freeze_vision`: the vision tower and projector keep
    their weights (no gradient flows into them; the probe, which only they feed, is then off).
    `turns_per_step` > 0: each step trains that many one-turn conversations of its clip as a batch (the caption,
    when the step's turns include it, and questions drawn at random) instead of one pack of all its turns;
    `shared_video`: those conversations hold the video once (`Formatter.shared`), so it costs about one of them.
    `dense_steps`: the first video steps see only the ball tokens and `dense_keep` of the others
    (`dense_visual`), and after them each step does with probability `dense_mix` (needs `shared_video`).
    `kinds`: only the turns of these kinds ("caption", "colors", ...; clips without one are skipped).
    `mixed_in`: clips a step trains on instead of one of `clips` with probability `mix` (`Recipe.large_ball_mix`).
    Stops early only if the wall clock passes `deadline` (then the run is not reproducible; reported)."""
    if kinds:
        clips = [c for c in (only_kinds(c, kinds) for c in clips) if c.turns]
        mixed_in = [c for c in (only_kinds(c, kinds) for c in mixed_in or []) if c.turns]
    if steps and not clips:  # a stream of nothing would never yield a step
        raise ValueError(f"no training clip has a turn of the kinds asked ({', '.join(kinds) or 'any'})")
    if freeze_vision:
        probe_weight = 0.0
    if shared_video and not turns_per_step:
        raise ValueError("shared_video holds the video once for one-turn conversations: it needs turns_per_step")
    if (dense_steps or dense_mix) and not shared_video:
        raise ValueError("dense steps need one-turn conversations holding the video once (shared_video)")
    # callers (tests) may have switched autograd off globally
    with torch.enable_grad(), _frozen(p for _, p in vision_parameters(model) if freeze_vision):
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        model.train()
        if probe_weight <= 0:
            probe = None
        elif probe is None:
            probe = VisualProbe(model.config.get_text_config().hidden_size)
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # `freeze_vision`'s stay out
        params += list(probe.named_parameters()) if probe else []
        decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98)
        )
        stream = mixed_stream(clips, mixed_in, mix, rng)
        losses, probe_losses, start, done = [], [], time.perf_counter(), 0
        for step in range(steps):
            if deadline is not None and time.perf_counter() > deadline:
                break
            clip = next(stream)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps, lr, warmup)
            turns = [int(k) for k in rng.permutation(len(clip.turns))]
            if rng.random() < caption_first:  # the caption leads, laid out like a single-turn caption prompt
                turns.sort(key=lambda k: clip.turns[k][2] is not None)  # stable: the questions keep their order
            if text_steps <= step < text_steps + question_steps:  # video steps on the short answers only
                turns = [k for k in turns if clip.turns[k][2] is not None]
            if turns_per_step:  # the caption (if it is among them) and questions drawn at random, one turn each
                turns = sorted(turns, key=lambda k: clip.turns[k][2] is not None)[:turns_per_step]
            keep = None
            if step >= text_steps and (step < text_steps + dense_steps or (dense_mix and rng.random() < dense_mix)):
                keep = dense_visual(clip, dense_keep, rng)
            parts: dict = {}
            loss = example_loss(
                model,
                fmt,
                clip,
                turns,
                autocast=bf16_is_fast(),
                video=step >= text_steps,
                probe=probe,
                probe_weight=probe_weight,
                teacher=teacher,
                distill=distill,
                parts=parts,
                single_turns=bool(turns_per_step),
                shared_video=shared_video,
                keep=keep,
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            if "probe" in parts:
                probe_losses.append(parts["probe"])
            done = step + 1
            if progress:
                progress(done, steps, float(np.mean(losses[-50:])))
        model.eval()
        return {
            "steps": done,
            "planned_steps": steps,
            "stopped_early": done < steps,
            "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(losses[-50:])) if losses else None,
            "seconds": round(time.perf_counter() - start, 1),
            "loss_curve": _curve(losses),
            "last_losses": [round(x, 4) for x in losses[-10:]],  # a divergence in the last steps hides in the curve
            "probe_loss_curve": _curve(probe_losses),
        }


def names_one_colour(text: str) -> bool:
    """Does `text` name one colour of world.COLORS only (a caption: one ball that keeps its colour)?"""
    return sum(bool(re.search(rf"\b{c}\b", text)) for c in COLORS) == 1


def one_colour_answers(clip: Clip) -> Clip:
    """The clip without its "which colours" turns whose answer names more than one colour ("red and blue"): the
    one-colour ones are where a from-scratch model starts reading the video (docs/DESIGN.md, Testbed)."""
    return replace(clip, turns=[t for t in clip.turns if not (t[3] == "colors" and " and " in t[2])])


def one_ball_captions(clip: Clip) -> Clip:
    """The clip without its caption unless that names one colour (a clip of one ball that keeps its colour): the
    captions' analogue of `one_colour_answers`, where their colour words start reading the video."""
    return replace(clip, turns=[t for t in clip.turns if t[3] != "caption" or names_one_colour(t[1])])


def only_kinds(clip: Clip, kinds: tuple) -> Clip:
    """The clip with only its turns of `kinds` ("caption", "colors", ...)."""
    return replace(clip, turns=[t for t in clip.turns if t[3] in kinds])


@contextlib.contextmanager
def _frozen(params):
    """The parameters untrainable (no gradient, so the optimizer skips them) for the duration, then trainable again."""
    frozen = [p for p in params if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _curve(values: list[float], every: int = 50) -> list[float]:
    """Means of consecutive blocks of `every` values: a loss curve small enough for metrics.json."""
    return [round(float(np.mean(values[i : i + every])), 4) for i in range(0, len(values), every)]


# ---- evaluation (float32, as the engine runs) ----------------------------------------------------------------------
@torch.no_grad()
def answer_token_losses(
    model, clips: list[Clip], fmt: Formatter, another_video: bool = False, single_turns: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each clip's answer targets and their cross-entropies, both (T,) on the CPU (-100 and 0.0 where no answer is),
    its turns in their stored order (caption first) as one pack, or with `single_turns` each as its own one-turn
    conversation (how models trained with `turns_per_step` are asked), computed as one sequence holding the video once
    (`Formatter.shared`). With `another_video`, each clip's conversations are scored with the next clip's video
    instead (same token count): the difference to its own video's loss is what reading the video buys. Per token, so
    one forward serves every subset of the answer tokens (`mean_answer_loss(counted=)`)."""
    from ..adapters import adapter_for

    scored = []
    for i, clip in enumerate(clips):
        order = range(len(clip.turns))
        rows = [fmt.example(clip, [k]) for k in order] if single_turns else [fmt.example(clip, order)]
        shown = clips[(i + 1) % len(clips)] if another_video else clip
        if shown.n_visual != clip.n_visual:
            raise ValueError(f"clips {clip.id} and {shown.id} have different visual token counts")
        inputs, target, _ = fmt.shared(replace(clip, visual=shown.visual), rows, adapter_for(model))
        logits = model(**inputs).logits[:, : target.shape[1]].float()  # (1, T, vocab)
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")
        scored.append((target[0].cpu(), losses[0].cpu()))
    return scored


def mean_answer_loss(
    scored: list[tuple[torch.Tensor, torch.Tensor]], counted: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> float:
    """The mean cross-entropy over the answer tokens of `scored` (`answer_token_losses`), or over those of them that
    `counted` marks (targets (T,) -> bool (T,): `among`, `first_mentions`); 0.0 when none counts."""
    total, count = 0.0, 0
    for target, losses in scored:
        keep = target != -100
        if counted is not None:
            keep &= counted(target)
        total += float(losses[keep].sum())
        count += int(keep.sum())
    return total / max(count, 1)


def validation_loss(
    model, clips: list[Clip], fmt: Formatter, another_video: bool = False, single_turns: bool = False
) -> float:
    """Mean per-answer-token cross-entropy (`answer_token_losses`, `mean_answer_loss`); zero difference between
    `another_video` and its own means the model ignores the video."""
    return mean_answer_loss(answer_token_losses(model, clips, fmt, another_video, single_turns))


def among(ids: list[int], target: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the targets that are one of `ids`."""
    return torch.isin(target, torch.tensor(ids, dtype=target.dtype, device=target.device))


def first_mentions(ids: list[int], target: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the targets among `ids` that are not a repeat of an earlier target of the same answer (a run of
    targets between -100s). A caption's first " red" can only come from the video; a later one can be copied from the
    caption's own text, so its video gap is ~0 whatever the model reads and dilutes the gap over every mention."""
    answer = torch.cumsum(target == -100, 0)  # (T,): one index per answer, constant inside it
    earlier = torch.ones(len(target), len(target), dtype=torch.bool, device=target.device).tril(-1)  # [t, s]: s < t
    repeat = (earlier & (answer[:, None] == answer[None, :]) & (target[:, None] == target[None, :])).any(1)
    return among(ids, target) & ~repeat


def after(previous: int, ids: list[int], target: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the targets among `ids` whose preceding target is `previous` (" top" after " the": a place, where
    " left" after " moves" is a motion)."""
    before = torch.cat([target.new_full((1,), -100), target[:-1]])  # (T,): each target's predecessor
    return among(ids, target) & (before == previous)


def caption_place_ids(fmt: Formatter) -> tuple[int, list[int]]:
    """(the id of " the", the first token ids of the place words as a caption says them: " top", " left", " centre",
    ...). A place word follows " the" ("at the top left", "in the centre", "off the left edge"), a direction does
    not ("moves left"): `after` tells them apart."""
    words = {w for name in REGION_NAMES for w in name.split()} - {"side"}
    return fmt.ids(" the")[0], sorted({fmt.ids(f" {w}")[0] for w in words})


def caption_colour_ids(fmt: Formatter) -> list[int]:
    """The token ids of the colour words as a caption says them (" red"; the first token of each): the words of a
    caption a draft can read off the video."""
    return sorted({fmt.ids(f" {c}")[0] for c in COLORS})


@torch.no_grad()
def probe_accuracy(model, probe: VisualProbe, clips: list[Clip]) -> dict:
    """Each read-out's accuracy over the object cells of `clips` it is asked about, how many cells that was, and the
    clips' mean `background_energy` (how loud the empty background is next to the balls)."""
    from ..adapters import adapter_for
    from .probe import background_energy

    adapter, total, energies = adapter_for(model), {}, []
    for clip in clips:
        embeds = adapter.visual_features(float_pixels(clip.visual))["video"][0]  # (n_visual, hidden)
        hits = probe.hits(embeds, clip.labels)
        total = {k: total.get(k, 0) + v for k, v in hits.items()}
        asked = clip.labels[:, 0] != -100
        obj = clip.labels[asked, 0] > 0
        if obj.any() and not obj.all():  # the ratio needs both
            energies.append(float(background_energy(embeds[asked], obj)))
    out = {k: round(total[k] / max(total[f"{k}_asked"], 1), 3) for k in probe.heads if total.get(f"{k}_asked")}
    return dict(
        out, cells=total.get("cells", 0), background_energy=round(float(np.mean(energies)), 4) if energies else None
    )


@torch.no_grad()
def answer_accuracy(model, clips: list[Clip], fmt: Formatter, per_clip: int = 5, max_new_tokens: int = 32) -> dict:
    """Greedy single-turn answers to each clip's first `per_clip` questions, scored with the world's `is_correct`."""
    hits: dict[str, list[bool]] = {}
    for clip in clips:
        for question, _, answer, kind in [t for t in clip.turns if t[2] is not None][:per_clip]:
            inputs = fmt.inputs(clip, fmt.prompt(question, clip.n_visual))
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            text = fmt.tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            hits.setdefault(kind, []).append(is_correct(text, answer))
    flat = [h for v in hits.values() for h in v]
    return {
        "accuracy": round(float(np.mean(flat)), 4) if flat else None,
        "questions": len(flat),
        "by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())},
    }


@torch.no_grad()
def speculative_tau(target, draft, clips: list[Clip], fmt: Formatter, max_new_tokens: int, **options) -> dict:
    """Greedy speculative decoding of each clip's caption prompt: mean τ (draft tokens accepted per round, bonus
    excluded) and whether every output equals `target.generate`'s."""
    from ..engine.generator import SpeculativeGenerator

    gen = SpeculativeGenerator(target, draft, **options)
    taus, equal, tokens = [], True, 0
    for clip in clips:
        inputs = fmt.inputs(clip, fmt.prompt(clip.turns[0][0], clip.n_visual))
        out = gen.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        plain = target.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        equal &= out.token_ids == plain[0, inputs["input_ids"].shape[1] :].tolist()
        taus.append(out.stats.mean_accepted_tokens)
        tokens += len(out.token_ids)
    return {
        "tau": round(float(np.mean(taus)), 3),
        "per_clip": [round(float(t), 3) for t in taus],
        "new_tokens": tokens,
        "equal_to_target": bool(equal),
    }
