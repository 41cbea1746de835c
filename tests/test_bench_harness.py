"""`specvlm bench`: the runner end to end on tiny random models and a 2-clip world (every method kind once, files,
lossless checks, one summary row per method × setting), the report arithmetic on made-up timings, and one-line
errors for bad arguments."""

import contextlib
import io
import json
import math

import pytest

from specvlm.bench.methods import Run, parse_keep_ratios, parse_methods, parse_pruning_methods
from specvlm.bench.report import (
    HEADERS,
    LEGEND,
    acceptance_by_position,
    error_bars,
    ideal_speedup,
    markdown_table,
    plot,
    summarize,
    summary_markdown,
    vs_hf_assisted_lines,
)
from specvlm.cli import main
from specvlm.errors import SpecVLMError

FAMILY = "qwen2_5_vl"


# ---- the report's arithmetic, on injected timings -------------------------------------------------------------------
def _row(
    run,
    method,
    sample,
    wall,
    decode,
    *,
    setting="-",
    keep=None,
    rounds=0,
    accepted=0,
    histogram=(),
    target_clock=(1, 0.0, 0.0),
    draft_clock=(0, 0.0, 0.0),
    new_tokens=10,
    lossless=True,
    target_forwards=10,
    repeat_wall=None,
    repeat_decode=None,
):
    """One results.jsonl row; `repeat_wall` / `repeat_decode`: every timed round's seconds (else timed once)."""
    clock = lambda c: {"calls": c[0], "prefill_s": c[1], "decode_s": c[2]}
    rounds_of = {} if repeat_wall is None else {"repeat_wall_s": repeat_wall, "repeat_decode_s": repeat_decode}
    return {
        **rounds_of,
        "run": run,
        "method": method,
        "setting": setting,
        "keep_ratio": keep,
        "sample": sample,
        "wall_s": wall,
        "decode_s": decode,
        "prefill_s": wall - decode,
        "rounds": rounds,
        "accepted": accepted,
        "accept_histogram": list(histogram),
        "new_tokens": new_tokens,
        "lossless": lossless,
        "target_forwards": target_forwards,
        "draft_forwards": draft_clock[0],
        "target_clock": clock(target_clock),
        "draft_clock": clock(draft_clock),
    }


def test_speedup_is_against_the_same_runs_target():
    rows = [
        _row("target", "target", "a", 2.0, 1.5, target_clock=(10, 0.1, 0.9)),
        _row("target", "target", "b", 4.0, 3.5, target_clock=(10, 0.1, 0.9)),
        _row(
            "sd-static",
            "sd-static",
            "a",
            1.0,
            0.5,
            rounds=4,
            accepted=6,
            histogram=[1, 1, 2],
            target_clock=(5, 0.1, 0.4),
            draft_clock=(13, 0.05, 0.12),
            target_forwards=5,
        ),
        _row(
            "sd-static",
            "sd-static",
            "b",
            3.0,
            2.0,
            rounds=2,
            accepted=3,
            histogram=[0, 1, 1],
            target_clock=(3, 0.1, 0.2),
            draft_clock=(7, 0.05, 0.06),
            lossless=False,
            target_forwards=3,
        ),
    ]
    target, sd = summarize(rows)
    assert target["run"] == "target" and target["speedup_wall"] == 1.0 and target["ideal_speedup"] == 1.0
    assert sd["speedup_wall"] == pytest.approx((2.0 / 1.0 + 4.0 / 3.0) / 2)  # median of two per-sample ratios
    assert sd["speedup_wall_range"] == pytest.approx([4.0 / 3.0, 2.0]) and sd["speedup_n"] == 2
    assert sd["speedup_decode"] == pytest.approx((1.5 / 0.5 + 3.5 / 2.0) / 2)
    assert sd["speedup_decode_range"] == pytest.approx([3.5 / 2.0, 1.5 / 0.5])
    assert sd["tau"] == pytest.approx(9 / 6) and sd["lossless"] == 1 and sd["samples"] == 2
    assert sd["acceptance_by_position"] == pytest.approx([5 / 6, 3 / 6])
    assert sd["tokens_per_s"] == pytest.approx(20 / 4.0)
    assert sd["target_forwards_per_token"] == pytest.approx(8 / 20)
    t_t, t_v, t_d, k = 1.8 / 18, 0.6 / 6, 0.18 / 18, 18 / 6  # per decode forward; draft forwards per round
    assert sd["t_target_ms"] == pytest.approx(t_t * 1e3) and sd["t_verify_ms"] == pytest.approx(t_v * 1e3)
    assert sd["draft_forwards_per_round"] == pytest.approx(k)
    assert sd["ideal_speedup"] == pytest.approx((9 / 6 + 1) * t_t / (t_v + k * t_d))


