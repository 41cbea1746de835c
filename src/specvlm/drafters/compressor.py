"""Elastic visual compressor (SpecVLM §3.4): shortens the draft head's visual span, never the target's.

Every branch maps one visual span of the head's input sequence, (n, H) rows, to (m, H) rows:

    prune:r          keep ceil(n/r) rows at a uniform stride                  no parameters
    prune_random:r   keep ceil(n/r) rows drawn at random (seeded at inference), in order
    pool:r           average of each run of r rows (the last run may be shorter)
    conv:r           Conv1d(H, H, kernel r, stride r), r <= 5; starts as average pooling
    resampler:q      q learned queries, one cross-attention over the span; starts as mean pooling
    verifier:r       keep ceil(n/r) rows chosen by the TARGET's text->visual attention (the first SpecVLM paper's
                     verifier-guided selection, `pruning.select_specvlm`: Stage I mass 0.4 + uniform Stage II)
    text             drop the span (the head sees the text only)

and `VisualCompressor` combines branches in one of the paper's three modes:

    weighted   a gate on the question mixes same-ratio branches: sum_b softmax(g)_b * branch_b(span)
    concat     all branches' outputs, one after the other (several granularities at once)
    select     the gate picks ONE branch per input: Gumbel-softmax (hard, straight-through) while training,
               argmax at inference; an optional budget term, weight * E_softmax(g)[kept fraction], keeps the gate
               from collapsing onto the branch that keeps the most tokens; `picks` counts what it chose.
               The straight-through gradient only says whether the chosen branch's rows should be scaled up or
               down; a branch with no rows (text) gets none, so with a budget term alone the gate would drift to
               text-only unopposed. `credit_loss(loss)` adds a score-function term, (loss - running mean of the
               loss) * log softmax(g)[chosen], which tells the gate how the chosen branch fared against the
               average, text included.

The gate reads the target's pooled features of the question (`question_features`). The verifier branch needs the
target's attention scores of each span's tokens: `forward(..., scores=)` takes them as a list (one (n_i,) tensor per
span) or as a callable that computes them, called only when a branch that needs them runs (a select gate that picks
another branch never pays for them). EagleHead gets them from the target's prefill (training: captured in every
step; inference: the generator's, or a capturing re-run of the prefill). The same selection also reaches the head
through the generator's `pruning` option, which applies to every input instead of being a gated choice.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from ..options import DEFAULT_STAGE1_MASS

MODES = ("weighted", "concat", "select")
DEFAULT_BRANCHES = {
    "select": ("prune:20", "pool:20", "conv:3", "resampler:2", "text"),
    "concat": ("prune:20", "pool:20", "conv:3", "resampler:2"),
    "weighted": ("prune:{r}", "pool:{r}", "conv:{r}"),
}
MAX_CONV_RATIO = 5


# ---- pure primitives ---------------------------------------------------------------------------------------------
def kept_length(n: int, ratio: int) -> int:
    return math.ceil(n / ratio) if n else 0


def prune_indices(n: int, ratio: int, generator: torch.Generator | None = None, random: bool = False) -> torch.Tensor:
    """Indices of the ceil(n/ratio) rows pruning keeps, ascending (order is kept)."""
    keep = kept_length(n, ratio)
    if not random:
        return torch.arange(0, n, ratio, device="cpu")[:keep]
    return torch.randperm(n, generator=generator, device="cpu")[:keep].sort().values


def avg_pool(x: torch.Tensor, ratio: int) -> torch.Tensor:
    """(n, H) -> (ceil(n/ratio), H): means of consecutive runs of `ratio` rows, the last run possibly shorter."""
    n = x.shape[0]
    m = kept_length(n, ratio)
    pad = m * ratio - n
    padded = F.pad(x, (0, 0, 0, pad))
    counts = torch.full((m, 1), float(ratio), dtype=x.dtype, device=x.device)
    if pad:
        counts[-1] = ratio - pad
    return padded.reshape(m, ratio, -1).sum(1) / counts


# ---- branches ----------------------------------------------------------------------------------------------------
class Branch(nn.Module):
    spec: str = ""
    needs_scores = False  # True: forward(x, scores) with the target's attention scores of the span's tokens

    def kept(self, n: int) -> int:
        raise NotImplementedError


class Prune(Branch):
    def __init__(self, ratio: int, random: bool = False, seed: int = 0):
        super().__init__()
        self.ratio, self.random, self.seed = ratio, random, seed
        self.spec = f"{'prune_random' if random else 'prune'}:{ratio}"

    def kept(self, n):
        return kept_length(n, self.ratio)

    def forward(self, x):
        generator = None
        if self.random and not self.training:  # a fixed draw at inference; fresh draws while training
            generator = torch.Generator().manual_seed(self.seed)
        return x[prune_indices(x.shape[0], self.ratio, generator, self.random).to(x.device)]


class Pool(Branch):
    def __init__(self, ratio: int):
        super().__init__()
        self.ratio, self.spec = ratio, f"pool:{ratio}"

    def kept(self, n):
        return kept_length(n, self.ratio)

    def forward(self, x):
        return avg_pool(x, self.ratio)


class Conv(Branch):
    """Strided 1-D convolution over the token axis; the span is zero-padded to a multiple of the ratio. Starts as
    average pooling (each tap is identity / ratio) so an untrained conv branch is as good as pooling."""

    def __init__(self, hidden: int, ratio: int):
        super().__init__()
        if not 1 <= ratio <= MAX_CONV_RATIO:
            raise ValueError(
                f"conv compression ratio must be 1..{MAX_CONV_RATIO} (its parameters grow with it), got {ratio}"
            )
        self.ratio, self.spec = ratio, f"conv:{ratio}"
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=ratio, stride=ratio)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(hidden)[:, :, None].expand(-1, -1, ratio) / ratio)
            self.conv.bias.zero_()

    def kept(self, n):
        return kept_length(n, self.ratio)

    def forward(self, x):
        pad = self.kept(x.shape[0]) * self.ratio - x.shape[0]
        x = F.pad(x, (0, 0, 0, pad))
        return self.conv(x.T[None].to(self.conv.weight.dtype))[0].T.to(x.dtype)


class Resampler(Branch):
    """`queries` learned queries attend once over the span (a one-layer Q-Former). The output projection starts at
    zero and the span's mean is added, so an untrained resampler returns the mean-pooled span per query."""

    def __init__(self, hidden: int, queries: int, heads: int = 1):
        super().__init__()
        self.queries_n, self.spec = queries, f"resampler:{queries}"
        self.queries = nn.Parameter(torch.randn(queries, hidden) * hidden**-0.5)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        with torch.no_grad():
            self.attn.out_proj.weight.zero_()
            self.attn.out_proj.bias.zero_()

    def kept(self, n):
        return self.queries_n if n else 0

    def forward(self, x):
        if x.shape[0] == 0:
            return x
        dtype = self.queries.dtype
        kv = x[None].to(dtype)
        out, _ = self.attn(self.queries[None], kv, kv, need_weights=False)
        return (out[0] + kv[0].mean(0)).to(x.dtype)


