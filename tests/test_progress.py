"""Progress bars: drawn (with the time left) only on a terminal; logs and pipes get none."""

import io

from specvlm.progress import progress_bar
from specvlm.testbed.build import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_draw_only_on_a_terminal():
    for file, enabled, drawn in ((Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)):
        bar = progress_bar(4, "bench", "sample", enabled, file=file)
        bar.update(1)
        bar.close()
        assert ("1/4" in file.getvalue() and "<" in file.getvalue()) == drawn  # "<" precedes the time left


def test_testbed_build_draws_a_bar_per_stage_on_a_terminal_and_lines_elsewhere():
    terminal = Terminal()
    show = Progress(True, terminal)
    show("world: clips", 1, 3)
    show("world: clips", 3, 3)
    show("qwen2_5_vl: train target", 1, 2, "loss 1.234")
    show.say("done")
    text = terminal.getvalue()
    assert "world: clips: 100%" in text and "loss 1.234" in text and text.endswith("] done\n")
    log = io.StringIO()
    show = Progress(True, log)
    show("world: clips", 3, 3)
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue() and "3/3" in log.getvalue()