def test_speedup_uses_only_samples_the_target_ran():
    rows = [_row("target", "target", "a", 2.0, 1.0), _row("m", "m", "a", 1.0, 0.5), _row("m", "m", "b", 100.0, 100.0)]
    assert summarize(rows)[1]["speedup_wall"] == pytest.approx(2.0)
    assert summarize(rows)[1]["speedup_n"] == 1 and summarize(rows)[1]["speedup_samples"] == 1


def test_table_shows_median_range_and_n_and_an_outlier_moves_only_the_range(tmp_path):
    """Two samples × three interleaved rounds; round 3 of sample b was a 10x outlier (a stall in the target's
    run): the headline stays the median, the outlier shows in the range."""
    rows = [
        _row("target", "target", "a", 2.0, 1.0, repeat_wall=[2.0, 2.2, 1.8], repeat_decode=[1.0, 1.2, 0.8]),
        _row("target", "target", "b", 2.0, 1.0, repeat_wall=[2.0, 2.0, 20.0], repeat_decode=[1.0, 1.0, 19.0]),
        _row("sd", "sd-static", "a", 1.0, 0.5, repeat_wall=[1.0, 1.1, 1.2], repeat_decode=[0.5, 0.6, 0.4]),
        _row("sd", "sd-static", "b", 1.0, 0.5, repeat_wall=[2.0, 1.0, 2.0], repeat_decode=[1.0, 0.5, 1.0]),
    ]
    sd = summarize(rows)[1]
    assert sd["speedup_n"] == 6 and sd["speedup_samples"] == 2
    assert sd["speedup_wall"] == pytest.approx(2.0)  # ratios a: 2, 2, 1.5; b: 1, 2, 10 (a mean would say 3.08)
    assert sd["speedup_wall_range"] == pytest.approx([1.0, 10.0])
    assert sd["speedup_decode"] == pytest.approx(2.0) and sd["speedup_decode_range"] == pytest.approx([1.0, 19.0])
    text = summary_markdown(summarize(rows), {"dataset": "testbed:w", "repeats": 3})
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    cells = next(line for line in text.splitlines() if line.startswith("| sd-static")).split(" | ")
    column = {name: cells[i] for i, name in enumerate(HEADERS)}
    assert column["n"] == "6"
    assert column["speedup (wall)"] == "2.00× (1.00–10.00)" and column["speedup (decode)"] == "2.00× (1.00–19.00)"
    assert header.split(" | ")[HEADERS.index("n")] == "n" and LEGEND in text and "- repeats: 3" in text
    assert [p.name for p in plot(summarize(rows), tmp_path)] == ["speedup.png"]  # with min-max error bars


def test_error_bars_reach_from_the_min_to_the_max():
    points = [{"speedup_decode": 2.0, "speedup_decode_range": [1.5, 3.0]}, {"speedup_decode": None}]
    medians, (down, up) = error_bars(points, "speedup_decode")
    assert medians[0] == 2.0 and down[0] == 0.5 and up[0] == 1.0
    assert all(math.isnan(v) for v in (medians[1], down[1], up[1]))


