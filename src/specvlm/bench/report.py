"""From result rows to numbers, a markdown table and plots. Pure functions over the rows of `results.jsonl`, so the
arithmetic can be checked on made-up timings.

Conventions (both SpecVLM papers'):
- τ = draft tokens accepted per verification round, the bonus token excluded, pooled over samples
  (Σ accepted / Σ rounds); acceptance at position i = fraction of rounds whose i-th draft token was accepted.
- speedup = target-only time / method time, one ratio per (sample, timed round): the runner times every method once
  per round, interleaved, so round r of the target and of the method ran side by side on the same sample (outputs
  are identical, so this is also the ratio of tokens/s). Reported as the median of those n ratios with their
  min–max: one slow or fast outlier moves the range, never the headline. "wall" times the whole generate call;
  "decode" excludes the prefill (the papers' headline numbers are decode-phase speedups).
- vs hf-assisted = hf-assisted wall time / method wall time, paired and summarised the same way (> 1: the method
  beats HF assisted generation on the same pair and inputs). Wall only: HF's prefill / decode split comes from its
  first streamed token, which in assisted generation arrives after the first verification round, so its decode
  time is not comparable with ours.
- ideal speedup (decode phase), from the measured τ and measured per-forward costs:

      ideal = (τ + 1) · t_T / (t_V + k · t_D)

  t_T: mean target forward (decoder stack + LM head) per generated token in the target-only run (same samples);
  t_V: mean target verification forward of the method; t_D: mean draft forward; k: draft forwards per round.
  Each round yields τ + 1 tokens for one verification and k draft forwards; target-only decoding pays t_T per
  token. Only model forwards count (`measure.ForwardClocks`), so achieved / ideal shows what everything else
  costs (tree building, acceptance, cache bookkeeping, sampling, Python; for target-only HF `generate`'s own
  per-token overhead, which can push achieved above ideal on tiny models). With t_V = t_T it is the familiar
  (τ + 1) / (1 + k·c), c = t_D / t_T.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

IDEAL_FORMULA = "ideal = (τ + 1) · t_T / (t_V + k · t_D)"


def ideal_speedup(tau: float, t_target: float, t_verify: float, t_draft: float, draft_per_round: float) -> float | None:
    """(τ + 1) · t_T / (t_V + k · t_D); None when a cost is unknown."""
    if None in (tau, t_target, t_verify, t_draft, draft_per_round):
        return None
    cost = t_verify + draft_per_round * t_draft
    return (tau + 1) * t_target / cost if cost > 0 else None


def acceptance_by_position(histogram: list[int]) -> list[float]:
    """[i] = fraction of rounds that accepted at least i + 1 draft tokens (at least one entry once a round ran)."""
    rounds = sum(histogram)
    if not rounds:
        return []
    return [sum(histogram[k:]) / rounds for k in range(1, max(len(histogram), 2))]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _rounds(row: dict, key: str) -> list[float]:
    """The row's per-round times of `key` ("wall_s" | "decode_s"); a row without them was timed once."""
    return row.get("repeat_" + key) or [row[key]]


def paired_ratios(reference: dict[str, dict], rows: list[dict], key: str) -> list[float]:
    """reference time / row time for every (sample, round) both ran (`reference`: sample -> row). Rounds pair by
    index: the runner's round r runs every method once, side by side. Pairing keeps a method that ran on extra
    samples from skewing the numbers."""
    ratios = []
    for row in rows:
        if row["sample"] in reference:
            pairs = zip(_rounds(reference[row["sample"]], key), _rounds(row, key))
            ratios += [num / den for num, den in pairs if den > 0]
    return ratios


def spread(values: list[float]) -> tuple[float | None, list[float] | None]:
    """(median, [min, max]) of `values`; (None, None) when there are none. The median is the headline: one outlier
    run moves the range, not it."""
    if not values:
        return None, None
    return statistics.median(values), [min(values), max(values)]


def _per_call(rows: list[dict], clock: str) -> tuple[float, int]:
    """(Σ decode-forward seconds, Σ decode forwards) of `clock` ("target_clock" | "draft_clock")."""
    seconds = sum(r[clock]["decode_s"] for r in rows)
    calls = sum(max(r[clock]["calls"] - 1, 0) for r in rows)
    return seconds, calls


