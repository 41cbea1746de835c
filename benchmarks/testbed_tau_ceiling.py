"""How far can a draft's τ depend on the video on a testbed world, from its words alone (issue 23's "the draft needs
the video: τ full ≥ 1.3× τ blind")? Nothing is trained (docs/DESIGN.md Testbed, testbed/ceiling.py):

    python benchmarks/testbed_tau_ceiling.py [--world testbed-ceiling/world] [--clips 400] [--seed 0] [--record]

The world (generated there with the build's parameters unless it exists) is tokenized with the BPE a build would
train on it. Per kind of reply the table gives its tokens, the share of them each read-out of the tower decides
(colour, count, place, motion, event; the rest the grammar decides), and the ceiling of τ(full) / τ(blind) for a
chain of 5 when the models read: colour and count (what the probe finds Qwen2.5-VL's tower reading on a plain
background), those and the place (a tower that sees where: LLaVA-OneVision's absolute positions, or a "position"
background), or everything; with the draft matching the target on α = 0.82 of the tokens it can know (the
geometric rate of the bundled-size pair's measured τ ≈ 2.86) and α = 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import record, table  # noqa: E402

READS = {
    "colour, count": {"colour", "count"},
    "+ place": {"colour", "count", "place"},
    "everything": {"colour", "count", "place", "motion", "event"},
}
ALPHAS = (0.82, 1.0)


def main(argv=None) -> str:
    from specvlm.testbed import build_text_corpus, generate_world
    from specvlm.testbed.ceiling import SOURCES, tau_ceiling, token_sources
    from specvlm.testbed.recipe import Recipe, family_tokenizer, train_bpe

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="testbed-ceiling/world", help="a world folder (generated if it has none)")
    ap.add_argument("--clips", type=int, default=400, help="clips of a generated world")
    ap.add_argument("--seed", type=int, default=0, help="seed of a generated world")
    ap.add_argument("--split", default="validation", help="the replies scored")
    ap.add_argument("--record", action="store_true", help="write the table to docs/BENCHMARKS.md")
    args = ap.parse_args(argv)
    recipe, world = Recipe(), Path(args.world)
    if not (world / "world.json").is_file():
        generate_world(
            world,
            args.clips,
            seed=args.seed,
            frames=recipe.clip_frames,
            size=recipe.world_size,
            questions=recipe.questions,
        )
    bpe = train_bpe(build_text_corpus(world / "train.jsonl"), recipe.vocab)
    tokenizer = family_tokenizer(bpe, "qwen2_5_vl", recipe.vocab)
    replies: dict[str, list[list[str]]] = {}
    for line in (world / f"{args.split}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        reply = rec["conversation"][-1]["content"]
        replies.setdefault(rec["kind"], []).append(token_sources(reply, tokenizer) + ["text"])  # + the end of turn
    replies["all questions"] = [r for kind, rs in replies.items() if kind != "caption" for r in rs]
    rows = []
    for kind in ["caption", "all questions", *sorted(k for k in replies if k not in ("caption", "all questions"))]:
        tokens = [s for reply in replies[kind] for s in reply]
        shares = [f"{tokens.count(s) / len(tokens):.0%}" for s in SOURCES]
        ceilings = [
            f"{tau_ceiling(replies[kind], read, alpha)['ratio']:.2f}" for alpha in ALPHAS for read in READS.values()
        ]
        rows.append([kind, len(replies[kind]), f"{len(tokens) / len(replies[kind]):.1f}", *shares, *ceilings])
    headers = ["replies", "n", "tokens each", *SOURCES]
    headers += [f"ceiling α={alpha}: {name}" for alpha in ALPHAS for name in READS]
    body = (
        f"World {world} ({args.split} split), the build's BPE ({recipe.vocab} entries); token shares by the read-out "
        f"that decides them, and the ceiling of τ(full video) / τ(blind) for a chain of 5 (testbed/ceiling.py):\n\n"
        + table(headers, rows)
    )
    print(body)
    if args.record:
        record("testbed-tau-ceiling", "Testbed: the ceiling of what the video can be worth to τ", body)
    return body


if __name__ == "__main__":
    main()
