"""What `specvlm generate` gives a user who names no draft, against the drafts they could name: tokens/s of the
default (no draft: the target alone), `--draft self` (SpecVLM-pruned self-draft) and the bundled small draft, on
the bundled pair, each through the command line's own loading path. Runs are interleaved, `--repeats` rounds after a
warm-up; speeds are medians with their min-max, ratios per round against the default.

    python benchmarks/bench_default.py [--family qwen2_5_vl] [--max-new-tokens 96] [--repeats 5] [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specvlm.arguments import check_decoding, decoding_options, load_generator, resolve_models
from specvlm.cli import build_parser
from specvlm.inputs import inputs_from_args
from specvlm.testbed.assets import SAMPLES_DIR, bundled_pair

from common import record, table

PROMPT = "Describe the video in detail."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="qwen2_5_vl", choices=("qwen2_5_vl", "llava_onevision"))
    ap.add_argument("--clip", default="clip_00009.mp4")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    target_dir, draft_dir = bundled_pair(args.family)
    common = ["generate", "--target", str(target_dir), "--video", f"{SAMPLES_DIR}/{args.clip}", "--prompt", PROMPT]
    common += ["--max-new-tokens", str(args.max_new_tokens)]
    configs = {
        "default (no --draft)": [],
        "--draft self": ["--draft", "self"],
        "--draft <bundled small draft>": ["--draft", str(draft_dir)],
    }
    runs = {}
    for name, extra in configs.items():
        options = build_parser().parse_args(common + extra)
        check_decoding(options)
        models = resolve_models(options)
        inputs = inputs_from_args(
            options, models.target_dir, models.target_config, models.draft_dir, models.draft_config
        )
        runs[name] = (load_generator(options, models, lambda message: None), inputs, decoding_options(options))

    def once(name):
        gen, inputs, decoding = runs[name]
        started = time.perf_counter()
        with torch.no_grad():
            out = gen.generate(**inputs, **decoding)
        return out.token_ids, len(out.token_ids) / (time.perf_counter() - started), out.stats

    answers = {name: once(name)[0] for name in runs}  # warm-up
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    taus: dict[str, float] = {}
    for _ in range(args.repeats):
        for name in runs:
            tokens, speed, stats = once(name)
            assert tokens == answers[name]
            speeds[name].append(speed)
            taus[name] = stats.mean_accepted_tokens if stats.rounds else float("nan")
    baseline = speeds["default (no --draft)"]
    rows = []
    for name, values in speeds.items():
        ratios = [v / b for v, b in zip(values, baseline)]
        rows.append(
            [
                name,
                f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]",
                f"{statistics.median(ratios):.2f}× [{min(ratios):.2f}–{max(ratios):.2f}]",
                "–" if taus[name] != taus[name] else f"{taus[name]:.2f}",
                "yes" if answers[name] == answers["default (no --draft)"] else "NO",
            ]
        )
    text = table(["what the user types", "tokens/s", "vs the default", "τ", "same answer"], rows)
    print(text)
    if not args.no_record:
        record(
            "default-draft",
            "The default draft: what a user who names none gets",
            f"""Bundled {args.family} pair, `{args.clip}`, "{PROMPT}", {args.max_new_tokens} new tokens, greedy, fp32 on
CPU, each configuration loaded as `specvlm generate` loads it; {args.repeats} interleaved rounds after a warm-up.

{text}

Reading: a self-draft reads all of the target's weights at every draft step, so even from a 10 %-pruned view it
costs about what a target step costs; it pays only where the visual prompt dominates a step. The default is
therefore the target alone (with one line naming `--draft` / `--head`), never slower than not speculating;
the rule is in DESIGN, "Defaults".""",
        )


if __name__ == "__main__":
    main()
