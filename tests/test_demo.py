"""`make demo` runs `specvlm demo`: the bundled testbed pair, SpecVLM pruning, output checked against target-only."""

import pytest

from specvlm.cli import main


def test_demo_runs_on_the_bundled_pair_and_matches_the_target(capsys):
    assert main(["demo", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "output equals target-only decoding: yes" in out
    assert "τ (draft tokens accepted per round)" in out and "speedup" in out


@pytest.mark.parametrize("argv,phrase", [(["--max-new-tokens", "0"], "--max-new-tokens"),
                                         (["--visual-keep-ratio", "1.5"], "--visual-keep-ratio")])
def test_demo_bad_options(capsys, argv, phrase):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("specvlm: error: ") and phrase in err and err.count("\n") == 1