def summarize(rows: list[dict]) -> list[dict]:
    """One summary per run (method × setting), in first-seen order, target first. Speedups are the median and
    [min, max] of the target's time / the run's over the (sample, round) pairs both have (`speedup_n` of them, from
    `speedup_samples` samples); `vs_hf_assisted_wall` does the same with the hf-assisted run's wall times (None for
    the target, and for every run when hf-assisted did not run)."""
    by_run: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_run[row["run"]].append(row)
    target = {r["sample"]: r for r in rows if r["method"] == "target"}
    assisted = {r["sample"]: r for r in rows if r["method"] == "hf-assisted"}
    t_target = _ratio(*_per_call(list(target.values()), "target_clock"))
    out = []
    for name, group in by_run.items():
        first = group[0]
        rounds = sum(r["rounds"] for r in group)
        accepted = sum(r["accepted"] for r in group)
        histogram: list[int] = []
        for r in group:
            h = r.get("accept_histogram") or []
            histogram += [0] * (len(h) - len(histogram))
            for k, n in enumerate(h):
                histogram[k] += n
        new_tokens = sum(r["new_tokens"] for r in group)
        is_target = first["method"] == "target"
        tau = None if is_target or not rounds else accepted / rounds
        v_s, v_calls = _per_call(group, "target_clock")
        d_s, d_calls = _per_call(group, "draft_clock")
        t_verify, t_draft = _ratio(v_s, v_calls), _ratio(d_s, d_calls)
        k = _ratio(d_calls, rounds)
        wall_ratios = paired_ratios(target, group, "wall_s")
        wall, wall_range = spread(wall_ratios)
        decode, decode_range = spread(paired_ratios(target, group, "decode_s"))
        vs_hf, vs_hf_range = (None, None) if is_target else spread(paired_ratios(assisted, group, "wall_s"))
        ideal = 1.0 if is_target else ideal_speedup(tau, t_target, t_verify, t_draft, k)
        out.append(
            {
                "run": name,
                "method": first["method"],
                "setting": first["setting"],
                "keep_ratio": first.get("keep_ratio"),
                "samples": len(group),
                "lossless": sum(bool(r["lossless"]) for r in group),
                "new_tokens": new_tokens,
                "rounds": rounds,
                "tau": tau,
                "acceptance_by_position": acceptance_by_position(histogram),
                "tokens_per_s": _ratio(new_tokens, sum(r["wall_s"] for r in group)),
                "speedup_wall": wall,
                "speedup_wall_range": wall_range,
                "speedup_decode": decode,
                "speedup_decode_range": decode_range,
                "speedup_n": len(wall_ratios),
                "speedup_samples": sum(r["sample"] in target for r in group),
                "ideal_speedup": ideal,
                "vs_hf_assisted_wall": vs_hf,
                "vs_hf_assisted_wall_range": vs_hf_range,
                "prefill_s": sum(r["prefill_s"] for r in group) / len(group),
                "decode_s": sum(r["decode_s"] for r in group) / len(group),
                "wall_s": sum(r["wall_s"] for r in group) / len(group),
                "target_forwards_per_token": _ratio(sum(r["target_forwards"] for r in group), new_tokens),
                "draft_forwards_per_round": None if is_target else k,
                "t_target_ms": None if t_target is None else t_target * 1e3,
                "t_verify_ms": None if is_target or t_verify is None else t_verify * 1e3,
                "t_draft_ms": None if is_target or t_draft is None else t_draft * 1e3,
            }
        )
    out.sort(key=lambda s: s["method"] != "target")  # stable: target first, the rest as run
    return out


