"""What a speculative generation did, in the papers' conventions.

τ (`mean_accepted_tokens`) is the number of *draft* tokens the target accepted per verification round, the bonus
token excluded (the convention of both SpecVLM papers' code; add 1 for "tokens per round"). Forward counts
include the prefill forwards.

`visual_tokens` counts the visual tokens in the target's prompt (the target always sees them all) and
`kept_visual_tokens` those the draft's prompt keeps of them: all of them unless `pruning` names a method, so the
two are equal when nothing was pruned. A target-only run (`mode` "target-only", `specvlm generate --draft none`)
has no draft: no rounds, no draft prompt, nothing kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class SpecStats:
    mode: str = "speculative"  # or "target-only": the target's own generate, the baseline
    new_tokens: int = 0
    rounds: int = 0
    accepted_tokens: int = 0
    drafted_tokens: int = 0
    accept_histogram: list[int] = field(default_factory=list)  # [k] = rounds that accepted exactly k draft tokens
    target_forwards: int = 0
    draft_forwards: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    target_prompt_tokens: int = 0
    draft_prompt_tokens: int = 0
    visual_tokens: int = 0  # visual tokens in the target's prompt
    kept_visual_tokens: int = 0  # of those, the ones the draft's prompt keeps (all unless pruned)
    pruning: str = "none"  # the method that pruned the draft's prompt, "none" when nothing was pruned
    scoring_s: float = 0.0  # verifier-attention capture's extra fp32 score computation (inside prefill_s)
    selection_s: float = 0.0  # time to choose the kept tokens from the scores (inside prefill_s)
    compile_s: float = 0.0  # one-time torch.compile cost paid in this call (inside prefill_s / decode_s)

    @property
    def mean_accepted_tokens(self) -> float:
        return self.accepted_tokens / self.rounds if self.rounds else 0.0

    @property
    def acceptance_by_position(self) -> list[float]:
        """[i] = fraction of rounds whose i-th draft token (1-based i+1) was accepted."""
        if not self.rounds:
            return []
        at_least = [sum(self.accept_histogram[k:]) for k in range(1, len(self.accept_histogram))]
        return [n / self.rounds for n in at_least]

    @property
    def tokens_per_second(self) -> float:
        total = self.prefill_s + self.decode_s
        return self.new_tokens / total if total > 0 else 0.0

    def record_round(self, drafted: int, accepted: int) -> None:
        self.rounds += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        if len(self.accept_histogram) <= accepted:
            self.accept_histogram.extend([0] * (accepted + 1 - len(self.accept_histogram)))
        self.accept_histogram[accepted] += 1

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update(
            mean_accepted_tokens=self.mean_accepted_tokens,
            acceptance_by_position=self.acceptance_by_position,
            tokens_per_second=self.tokens_per_second,
        )
        return out

    def summary(self) -> str:
        how = (
            "target-only (no draft)"
            if self.mode == "target-only"
            else f"τ={self.mean_accepted_tokens:.2f} over {self.rounds} rounds"
        )
        line = (
            f"{self.new_tokens} tokens, {how}, {self.tokens_per_second:.1f} tokens/s (prefill "
            f"{self.prefill_s:.2f}s, decode {self.decode_s:.2f}s)"
        )
        if self.compile_s:
            line += f"; one-time compile {self.compile_s:.1f}s (included)"
        return line + self.pruning_summary()

    def pruning_summary(self) -> str:
        """'' unless the draft's prompt was pruned."""
        if self.pruning == "none":
            return ""
        return (
            f"; draft kept {self.kept_visual_tokens}/{self.visual_tokens} visual tokens, prompt "
            f"{self.draft_prompt_tokens} vs {self.target_prompt_tokens} (scoring {self.scoring_s * 1e3:.1f}ms, "
            f"selection {self.selection_s * 1e3:.1f}ms, both inside prefill)"
        )