def test_ours_vs_hf_assisted_is_a_ratio_of_wall_times_over_shared_samples():
    rows = [
        _row("target", "target", "a", 2.0, 1.0),
        _row("target", "target", "b", 4.0, 3.0),
        _row("hf-assisted", "hf-assisted", "a", 1.0, 0.2),
        _row("hf-assisted", "hf-assisted", "b", 3.0, 0.3),
        _row("sd-static", "sd-static", "a", 0.5, 0.4),
        _row("sd-static", "sd-static", "b", 1.0, 0.8),
        _row("self", "self", "a", 0.25, 0.2),
        _row("self", "self", "c", 100.0, 90.0),
    ]  # c: no hf-assisted row
    by_run = {s["run"]: s for s in summarize(rows)}
    assert by_run["sd-static"]["vs_hf_assisted_wall"] == pytest.approx((1.0 / 0.5 + 3.0 / 1.0) / 2)  # the median
    assert by_run["sd-static"]["vs_hf_assisted_wall_range"] == pytest.approx([2.0, 3.0])
    assert by_run["self"]["vs_hf_assisted_wall"] == pytest.approx(1.0 / 0.25)
    assert by_run["hf-assisted"]["vs_hf_assisted_wall"] == pytest.approx(1.0)
    assert by_run["target"]["vs_hf_assisted_wall"] is None
    summary = list(by_run.values())
    assert vs_hf_assisted_lines(summary) == [
        "Ours vs HF assisted generation (hf-assisted wall / method wall per sample and round, median (min–max)): "
        "sd-static 2.50× (2.00–3.00), self 4.00× (4.00–4.00).",
        "",
    ]
    text = summary_markdown(summary, {"dataset": "testbed:w"})
    assert "sd-static 2.50× (2.00–3.00), self 4.00× (4.00–4.00)" in text
    column = HEADERS.index("vs hf-assisted (wall)")
    cells = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")[column]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
    }
    assert cells == {
        "target": "–",
        "hf-assisted": "1.00× (1.00–1.00)",
        "sd-static": "2.50× (2.00–3.00)",
        "self": "4.00× (4.00–4.00)",
    }
    without = summarize([r for r in rows if r["method"] != "hf-assisted"])
    assert all(s["vs_hf_assisted_wall"] is None for s in without) and vs_hf_assisted_lines(without) == []


def test_ideal_speedup_formula():
    assert ideal_speedup(3.0, 10.0, 10.0, 1.0, 4) == pytest.approx(4 * 10 / 14)  # (τ+1)/(1+kc) when t_V = t_T
    assert ideal_speedup(0.0, 10.0, 10.0, 0.0, 5) == pytest.approx(1.0)
    assert ideal_speedup(None, 1.0, 1.0, 1.0, 1) is None
    assert acceptance_by_position([2, 1, 1]) == [0.5, 0.25]
    assert acceptance_by_position([3]) == [0.0] and acceptance_by_position([]) == []


def test_method_names_and_expansion():
    runs = parse_methods(
        "sd-static,prune:specvlm,self-prune,eagle",
        keep_ratios=(1.0, 0.1),
        pruning_methods=("uniform", "random"),
        has_head=True,
    )
    assert [r.name for r in runs] == [
        "target",
        "sd-static",
        "prune:specvlm@1",
        "prune:specvlm@0.1",
        "self-prune:uniform@1",
        "self-prune:uniform@0.1",
        "self-prune:random@1",
        "self-prune:random@0.1",
        "eagle",
    ]
    assert runs[3] == Run("prune:specvlm", "draft", "static", "specvlm", 0.1) and runs[3].setting == "keep=0.1"
    assert runs[-1].tree == "dynamic" and runs[1].setting == "-"
    assert parse_keep_ratios("1, 0.5,0.5") == (1.0, 0.5) and parse_pruning_methods("specvlm") == ("specvlm",)
    for bad, kw, match in (
        ("bogus", {}, "unknown method 'bogus'"),
        ("prune:nope", {}, "unknown pruning method"),
        ("sd-chain", {"has_draft": False}, "needs a draft model"),
        ("eagle", {}, "needs an EAGLE head"),
        (" , ", {}, "--methods is empty"),
    ):
        with pytest.raises(SpecVLMError, match=match):
            parse_methods(bad, **kw)
    for text in ("0", "1.5", "x"):
        with pytest.raises(SpecVLMError, match="--keep-ratios"):
            parse_keep_ratios(text)


# ---- end to end -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny target / draft / EAGLE head folders and a 2-clip world."""
    from specvlm.drafters.eagle import EagleHead
    from specvlm.inputs.testing import save_tiny_processor
    from specvlm.testbed import generate_world
    from specvlm.tiny import make_model

    root = tmp_path_factory.mktemp("bench")
    target = make_model(FAMILY, hidden=64, layers=2, init=0.3)
    draft = make_model(FAMILY, seed=1, hidden=32, layers=1, init=0.3)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(root / name)
        save_tiny_processor(root / name, FAMILY, model)
    EagleHead.init_for(target, seed=0).save_pretrained(root / "head")
    generate_world(root / "world", n_clips=2, seed=0, frames=(16, 16), size=64)
    return root


