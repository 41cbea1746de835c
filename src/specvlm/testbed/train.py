"""Training data, the training loop and the evaluation of the testbed models.

Data: each clip's pixels go through the family's real processor once (`build_inputs`) and are cached; its visual
token count then lets us build any prompt's ids by expanding the one video placeholder, exactly as the processor
does (checked against `build_inputs` on the first clip). A training example is one clip with all of its
conversations (caption + questions) as one multi-turn chat in a random order: the visual tokens dominate the cost,
so packing six answers behind one copy of them gives six times the supervision per forward. The first turn is laid
out exactly like a single-turn inference prompt; loss is on the assistant answers and their <|im_end|> only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..inputs import build_inputs, load_video, render_prompt, sampler
from .language import is_correct

VISUAL_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


@dataclass
class Clip:
    id: str
    video: str                    # absolute path of the mp4
    visual: dict                  # the processor's pixel tensors for this clip (fp16 in the training cache)
    n_visual: int                 # video placeholder tokens after expansion
    turns: list                   # [(question, answer_text, canonical answer or None, kind)], caption first


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
        return ids[:i] + [self.video_id] * n_visual + ids[i + 1:]

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
        input_ids = torch.tensor([ids])
        out = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if self.qwen:
            out["mm_token_type_ids"] = (input_ids == self.video_id).long() * 2
        for k, v in clip.visual.items() if video else ():
            out[k] = v.float() if v.is_floating_point() and k == "pixel_values_videos" else v
        return out

    def example(self, clip: Clip, order, video: bool = True) -> tuple[list[int], list[int], list[float]]:
        """(input_ids, labels, weights) of the clip's turns in `order`; labels are -100 outside the answers. The
        caption weighs half the loss, the questions the other half, each answer of n tokens sqrt(n) of it: with
        per-token weights the 150-token captions dominate and the questions are never read; with equal or sqrt
        weights over 17 turns the captions (the long outputs benchmarks measure) were answered "It is pink."."""
        ids, labels, weights, kinds = [], [], [], []
        for n, k in enumerate(order):
            question, answer = clip.turns[k][0], clip.turns[k][1]
            if n == 0:
                prompt = self.prompt(question, clip.n_visual) if video else \
                    self.ids(render_prompt(self.processor, question, 0, 0))
            else:
                prompt = self.followup(question)
            reply = self.answer(answer)
            ids += prompt + reply
            labels += [-100] * len(prompt) + reply
            weights += [0.0] * len(prompt) + [len(reply) ** -0.5] * len(reply)
            kinds += [clip.turns[k][2] is None] * (len(prompt) + len(reply))
        halves = [sum(w for w, c in zip(weights, kinds) if c == side) for side in (True, False)]
        share = [0.5 / h if h else 0.0 for h in halves]
        if not all(halves):                       # only captions or only questions: that side takes it all
            share = [2 * s for s in share]
        return ids, labels, [w * share[0 if c else 1] for w, c in zip(weights, kinds)]


def load_clips(world: Path, split: str, processor, num_frames: int, limit: int | None = None,
               pixel_dtype=torch.float16, progress: Callable[[int, int], None] | None = None) -> list[Clip]:
    """The clips of `split` with their pixels preprocessed once by the real processor."""
    fmt = Formatter(processor)
    by_clip: dict[str, list[dict]] = {}
    for line in open(world / f"{split}.jsonl", encoding="utf-8"):
        row = json.loads(line)
        by_clip.setdefault(row["clip"], []).append(row)
    names = sorted(by_clip)[:limit]
    clips = []
    for n, name in enumerate(names):
        rows = by_clip[name]
        path = str(world / rows[0]["video"])
        video = load_video(path, sample_indices_fn=sampler(
            num_frames, sample_frames=processor.video_processor.sample_frames))
        full = build_inputs(processor, rows[0]["conversation"][0]["content"], video=video)
        n_visual = int((full["input_ids"] == fmt.video_id).sum())
        visual = {k: full[k].to(pixel_dtype) if k == "pixel_values_videos" else full[k]
                  for k in VISUAL_KEYS if k in full}
        turns = [(r["conversation"][0]["content"], r["conversation"][1]["content"], r["answer"], r["kind"])
                 for r in rows]
        clip = Clip(name, path, visual, n_visual, turns)
        if n == 0:   # our prompt ids must be the processor's, token for token
            mine = fmt.inputs(clip, fmt.prompt(turns[0][0], n_visual))
            for k in ("input_ids", "mm_token_type_ids"):
                if k in full and not torch.equal(mine[k], full[k].long()):
                    raise RuntimeError(f"prompt layout differs from the processor's {k}")
        clips.append(clip)
        if progress:
            progress(n + 1, len(names))
    return clips


def lr_at(step: int, steps: int, peak: float, warmup: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    w = max(1, int(steps * warmup))
    if step < w:
        return peak * (step + 1) / w
    t = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def example_loss(model, fmt: Formatter, clip: Clip, order, autocast: bool, video: bool = True) -> torch.Tensor:
    ids, labels, weights = fmt.example(clip, order, video)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(**fmt.inputs(clip, ids, video)).logits
    target = torch.tensor(labels[1:])
    per_token = torch.nn.functional.cross_entropy(logits[0, :-1].float(), target, ignore_index=-100, reduction="none")
    return (per_token * torch.tensor(weights[1:])).sum()


def train(model, clips: list[Clip], fmt: Formatter, steps: int, lr: float, seed: int, warmup: float = 0.05,
          text_steps: int = 0, deadline: float | None = None,
          progress: Callable[[int, int, float], None] | None = None) -> dict:
    """AdamW on one clip per step (bf16 autocast: the CPU's AMX units make it ~1.4x faster; weights stay fp32),
    the first `text_steps` of `steps` on the clip's conversations without the video (see `Recipe.text_steps`).
    Stops early only if the wall clock passes `deadline` (then the run is not reproducible; reported)."""
    with torch.enable_grad():   # callers (tests) may have switched autograd off globally
        return _train(model, clips, fmt, steps, lr, seed, warmup, text_steps, deadline, progress)


def _train(model, clips, fmt, steps, lr, seed, warmup, text_steps, deadline, progress) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    order: list[int] = []
    losses, start, done = [], time.perf_counter(), 0
    for step in range(steps):
        if deadline is not None and time.perf_counter() > deadline:
            break
        if not order:
            order = list(rng.permutation(len(clips)))
        clip = clips[order.pop()]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = example_loss(model, fmt, clip, rng.permutation(len(clip.turns)), autocast=True,
                            video=step >= text_steps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        done = step + 1
        if progress:
            progress(done, steps, float(np.mean(losses[-50:])))
    model.eval()
    return {"steps": done, "planned_steps": steps, "stopped_early": done < steps, "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-50:])), "seconds": round(time.perf_counter() - start, 1),
            "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]}


# ---- evaluation (float32, as the engine runs) ----------------------------------------------------------------------
@torch.no_grad()
def validation_loss(model, clips: list[Clip], fmt: Formatter) -> float:
    """Mean per-answer-token cross-entropy, each clip's turns in their stored order (caption first)."""
    total, count = 0.0, 0
    for clip in clips:
        ids, labels, _ = fmt.example(clip, range(len(clip.turns)))
        logits = model(**fmt.inputs(clip, ids)).logits[0, :-1].float()
        target = torch.tensor(labels[1:])
        total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
        count += int((target != -100).sum())
    return total / max(count, 1)


@torch.no_grad()
def answer_accuracy(model, clips: list[Clip], fmt: Formatter, per_clip: int = 5, max_new_tokens: int = 32) -> dict:
    """Greedy single-turn answers to each clip's first `per_clip` questions, scored with the world's `is_correct`."""
    hits: dict[str, list[bool]] = {}
    for clip in clips:
        for question, _, answer, kind in [t for t in clip.turns if t[2] is not None][:per_clip]:
            inputs = fmt.inputs(clip, fmt.prompt(question, clip.n_visual))
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            text = fmt.tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            hits.setdefault(kind, []).append(is_correct(text, answer))
    flat = [h for v in hits.values() for h in v]
    return {"accuracy": round(float(np.mean(flat)), 4) if flat else None, "questions": len(flat),
            "by_kind": {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())}}


@torch.no_grad()
def speculative_tau(target, draft, clips: list[Clip], fmt: Formatter, max_new_tokens: int, **options) -> dict:
    """Greedy speculative decoding of each clip's caption prompt: mean τ (draft tokens accepted per round, bonus
    excluded) and whether every output equals `target.generate`'s."""
    from ..generator import SpeculativeGenerator

    gen = SpeculativeGenerator(target, draft, **options)
    taus, equal, tokens = [], True, 0
    for clip in clips:
        inputs = fmt.inputs(clip, fmt.prompt(clip.turns[0][0], clip.n_visual))
        out = gen.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        plain = target.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        equal &= out.token_ids == plain[0, inputs["input_ids"].shape[1]:].tolist()
        taus.append(out.stats.mean_accepted_tokens)
        tokens += len(out.token_ids)
    return {"tau": round(float(np.mean(taus)), 3), "per_clip": [round(float(t), 3) for t in taus],
            "new_tokens": tokens, "equal_to_target": bool(equal)}