# ---- markdown -------------------------------------------------------------------------------------------------------
def _fmt(value, digits: int = 2, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def _positions(acc: list[float], n: int = 5) -> str:
    return " / ".join(f"{a:.2f}" for a in acc[:n]) if acc else "–"


HEADERS = [
    "method",
    "setting",
    "lossless",
    "τ",
    "accept @1..5",
    "tokens/s",
    "n",
    "speedup (wall)",
    "speedup (decode)",
    "ideal (decode)",
    "vs hf-assisted (wall)",
    "prefill s",
    "decode s",
    "target fwd / token",
    "draft fwd / round",
    "t_T / t_V / t_D ms",
]

# Printed under the table wherever it appears (summary.md and the command's output): the cells need it to be read.
LEGEND = (
    "speedup / vs hf-assisted: median (min–max) of n paired ratios, one per sample and timed round (every "
    "method runs once per round, interleaved, so each pair ran side by side); n = samples × --repeats."
)


def _spread_cell(s: dict, key: str) -> str:
    median, bounds = s.get(key), s.get(key + "_range")
    if median is None:
        return "–"
    return f"{median:.2f}× ({bounds[0]:.2f}–{bounds[1]:.2f})"


def table_rows(summary: list[dict]) -> list[list[str]]:
    rows = []
    for s in summary:
        times = " / ".join(_fmt(s[k], 2) for k in ("t_target_ms", "t_verify_ms", "t_draft_ms"))
        rows.append(
            [
                s["method"],
                s["setting"],
                f"{s['lossless']}/{s['samples']}",
                _fmt(s["tau"]),
                _positions(s["acceptance_by_position"]),
                _fmt(s["tokens_per_s"], 1),
                _fmt(s["speedup_n"]),
                _spread_cell(s, "speedup_wall"),
                _spread_cell(s, "speedup_decode"),
                _fmt(s["ideal_speedup"], 2, "×"),
                _spread_cell(s, "vs_hf_assisted_wall"),
                _fmt(s["prefill_s"], 3),
                _fmt(s["decode_s"], 3),
                _fmt(s["target_forwards_per_token"], 3),
                _fmt(s["draft_forwards_per_round"], 1),
                times,
            ]
        )
    return rows


def markdown_table(summary: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summary)]
    return "\n".join(lines)


def summary_markdown(summary: list[dict], context: dict) -> str:
    """summary.md: what was run, the table, how to read it, and any output that differed from the target's."""
    failures = [s for s in summary if s["lossless"] < s["samples"]]
    lines = [f"# specvlm bench: {context.get('dataset', '?')}", ""]
    for key in (
        "command",
        "machine",
        "versions",
        "target",
        "draft",
        "head",
        "samples",
        "kinds",
        "max_new_tokens",
        "ignore_eos",
        "num_frames",
        "draft_num_frames",
        "tree",
        "num_draft_tokens",
        "hf_assistant_tokens",
        "repeats",
        "warmup",
        "order",
    ):
        value = context.get(key)
        if value is None or value is False or value == "":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"- {key.replace('_', ' ')}: " + (f"`{value}`" if key == "command" else str(value)))
    lines += ["", markdown_table(summary), "", LEGEND, ""]
    if failures:
        lines += [
            "**Lossless check failed** (output differs from target-only greedy): "
            + ", ".join(f"{s['run']} ({s['samples'] - s['lossless']} of {s['samples']})" for s in failures),
            "",
        ]
    else:
        lines += ["Every output equals the target-only greedy output token for token.", ""]
    lines += vs_hf_assisted_lines(summary)
    lines += [
        "How to read it:",
        "- lossless: samples whose output equals target-only greedy `generate`, token for token.",
        "- τ: draft tokens accepted per verification round, bonus token excluded (both SpecVLM papers' convention),"
        " pooled over samples; accept @i: fraction of rounds whose i-th draft token was accepted.",
        "- speedup: target-only time / method time per sample and timed round of this run (each round runs every"
        " method once, order rotated by one per round), reported as the median of those n ratios with their min–max:"
        " an outlier run moves the range, not the headline; wall = whole `generate` call, decode = after the prefill"
        " (the papers' headline numbers are decode-phase). prefill s / decode s: means per sample (of each sample's"
        " median round).",
        f"- ideal (decode): `{IDEAL_FORMULA}` with t_T the target-only forward per token, t_V the method's"
        " target verification forward, t_D its draft forward and k draft forwards per round, all measured in this"
        " run (model forwards only, decoder stack + LM head: tree building, acceptance, sampling and Python are"
        " outside, so achieved / ideal shows their cost).",
        "- hf-assisted: HF `generate(assistant_model=draft)`; its draft is given its own vision features (transformers"
        " 5.x would otherwise draft without the video), τ from HF's own per-round match counts.",
        "- vs hf-assisted (wall): hf-assisted wall time / method wall time, paired by sample and round like the"
        " speedups, median (min–max) (same pair, same inputs; > 1: faster than HF assisted generation). Wall only:"
        " HF's first streamed token comes after its first verification round, so its decode split is not comparable"
        " with ours.",
    ]
    return "\n".join(lines) + "\n"