# every method kind once; the pruned families each with another pruning method, at two keep ratios
METHODS = (
    "target,hf-assisted,sd-chain,sd-chain-conf,sd-static,sd-dynamic,prune:specvlm,self,self-prune:random,"
    "eagle,eagle-prune:specvlm"
)
KEEP = (1.0, 0.25)
RUNS = [
    "target",
    "hf-assisted",
    "sd-chain",
    "sd-chain-conf",
    "sd-static",
    "sd-dynamic",
    "prune:specvlm@1",
    "prune:specvlm@0.25",
    "self",
    "self-prune:random@1",
    "self-prune:random@0.25",
    "eagle",
    "eagle-prune:specvlm@1",
    "eagle-prune:specvlm@0.25",
]
TREES = {
    "sd-chain": "chain",
    "sd-chain-conf": "chain",
    "sd-dynamic": "dynamic",
    "eagle": "dynamic",
    "eagle-prune:specvlm": "dynamic",
    "sd-static": "static",
    "prune:specvlm": "static",
    "self": "static",
    "self-prune:random": "static",
}


@pytest.fixture(scope="module")
def bench(setup):
    import torch

    out, threads, log = setup / "out", torch.get_num_threads(), io.StringIO()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the test machine is shared
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(io.StringIO()):
        code = main(
            [
                "bench",
                "--dataset",
                f"testbed:{setup / 'world'}",
                "--split",
                "train",
                "--kinds",
                "caption",
                "--limit",
                "2",
                "--target",
                str(setup / "target"),
                "--draft",
                str(setup / "draft"),
                "--head",
                str(setup / "head"),
                "--methods",
                METHODS,
                "--keep-ratios",
                ",".join(map(str, KEEP)),
                "--num-frames",
                "4",
                "--max-new-tokens",
                "6",
                "--num-draft-tokens",
                "3",
                "--warmup",
                "1",
                "--repeats",
                "1",
                "--out",
                str(out),
                "--strict",
            ]
        )
    torch.set_num_threads(threads)
    return code, out, log.getvalue()


def test_runner_writes_every_file(bench):
    code, out, _ = bench
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {
        "results.jsonl",
        "summary.json",
        "summary.md",
        "config.json",
        "pruning_curve.png",
        "speedup.png",
    }
    assert (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_every_output_is_lossless_and_rows_cover_runs_x_samples(bench):
    _, out, _ = bench
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["run"] for r in rows}) == sorted(RUNS) and len(rows) == len(RUNS) * 2
    assert all(r["lossless"] for r in rows)
    for sample in {r["sample"] for r in rows}:
        outputs = {tuple(r["token_ids"]) for r in rows if r["sample"] == sample}
        assert len(outputs) == 1 and len(next(iter(outputs))) == 6
    spec = [r for r in rows if r["method"] not in ("target",)]
    assert all(r["rounds"] >= 1 and r["target_clock"]["calls"] >= 1 for r in spec)
    self_rows = [r for r in rows if r["run"] == "self"]
    assert all(r["draft_clock"]["calls"] == r["draft_forwards"] for r in self_rows)  # one module, two caches


def test_each_method_kind_ran_as_configured(bench):
    """The runs really differ: each kind's draft shape, and pruning that keeps fewer visual tokens at 0.25."""
    _, out, _ = bench
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["method"]: r["tree"] for r in rows if r["method"] not in ("target", "hf-assisted")} == TREES
    for r in rows:
        if r["keep_ratio"] == 0.25:
            assert 0 < r["kept_visual_tokens"] < r["visual_tokens"], r["run"]
        elif r["keep_ratio"] == 1.0:
            assert r["kept_visual_tokens"] == r["visual_tokens"], r["run"]
    chains = [r for r in rows if r["method"] == "sd-chain"]
    assert all(r["drafted"] <= 3 * r["rounds"] for r in chains)  # --num-draft-tokens 3 per round at most
    # the random draft is never 40% sure of a token, so the confidence-threshold chain stops after one every round
    confident = [r for r in rows if r["method"] == "sd-chain-conf"]
    assert confident and all(r["drafted"] == r["rounds"] for r in confident)


def test_kinds_caption_measures_one_caption_per_clip(bench):
    _, out, _ = bench
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted({r["sample"] for r in rows}) == ["clip_00000-00", "clip_00001-00"]
    assert {r["subset"] for r in rows} == {"caption"}
    assert json.loads((out / "config.json").read_text())["kinds"] == ["caption"]


