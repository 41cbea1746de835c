"""The distillation loss of a draft head on one example, and the frozen target's pass that feeds it, masked to the
pairs whose input token is a response token.

    EagleVLM (EAGLE-2, SpecVLM §3.5)   loss = 0.1 · softCE(z_q = lm_head(f̂), z_p) + 1.0 · SmoothL1(f̂, f)
                                       [+ compressor budget term]
    EAGLE-3 (training-time test)       loss = Σ_k 0.8^k · softCE_k(z_q, softmax(z_p over the draft vocabulary)):
                                       step 0 reads the target's features, step k > 0 the head's own outputs of
                                       step k-1 (as it drafts), positions shifted by k; pairs whose target argmax
                                       is outside the draft vocabulary are left out (SpecForge's rule)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..adapters.attention import additive_mask
from ..drafters.eagle import EagleHead
from ..drafters.eagle3 import Eagle3Head
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
def target_forward(adapter, prompt, score_until: int | None = None, features: tuple[int, ...] | None = None):
    """((logits, hidden), scores) of the frozen target over the whole sequence (hidden: the head's `features` when
    given, see `adapter.forward`). With `score_until` (the first response token), the prompt runs first under
    `AttentionCapture` (the verifier's text->visual attention of the question, as at inference, where the
    response does not exist yet) and the response after it on the same cache; else scores is None."""
    cache = adapter.new_cache()
    if score_until is None:
        logits, hidden = adapter.forward(prompt.embeds, prompt.positions, cache, features=features)
        return (logits[0], hidden[0]), None
    from ..adapters.capture import AttentionCapture

    visual = prompt.visual_mask.nonzero().flatten()
    with AttentionCapture(adapter, int(visual.max()) + 1, visual) as capture:
        head_logits, head_hidden = adapter.forward(
            prompt.embeds[:, :score_until], prompt.positions[..., :score_until], cache, features=features
        )
    tail_logits, tail_hidden = adapter.forward(
        prompt.embeds[:, score_until:], prompt.positions[..., score_until:], cache, features=features
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
    score_until = first_response if wants_scores(head, prompt) else None
    (logits, hidden), scores = target_forward(adapter, prompt, score_until, head.target_features)
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
    if isinstance(head, Eagle3Head):
        return ttt_loss(head, target, config.ttt_steps)
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


def ttt_loss(head: Eagle3Head, target: TargetPass, steps: int) -> LossParts:
    """EAGLE-3's training-time test over one sequence of L tokens: `steps` unrolled drafting steps, each a pass of
    the head over every block so far under `ttt_mask` (what its KV cache holds when it drafts k tokens ahead).

    Entry j of step 0 is (e_{j+1}, g_j) at token j's position; entry j of step k is (e_{j+1+k}, carried h of
    entry j at step k-1) at that position + k. Both predict token j+2+k, whose law the target gives at
    position j+1+k."""
    prompt, logits_p, features = target.prompt, target.logits, target.hidden  # (L, V), (L, n_features * Ht)
    device = head.fc.weight.device
    ids = prompt.input_ids.to(device)  # (1, L)
    positions = prompt.positions[..., :-1].to(device)  # the model's format, n = L - 1 entries
    response = target.response.to(device)
    n = ids.shape[1] - 1
    draft_ids = head.draft_to_target.to(device)  # (Vd,)
    in_vocab = torch.zeros(logits_p.shape[-1], dtype=torch.bool, device=device)
    in_vocab[draft_ids] = True
    blocks = [head.feed_rows(ids[:, 1:], features[None, :-1])]  # step 0: (1, n, 2H)
    block_positions = [positions]
    loss = torch.zeros((), device=device)
    ce_first = accuracy = 0.0
    counted = 0
    carried = None  # the previous step's outputs, as nodes hand them on (1, rows + 1, H)
    for k in range(min(steps, n)):
        rows = n - k
        if carried is not None:
            blocks.append(head.node_rows(ids[:, 1 + k :], carried[:, :rows]))
            block_positions.append(positions[..., :rows] + k)
        x = torch.cat(blocks, dim=1)
        mask = additive_mask(ttt_mask([b.shape[1] for b in blocks]).to(device), 0, x.dtype, device)
        h = head.run_layer(x, torch.cat(block_positions, dim=-1), None, mask)[:, -rows:]  # (1, rows, H)
        carried = head.carried(h)
        z_q = head.draft_logits(h)[0]  # (rows, Vd)
        z_p = logits_p[1 + k : 1 + k + rows].to(device).float()  # (rows, V)
        use = response[1 + k : 1 + k + rows] & in_vocab[z_p.argmax(-1)]
        if not bool(use.any()):
            continue
        teacher = z_p[:, draft_ids].softmax(-1)
        ce = -(teacher * z_q.log_softmax(-1)).sum(-1)[use].mean()
        loss = loss + 0.8**k * ce
        if k == 0:
            ce_first, counted = float(ce.detach()), int(use.sum())
            accuracy = float((draft_ids[z_q.argmax(-1)] == z_p.argmax(-1))[use].float().mean())
    return LossParts(loss, ce_first, 0.0, accuracy, counted)


def ttt_mask(sizes: list[int]) -> torch.Tensor:
    """Which entries each entry sees when blocks of `sizes` (step 0 first, each block one entry shorter than the
    last) are run together: entry j of step k sees step 0's entries 0..j (the committed prefix) and entry j of
    steps 1..k (its own drafted chain). (N, N) bool, N = sum(sizes)."""
    total = sum(sizes)
    visible = torch.zeros(total, total, dtype=torch.bool, device="cpu")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    first = sizes[0]
    visible[:first, :first] = torch.ones(first, first, dtype=torch.bool, device="cpu").tril()
    for k in range(1, len(sizes)):
        rows = torch.arange(sizes[k], device="cpu")
        base = starts[k] + rows
        visible[base, :first] = torch.ones(sizes[k], first, dtype=torch.bool, device="cpu").tril()
        for i in range(1, k + 1):
            visible[base, starts[i] + rows] = True
    return visible
