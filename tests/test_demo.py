"""`make demo` runs `specvlm demo`: the bundled testbed pair, SpecVLM pruning, output checked against target-only."""

import re

import pytest

from specvlm.cli import main


def test_demo_runs_on_the_bundled_pair_and_matches_the_target(capsys):
    from specvlm.numerics import flush_denormal_enabled

    before = flush_denormal_enabled()  # off, unless a benchmark script's main ran in this process before
    assert main(["demo", "--max-new-tokens", "8", "--repeats", "2"]) == 0
    assert flush_denormal_enabled() == before  # flushed for the demo's own arithmetic only, not its caller's
    out = capsys.readouterr().out
    assert "output equals target-only decoding: yes" in out
    assert "τ (draft tokens accepted per round)" in out and "speedup" in out
    assert re.search(
        r"τ by what the draft sees of the video: full video \d\.\d\d, SpecVLM keep 0\.1 \d\.\d\d, random keep "
        r"0\.1 \d\.\d\d",
        out,
    ), out


@pytest.mark.parametrize(
    "argv,phrase",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens"),
        (["--visual-keep-ratio", "1.5"], "--visual-keep-ratio"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_demo_bad_options(capsys, argv, phrase):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specvlm: error: ") and phrase in err and err.count("\n") == 1


def test_speedup_line_reports_spread_and_noise():
    from specvlm.demo import speedup_line

    clear = speedup_line([2.0, 2.2, 2.1], [1.0, 1.0, 1.1])
    assert "speedup 2.00x" in clear and "per-round 1.91-2.20x" in clear and "noise" not in clear
    assert "median of 3 interleaved rounds" in clear
    assert "within this machine's run-to-run noise" in speedup_line([1.0, 1.2, 0.9], [1.1, 1.0, 1.0])


def test_interleaved_times_rotates_the_order_and_warms_up():
    from specvlm.demo import interleaved_times

    calls = []
    results, times = interleaved_times(
        {"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, repeats=3
    )
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"] and results == {"a": 1, "b": 2}
    assert [len(t) for t in times.values()] == [3, 3]