def test_warmup_first_then_methods_rotated_per_sample(bench):
    _, _, log = bench
    lines = log.splitlines()
    assert [line.split(": ")[1] for line in lines if line.startswith("warm-up")] == RUNS
    timed = [line.split()[2].rstrip(":") for line in lines if line.startswith("[")]
    assert timed == RUNS + RUNS[1:] + RUNS[:1]  # sample 2 starts one method later


def test_summary_rows_and_speedups_match_the_same_run(bench):
    _, out, _ = bench
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["run"] for s in summary] == RUNS
    target_wall = {r["sample"]: r["wall_s"] for r in rows if r["method"] == "target"}
    assisted_wall = {r["sample"]: r["wall_s"] for r in rows if r["method"] == "hf-assisted"}
    for s in summary:
        mine = [r for r in rows if r["run"] == s["run"]]
        assert all(r["repeat_wall_s"] == [r["wall_s"]] for r in mine)  # --repeats 1: one round
        ratios = sorted(target_wall[r["sample"]] / r["wall_s"] for r in mine)
        assert s["speedup_wall"] == pytest.approx(sum(ratios) / 2) and s["speedup_wall_range"] == pytest.approx(ratios)
        assert s["lossless"] == s["samples"] == s["speedup_n"] == 2
        if s["run"] != "target":
            vs_hf = sorted(assisted_wall[r["sample"]] / r["wall_s"] for r in mine)
            assert s["vs_hf_assisted_wall_range"] == pytest.approx(vs_hf)
    table = (out / "summary.md").read_text()
    body = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(body) == len(RUNS) and any("| prune:specvlm | keep=0.25 | 2/2 |" in line for line in body)
    assert "ideal = (τ + 1) · t_T / (t_V + k · t_D)" in table
    assert "Ours vs HF assisted generation" in table and "- kinds: caption" in table
    assert markdown_table(summary).count("\n") == len(RUNS) + 1
    assert LEGEND in table