class Verifier(Branch):
    """The verifier-guided selection of `pruning.select_specvlm` at a fixed ratio: the span's most-attended rows
    holding `mass` of the target's text->visual attention (at most ceil(n/r)), the rest spread evenly."""

    needs_scores = True

    def __init__(self, ratio: int, mass: float = DEFAULT_STAGE1_MASS):
        super().__init__()
        self.ratio, self.mass, self.spec = ratio, mass, f"verifier:{ratio}"

    def kept(self, n):
        return kept_length(n, self.ratio)

    def forward(self, x, scores=None):
        from .pruning import select_specvlm

        if scores is None or scores.numel() != x.shape[0]:
            raise ValueError(
                f"the verifier branch needs the target's attention scores of the span's {x.shape[0]} "
                f"tokens, got {None if scores is None else scores.numel()}"
            )
        keep = select_specvlm(scores.detach().float().cpu(), self.kept(x.shape[0]), self.mass)
        return x[keep.to(x.device)]


class TextOnly(Branch):
    spec = "text"

    def kept(self, n):
        return 0

    def forward(self, x):
        return x[:0]


def make_branch(spec: str, hidden: int, heads: int = 1, seed: int = 0) -> Branch:
    """'prune:20', 'prune_random:20', 'pool:20', 'conv:3', 'resampler:2', 'verifier:10' or 'text'."""
    name, _, arg = spec.partition(":")
    try:
        value = int(arg) if arg else None
    except ValueError:
        value = None
    if name == "text" and not arg:
        return TextOnly()
    if value is None or value < 1:
        raise ValueError(f"compressor branch {spec!r}: expected name:positive-integer (e.g. pool:20) or 'text'")
    if name in ("prune", "prune_random"):
        return Prune(value, random=name == "prune_random", seed=seed)
    if name == "pool":
        return Pool(value)
    if name == "conv":
        return Conv(hidden, value)
    if name == "resampler":
        return Resampler(hidden, value, heads)
    if name == "verifier":
        return Verifier(value)
    raise ValueError(
        f"unknown compressor branch {name!r}; choose from prune, prune_random, pool, conv, resampler, verifier, text"
    )


