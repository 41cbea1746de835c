"""Progress bars with elapsed time and an estimate of the time left (tqdm), for the long commands: `specvlm bench`
(per sample), `specvlm train-head` (per step) and `specvlm testbed build` (per stage). They draw on stderr, and only
on a terminal: logs, pipes and `--json` / `--quiet` runs get no carriage-return noise."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0, file=None):
    from tqdm import tqdm

    file = file or sys.stderr
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=file,
        dynamic_ncols=True,
        disable=not enabled or not getattr(file, "isatty", lambda: False)(),
    )