def test_repeats_run_every_method_once_per_round_rotating(setup, tmp_path):
    """--repeats 2: each round runs every method once, the order rotated by one per round (so round r of two
    methods ran side by side); each row keeps every round's times and the summary pairs them."""
    log, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(log), contextlib.redirect_stdout(printed):
        code = main(
            [
                "bench",
                "--dataset",
                f"testbed:{setup / 'world'}",
                "--split",
                "train",
                "--kinds",
                "caption",
                "--limit",
                "1",
                "--target",
                str(setup / "target"),
                "--draft",
                str(setup / "draft"),
                "--methods",
                "target,sd-chain",
                "--num-frames",
                "4",
                "--max-new-tokens",
                "4",
                "--warmup",
                "0",
                "--repeats",
                "2",
                "--threads",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert code == 0
    timed = [line.split()[2].rstrip(":") for line in log.getvalue().splitlines() if line.startswith("[")]
    assert timed == ["target", "sd-chain", "sd-chain", "target"]
    rows = [json.loads(line) for line in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert all(len(r["repeat_wall_s"]) == len(r["repeat_decode_s"]) == 2 for r in rows)
    assert all(r["wall_s"] == min(r["repeat_wall_s"]) for r in rows)  # the median of two rounds: the lower
    sd = json.loads((tmp_path / "o" / "summary.json").read_text())[1]
    target, mine = rows[0]["repeat_wall_s"], rows[1]["repeat_wall_s"]
    assert sd["speedup_n"] == 2 and sd["speedup_wall_range"] == pytest.approx(
        sorted(t / m for t, m in zip(target, mine))
    )
    assert printed.getvalue().rstrip().endswith(LEGEND)  # the printed table comes with its legend


def _fails(capsys, argv, match):
    code = main(argv + ["--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("specvlm: error: ") and match in err, err
    return err


def test_bad_arguments_are_one_line_errors(setup, capsys, tmp_path):
    world, target, draft = f"testbed:{setup / 'world'}", str(setup / "target"), str(setup / "draft")
    base = ["bench", "--dataset", world, "--split", "train", "--target", target, "--out", str(tmp_path / "o")]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    _fails(capsys, base[:-2] + ["--out", str(tmp_path / "full")], "exists and is not empty; pass --force")
    _fails(capsys, base + ["--keep-ratios", "0.5,2"], "--keep-ratios: 2 is not in (0, 1]")
    _fails(capsys, base + ["--methods", "target,warp"], "unknown method 'warp'")
    _fails(capsys, base + ["--methods", "sd-static"], "needs a draft model: give --draft")
    view = ["--draft", draft, "--draft-num-frames", "2"]
    _fails(capsys, base + view + ["--methods", "target,hf-assisted"], "which hf-assisted cannot take")
    _fails(capsys, base + view[:2] + ["--draft-num-frames", "0"], "--draft-num-frames must be >= 1")
    _fails(capsys, base + ["--pruning-methods", "fancy"], "unknown pruning method 'fancy'")
    _fails(capsys, base + ["--limit", "0"], "--limit must be >= 1")
    _fails(capsys, base + ["--kinds", "caption,colour"], "--kinds: unknown kind 'colour'; known: caption, color")
    _fails(capsys, base + ["--kinds", " , "], "--kinds is empty")
    _fails(
        capsys,
        ["bench", "--dataset", world, "--kinds", "caption,color", "--target", target, "--out", str(tmp_path / "o")],
        "no samples selected of kind caption, color",
    )  # empty test split
    _fails(capsys, base + ["--max-new-tokens", "0"], "--max-new-tokens must be >= 1")
    _fails(
        capsys,
        ["bench", "--dataset", "world", "--target", target, "--out", str(tmp_path / "o")],
        "--dataset must be NAME:ROOT",
    )
    _fails(
        capsys,
        ["bench", "--dataset", f"vdc:{tmp_path}", "--split", "x", "--target", target, "--out", str(tmp_path / "o")],
        "--split does not apply",
    )
    _fails(
        capsys,
        [
            "bench",
            "--dataset",
            f"vdc:{tmp_path}",
            "--kinds",
            "caption",
            "--target",
            target,
            "--out",
            str(tmp_path / "o"),
        ],
        "--kinds does not apply to the vdc dataset",
    )
    _fails(
        capsys,
        ["bench", "--dataset", f"testbed:{setup / 'world'}", "--target", target, "--out", str(tmp_path / "o")],
        "no samples selected",
    )
    _fails(
        capsys,
        base[:-4]
        + ["--target", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--methods", "target", "--limit", "1"],
        "does not exist",
    )
    _fails(
        capsys,
        base + ["--draft", target, "--head", draft, "--methods", "eagle", "--limit", "1"],
        "not an EagleHead folder",
    )
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_frame_folder_becomes_a_video(setup, tmp_path):
    """MVBench's frame-folder task: sorted images, sampled uniformly, fps from the folder name."""
    import numpy as np
    from PIL import Image

    from specvlm.bench.runner import load_frame_folder, sample_inputs
    from specvlm.inputs import load_processor

    folder = tmp_path / "frames_fps3_hq" / "ep0"
    folder.mkdir(parents=True)
    for k in range(6):
        Image.fromarray(np.full((56, 56, 3), 40 * k, np.uint8)).save(folder / f"{k:05d}.png")
    video = load_frame_folder(folder, 3)
    assert video.indices == [0, 2, 4] and video.fps == 3.0 and video.frames.shape == (3, 56, 56, 3)
    assert int(video.frames[1].mean()) == 80
    processor = load_processor(setup / "target")
    inputs, draft_inputs = sample_inputs({"video": str(folder), "question": "What happens?"}, processor, processor, 4)
    assert draft_inputs is None and inputs["pixel_values_videos"].shape[0] > 0
    # --draft-num-frames: the draft's own, sparser view of the same folder (2 frames: one Qwen temporal patch)
    _, view = sample_inputs({"video": str(folder), "question": "What happens?"}, processor, processor, 4, 2)
    assert view["video_grid_thw"][0, 0] * 2 == inputs["video_grid_thw"][0, 0]


def test_out_folder_needs_force(tmp_path):
    from specvlm.bench.runner import prepare_out

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.jsonl").write_text("old")
    (tmp_path / "o" / "mine.txt").write_text("keep")
    with pytest.raises(SpecVLMError, match="--force"):
        prepare_out(tmp_path / "o", force=False)
    prepare_out(tmp_path / "o", force=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["mine.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecVLMError, match="is a file"):
        prepare_out(tmp_path / "file", force=True)
    assert prepare_out(tmp_path / "new" / "deep", force=False).is_dir()