# ---- the combination -----------------------------------------------------------------------------------------------
def question_features(hidden: torch.Tensor, visual: torch.Tensor, end: int | None = None) -> torch.Tensor:
    """Mean of the target's features (L, H) over the question: the text after the last visual token up to `end`
    (the prompt's end); when there is none, all text before `end`; when there is no text, everything."""
    end = hidden.shape[0] if end is None else end
    visual = visual[:end]
    text = ~visual
    where = visual.nonzero()
    if where.numel():
        after = torch.zeros_like(text)
        after[int(where[-1]) + 1 :] = True
        if (after & text).any():
            text = after & text
    rows = hidden[:end][text] if text.any() else hidden[:end]
    return rows.float().mean(0)


class VisualCompressor(nn.Module):
    def __init__(
        self,
        hidden: int,
        mode: str = "select",
        branches=None,
        ratio: int = 3,
        heads: int = 1,
        budget_weight: float = 0.0,
        gumbel_tau: float = 1.0,
        seed: int = 0,
        credit_weight: float = 1.0,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"compressor mode must be one of {', '.join(MODES)}, got {mode!r}")
        specs = [s.format(r=ratio) for s in (branches or DEFAULT_BRANCHES[mode])]
        if not specs:
            raise ValueError("a compressor needs at least one branch")
        self.hidden, self.mode, self.ratio, self.heads = hidden, mode, ratio, heads
        self.budget_weight, self.gumbel_tau, self.seed = budget_weight, gumbel_tau, seed
        self.credit_weight = credit_weight
        self.branches = nn.ModuleList(make_branch(s, hidden, heads, seed) for s in specs)
        if mode == "weighted":
            lengths = {b.kept(1000) for b in self.branches}
            if len(lengths) > 1 or any(isinstance(b, (TextOnly, Resampler)) for b in self.branches):
                raise ValueError(f"weighted mode mixes branches of one ratio (prune/pool/conv), got {specs}")
        self.gate = nn.Linear(hidden, len(specs)) if mode != "concat" else None
        if self.gate is not None:
            with torch.no_grad():
                self.gate.weight.normal_(0, hidden**-0.5)
                self.gate.bias.zero_()
        self.picks: Counter = Counter()  # select mode: how often each branch was chosen
        self.budget_loss = torch.zeros((), device="cpu")  # the trainer moves it to the loss's device
        self.chosen_logprob: torch.Tensor | None = None  # select, training: log softmax(g)[chosen], last forward
        # running mean of the distillation loss (the score-function baseline): training state, which the trainer
        # saves in its checkpoints (not in the head's weights), so a resumed run continues exactly
        self.loss_mean, self.loss_count = 0.0, 0

    @property
    def names(self) -> list[str]:
        return [b.spec for b in self.branches]

    @property
    def needs_scores(self) -> bool:
        return any(b.needs_scores for b in self.branches)

    def config(self) -> dict:
        return dict(
            mode=self.mode,
            branches=self.names,
            ratio=self.ratio,
            heads=self.heads,
            budget_weight=self.budget_weight,
            gumbel_tau=self.gumbel_tau,
            seed=self.seed,
            credit_weight=self.credit_weight,
        )

    def gate_logits(self, question: torch.Tensor) -> torch.Tensor:
        return self.gate(question.to(self.gate.weight.dtype))

    def gate_weights(self, question: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        """(branches,) weights: softmax for `weighted`; for `select` one-hot (Gumbel straight-through while
        training, argmax at inference)."""
        logits = self.gate_logits(question) if logits is None else logits
        if self.mode == "weighted":
            return logits.softmax(-1)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)
        return F.one_hot(logits.argmax(-1), logits.numel()).to(logits.dtype)

    def forward(
        self, spans: list[torch.Tensor], question: torch.Tensor | None = None, scores=None
    ) -> list[torch.Tensor]:
        """Compress each visual span (n_i, H) of one input; one gate decision covers all spans of the input.
        `scores`: the target's attention scores per span (a list, or a callable giving it), for verifier
        branches only."""
        self.budget_loss = torch.zeros((), device="cpu")
        self.chosen_logprob = None
        resolved: list = []

        def run(branch, i, x):
            if not branch.needs_scores:
                return branch(x)
            if not resolved:
                resolved.append(scores() if callable(scores) else scores)
            if resolved[0] is None:
                raise ValueError(f"compressor branch {branch.spec} needs the target's attention scores")
            return branch(x, resolved[0][i])

        if self.mode == "concat":
            return [torch.cat([run(b, i, x) for b in self.branches]) for i, x in enumerate(spans)]
        if question is None:
            raise ValueError(f"{self.mode} mode needs the question features for its gate")
        logits = self.gate_logits(question)
        w = self.gate_weights(question, logits)
        if self.mode == "weighted":
            return [
                sum(w[j].to(x.dtype) * run(b, i, x) for j, b in enumerate(self.branches)) for i, x in enumerate(spans)
            ]
        choice = int(w.argmax())
        self.picks[self.names[choice]] += 1
        if self.training:
            self.chosen_logprob = logits.float().log_softmax(-1)[choice]
        if self.budget_weight and self.training:
            n = sum(x.shape[0] for x in spans)
            cost = torch.tensor(
                [sum(b.kept(x.shape[0]) for x in spans) / max(n, 1) for b in self.branches], device=w.device
            )
            self.budget_loss = self.budget_weight * (logits.softmax(-1) * cost).sum()
        branch = self.branches[choice]
        return [w[choice].to(x.dtype) * run(branch, i, x) for i, x in enumerate(spans)]

    def credit_loss(self, loss: float) -> torch.Tensor:
        """Select mode, training, after a forward: credit_weight * (loss - running mean) * log p(chosen branch),
        whose gradient lowers the chosen branch's gate probability when its example's loss came out above the
        running mean (REINFORCE with a baseline). Updates the running mean (decay 0.9, bias-corrected)."""
        if self.chosen_logprob is None or not self.credit_weight:
            return torch.zeros((), device="cpu")
        count = self.loss_count
        advantage = loss - self.loss_mean / (1 - 0.9**count) if count else 0.0
        self.loss_mean, self.loss_count = 0.9 * self.loss_mean + 0.1 * loss, count + 1
        return self.credit_weight * advantage * self.chosen_logprob

    @classmethod
    def from_config(cls, hidden: int, config: dict) -> VisualCompressor:
        return cls(hidden, **config)