def vs_hf_assisted_lines(summary: list[dict]) -> list[str]:
    """Ours vs HF assisted generation as one line under the table (the comparison a reader looks for first, which a
    column among fifteen hides), one entry per run of ours; nothing when hf-assisted did not run."""
    ours = [
        s for s in summary if s["method"] not in ("target", "hf-assisted") and s.get("vs_hf_assisted_wall") is not None
    ]
    if not ours:
        return []
    ratios = ", ".join(f"{s['run']} {_spread_cell(s, 'vs_hf_assisted_wall')}" for s in ours)
    return [
        f"Ours vs HF assisted generation (hf-assisted wall / method wall per sample and round, median "
        f"(min–max)): {ratios}.",
        "",
    ]


# ---- plots ----------------------------------------------------------------------------------------------------------
def error_bars(points: list[dict], key: str) -> tuple[list[float], list[list[float]]]:
    """Medians of `key` and matplotlib's asymmetric `yerr` (down to the min, up to the max); NaN where unknown."""
    nan = float("nan")
    medians = [p[key] if p[key] is not None else nan for p in points]
    bounds = [p.get(key + "_range") or [nan, nan] for p in points]
    return medians, [[m - b[0] for m, b in zip(medians, bounds)], [b[1] - m for m, b in zip(medians, bounds)]]


def plot(summary: list[dict], out_dir) -> list[Path]:
    """pruning_curve.png (τ and speedup vs keep ratio, one line per pruning method) when a pruning method ran, and
    speedup.png (achieved wall / decode speedup and the ideal, per run). Speedups are medians with error bars from
    the min to the max paired ratio (report's LEGEND). Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    curves: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        if s.get("keep_ratio") is not None:
            curves[s["method"]].append(s)
    if curves:
        fig, (ax_tau, ax_speed) = plt.subplots(1, 2, figsize=(11, 4.2))
        for method, points in curves.items():
            points = sorted(points, key=lambda s: s["keep_ratio"])
            x = [p["keep_ratio"] for p in points]
            ax_tau.plot(x, [p["tau"] if p["tau"] is not None else float("nan") for p in points], "o-", label=method)
            medians, yerr = error_bars(points, "speedup_decode")
            ax_speed.errorbar(x, medians, yerr=yerr, fmt="o-", capsize=3, label=method)
        for s in summary:  # unpruned references
            if s["method"] in ("sd-static", "self") and s["tau"] is not None:
                ax_tau.axhline(s["tau"], ls="--", lw=1, color="gray")
                ax_tau.annotate(s["method"], (1.0, s["tau"]), fontsize=8, color="gray", ha="right", va="bottom")
                if s["speedup_decode"] is not None:
                    ax_speed.axhline(s["speedup_decode"], ls="--", lw=1, color="gray")
                    ax_speed.annotate(
                        s["method"], (1.0, s["speedup_decode"]), fontsize=8, color="gray", ha="right", va="bottom"
                    )
        ax_speed.axhline(1.0, ls=":", lw=1, color="black")
        for ax, label in (
            (ax_tau, "τ (accepted draft tokens / round)"),
            (ax_speed, "decode speedup vs target (median, min–max)"),
        ):
            ax.set_xscale("log")
            ax.set_xlabel("visual keep ratio of the draft")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        ax_tau.legend(fontsize=8)
        fig.tight_layout()
        written.append(out_dir / "pruning_curve.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    runs = [s for s in summary if s["method"] != "target"]
    if runs:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(runs) + 2), 4.5))
        xs = range(len(runs))
        for shift, key, label in ((-0.2, "speedup_wall", "wall"), (0.2, "speedup_decode", "decode")):
            medians, yerr = error_bars(runs, key)
            ax.bar([x + shift for x in xs], medians, 0.4, yerr=yerr, capsize=3, label=label)
        ax.plot(
            list(xs),
            [s["ideal_speedup"] if s["ideal_speedup"] is not None else float("nan") for s in runs],
            "k_",
            ms=14,
            mew=2,
            ls="none",
            label="ideal (decode)",
        )
        ax.axhline(1.0, ls=":", lw=1, color="black")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([s["run"] for s in runs], rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("speedup vs target-only (same run): median, min–max")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(out_dir / "speedup.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
