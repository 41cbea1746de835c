"""Record a `specvlm bench` run in docs/BENCHMARKS.md: its summary.md (command, machine, table, how to read it) goes
into a named section, its plots into docs/img/<section>_*.png, linked from the section.

    python benchmarks/record_bench.py OUT --section pruning-qwen --title "..." [--note "what it shows"]
"""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the --out folder of a finished `specvlm bench` run")
    ap.add_argument("--section", required=True, help="marker name in BENCHMARKS.md (letters, digits, dashes)")
    ap.add_argument("--title", required=True)
    ap.add_argument("--note", default="", help="a paragraph of reading, placed after the table")
    args = ap.parse_args()
    if not re.fullmatch(r"[a-z0-9-]+", args.section):
        raise SystemExit("record_bench: --section must be lower-case letters, digits and dashes")
    summary = args.out / "summary.md"
    if not summary.is_file():
        raise SystemExit(f"record_bench: {summary} does not exist (is {args.out} a finished bench run?)")
    body = summary.read_text().split("\n", 1)[1].strip()  # drop the "# specvlm bench: ..." heading
    images = []
    for png in sorted(args.out.glob("*.png")):
        target = DOCS / "img" / f"{args.section}_{png.name}"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(png, target)
        images.append(f"![{png.stem}](img/{target.name})")
    text = (
        f"<!-- {args.section}:start -->\n## {args.title}\n\nRecorded: {time.strftime('%Y-%m-%d')}\n\n{body}\n\n"
        + (args.note.strip() + "\n\n" if args.note.strip() else "")
        + "\n".join(images)
        + f"\n<!-- {args.section}:end -->"
    )
    path = DOCS / "BENCHMARKS.md"
    doc = path.read_text()
    pattern = re.compile(rf"<!-- {args.section}:start -->.*?<!-- {args.section}:end -->", re.S)
    doc = pattern.sub(lambda _: text, doc) if pattern.search(doc) else doc.rstrip() + "\n\n" + text + "\n"
    path.write_text(doc)
    print(f"recorded {summary} as section {args.section} of {path}")


if __name__ == "__main__":
    main()
