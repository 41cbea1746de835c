"""How much a draft's τ can depend on the video, from a world's words alone, before anything is trained (issue 23).

A draft model that sees the video can match the target on the words the video decides; one that is blind (random keep
0.01) can only guess them. Which words the video decides, and through which read-out of the tower, is known from the
world's grammar: a colour word needs the colour read-out, "at the top left" the place, "moves up" the motion. So the
ratio τ(full video) / τ(blind) the issue asks for (≥ 1.3) has a ceiling set by the words alone, given which
read-outs the models have:

- every reply token is a "text" token (the grammar decides it from the words before) or comes from one `SOURCES`;
- a draft with the video matches the target on a token with probability α, whatever its source: where the models
  cannot read a source, the target's word there is its guess from the text, which a draft trained on the same data
  shares, so it counts as text;
- a blind draft matches on text tokens with probability α and never on a token of a source the models read (the
  ceiling: a real blind draft guesses some, a repeated colour often);
- each verification round of a chain of γ draft tokens keeps the matching prefix and adds the target's token
  (`expected_rounds`); τ is the accepted draft tokens per round, N / E[rounds] − 1.

The ratio is a ceiling on what reading buys, not a prediction: it says whether a world's grammar leaves the goal
reachable for towers that read what a probe says they read (docs/DESIGN.md, Testbed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .language import LOCATION, NUMBERS, REGION_NAMES
from .world import COLORS

SOURCES = ("colour", "count", "place", "motion", "event")


def _words(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))  # longest first: "top left" > "top"


# (source, pattern) in priority order: a character an earlier pattern took is not another's ("moves left" is motion,
# "the left edge" a place, "Left." as a direction answer motion, "Left side." a place)
_PATTERNS = [
    ("motion", r"\bmoves (?:left|right|up|down)\b|\bdoes not move\b|^(?:left|right|up|down)(?=\.$)"),
    ("place", rf"\b(?:{_words(LOCATION.values())}|{_words(REGION_NAMES)})\b"),
    ("place", r"\b(?:top |bottom )?(?:left|right|top|bottom)(?= (?:edge|corner)\b)"),
    ("colour", rf"\b(?:{_words(COLORS)})\b"),
    ("count", rf"\b(?:{_words(NUMBERS)})\b"),
    ("event", r"\b(?:appears|disappears|turns|bounces)\b"),
]


def word_sources(text: str) -> list[tuple[int, int, str]]:
    """The character spans (start, end, source) of `text`'s words that the video decides, by `SOURCES`; the rest of
    the text is the grammar's. Case-insensitive, so a short answer ("Top left.") is tagged as the caption's words."""
    taken = [False] * len(text)
    spans = []
    for source, pattern in _PATTERNS:
        for m in re.finditer(pattern, text, flags=re.IGNORECASE):
            if not any(taken[m.start() : m.end()]):
                spans.append((m.start(), m.end(), source))
                taken[m.start() : m.end()] = [True] * (m.end() - m.start())
    return sorted(spans)


def token_sources(text: str, tokenizer) -> list[str]:
    """Each token of `text` (a fast tokenizer's encoding, no special tokens): the source of the word it overlaps
    (its leading space aside), or "text"."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    spans, out = word_sources(text), []
    for start, end in enc["offset_mapping"]:
        start += len(text[start:end]) - len(text[start:end].lstrip())
        out.append(next((s for a, b, s in spans if start < b and end > a), "text"))
    return out


def expected_rounds(p: Sequence[float], gamma: int) -> float:
    """Expected verification rounds to produce a sequence whose token i a chain draft of `gamma` tokens matches with
    probability p[i] (independently). A round from position i keeps the matching prefix of its draft and adds the
    target's token: j < gamma matches then a miss move it to i + j + 1, gamma matches to i + gamma + 1 (the bonus);
    the sequence's end finishes it. R(i) = 1 + sum_j P(j matches, then a miss) R(i + j + 1) + P(all) R(i + gamma + 1),
    R(N) = 0; computed from the end, O(N gamma)."""
    n = len(p)
    rounds = [0.0] * (n + 1)  # rounds[i]: expected rounds to finish from position i
    for i in range(n - 1, -1, -1):
        total, prefix = 1.0, 1.0  # prefix: P(the first j draft tokens match)
        for j in range(gamma):
            if i + j >= n:
                break
            total += prefix * (1.0 - p[i + j]) * rounds[i + j + 1]
            prefix *= p[i + j]
        else:
            total += prefix * rounds[min(i + gamma + 1, n)]
        rounds[i] = total
    return rounds[0]


def tau_ceiling(replies: list[list[str]], read: set[str], alpha: float, gamma: int = 5) -> dict:
    """τ of a draft with the video and of a blind one over `replies` (each its tokens' sources, `token_sources` plus
    the end-of-turn token as "text"), when the models read the sources in `read` (module docstring), and their ratio."""
    tau = {}
    for view in ("full", "blind"):
        tokens = rounds = 0.0
        for sources in replies:
            p = [0.0 if view == "blind" and s in read else alpha for s in sources]
            tokens, rounds = tokens + len(p), rounds + expected_rounds(p, gamma)
        tau[view] = tokens / rounds - 1 if rounds else 0.0
    return dict(tau, ratio=tau["full"] / tau["blind"] if tau["blind"] else float("inf"))
