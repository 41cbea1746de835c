"""The distillation loss of an EagleVLM head on one example (SpecVLM §3.5), and the frozen target's pass that feeds
it: loss = 0.1 · softCE(z_q = lm_head(f̂), z_p) + 1.0 · SmoothL1(f̂, f) [+ compressor budget term], masked to the
pairs whose input token is a response token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..drafters.eagle import EagleHead
from .config import TrainConfig
from .data import Example


@dataclass
class LossParts:
    loss: torch.Tensor
    ce: float
    feature: float
    accuracy: float
    tokens: int


@torch.no_grad()
def target_forward(adapter, prompt, score_until: int | None = None):
    """((logits, hidden), scores) of the frozen target over the whole sequence. With `score_until` (the first
    response token), the prompt runs first under `AttentionCapture` (the verifier's text->visual attention of the
    question, as at inference, where the response does not exist yet) and the response after it on the same
    cache; else scores is None."""
    cache = adapter.new_cache()
    if score_until is None:
        logits, hidden = adapter.forward(prompt.embeds, prompt.positions, cache)
        return (logits[0], hidden[0]), None
    from ..adapters.capture import AttentionCapture

    visual = prompt.visual_mask.nonzero().flatten()
    with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
        head_logits, head_hidden = adapter.forward(
            prompt.embeds[:, :score_until], prompt.positions[..., :score_until], cache
        )
    tail_logits, tail_hidden = adapter.forward(
        prompt.embeds[:, score_until:], prompt.positions[..., score_until:], cache
    )
    return (torch.cat([head_logits[0], tail_logits[0]]), torch.cat([head_hidden[0], tail_hidden[0]])), capture.scores


@dataclass
class TargetPass:
    """What the frozen target gives one example: its prompt (merged embeds, spans, positions), logits and final
    features over the whole sequence, the verifier's attention scores when a compressor branch reads them, and
    the response mask. Deterministic, so it can be kept and reused (`TrainConfig.cache_target`)."""

    prompt: object
    logits: torch.Tensor
    hidden: torch.Tensor
    scores: torch.Tensor | None
    response: torch.Tensor


@torch.no_grad()
def target_pass(head: EagleHead, example: Example) -> TargetPass:
    adapter = head.adapter
    first_response = int(example.response.nonzero()[0])
    prompt = adapter.prepare({k: v.to(adapter.device) if torch.is_tensor(v) else v for k, v in example.inputs.items()})
    (logits, hidden), scores = target_forward(adapter, prompt, first_response if wants_scores(head, prompt) else None)
    return TargetPass(prompt, logits, hidden, scores, example.response)


def wants_scores(head: EagleHead, prompt) -> bool:
    """Whether the head's compressor reads the verifier's attention over this prompt's visual spans."""
    return head.compressor is not None and head.compressor.needs_scores and bool(prompt.spans)


def distill_loss(
    head: EagleHead, example: Example | None, config: TrainConfig | None = None, cached: TargetPass | None = None
) -> LossParts:
    """The head's loss on one example; the target runs here, online, without gradients (or `cached` gives
    what it computed for this example before)."""
    config = config if config is not None else TrainConfig()
    target = cached if cached is not None else target_pass(head, example)
    prompt, logits_p, hidden, scores = target.prompt, target.logits, target.hidden, target.scores
    response = target.response.to(hidden.device)
    first_response = int(response.nonzero()[0])
    features = hidden
    if config.feature_noise:  # U(-a, a) on the head's input features only, never on its targets
        noise = torch.rand_like(hidden, dtype=torch.float32) * 2 - 1
        features = hidden + (noise * config.feature_noise).to(hidden.dtype)
    out, row_of = head(prompt.embeds[0], hidden, prompt.spans, first_response, features, scores=scores)
    use = (response[1:].to(row_of.device) & (row_of >= 0)).nonzero().flatten()
    pred = out[row_of[use]]
    f_p = hidden[1:][use.to(hidden.device)].to(pred.device, pred.dtype)
    z_q = head.logits(pred)
    z_p = logits_p[1:][use.to(logits_p.device)].to(z_q.device)
    ce = -(z_p.softmax(-1) * z_q.log_softmax(-1)).sum(-1).mean()
    feature = F.smooth_l1_loss(pred.float(), f_p.float())
    loss = config.logit_weight * ce + config.feature_weight * feature
    if head.compressor is not None and head.training:  # select mode: the gate's budget and credit terms
        distill = float(loss.detach())
        loss = loss + head.compressor.budget_loss.to(loss.device)
        loss = loss + head.compressor.credit_loss(distill).to(loss.device)
    accuracy = float((z_q.argmax(-1) == z_p.argmax(-1)).float().mean())
    return LossParts(loss, float(ce.detach()), float(feature.detach()), accuracy, int(use.numel()))