def compress_sequence(
    x: torch.Tensor,
    spans: list[tuple[int, int]],
    compressor: VisualCompressor,
    question: torch.Tensor | None,
    scores=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each (start, length) span of rows of x (N, H) by its compressed rows. Returns the new sequence and,
    for every original row, its row in the new sequence (-1 for rows inside a span). `scores`: per given span, the
    target's attention scores of its rows (a list or a callable giving one), for verifier branches."""
    order = sorted((s, n, i) for i, (s, n) in enumerate(spans) if n > 0)
    if not order:
        return x, torch.arange(x.shape[0], device=x.device)
    spans = [(s, n) for s, n, _ in order]

    def span_scores():
        given = scores() if callable(scores) else scores
        return None if given is None else [given[i] for _, _, i in order]

    outs = compressor([x[s : s + n] for s, n in spans], question, span_scores if scores is not None else None)
    pieces, row_of = [], torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    cursor, length = 0, 0
    for (s, n), out in zip(spans, outs):
        pieces.append(x[cursor:s])
        row_of[cursor:s] = torch.arange(length, length + s - cursor, device=x.device)
        length += s - cursor
        pieces.append(out.to(x.dtype))
        length += out.shape[0]
        cursor = s + n
    pieces.append(x[cursor:])
    row_of[cursor:] = torch.arange(length, length + x.shape[0] - cursor, device=x.device)
    return torch.cat(pieces), row_of
