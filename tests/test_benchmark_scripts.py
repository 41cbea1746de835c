"""The benchmark scripts that need hardware or time we do not have in the suite run here at toy sizes, so they
cannot rot: the GPU preset at tiny shapes on the CPU, the testbed fast-path comparison on one clip, the testbed
findings on a 20-clip world."""

from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))


@pytest.mark.slow
def test_gpu_preset_runs_at_tiny_shapes(tmp_path):
    import bench_gpu_preset

    out = tmp_path / "preset.json"
    results = bench_gpu_preset.main(
        [
            "--shape",
            "tiny",
            "--prompt-tokens",
            "300",
            "--max-new-tokens",
            "24",
            "--repeats",
            "1",
            "--tau",
            "3",
            "--batches",
            "1,3",
            "--json",
            str(out),
        ]
    )
    rows = results["rows"]
    (batched,) = results["batches"]
    assert batched["batch"] == 3 and batched["rows_equal_hf_eager"] == 3 and len(batched["walls"]) == 3
    assert out.is_file() and len(rows) == 4 and all(row["lossless"] == "identical" for row in rows.values())
    assert abs(results["calibration_tau"] - 3) < 1  # the bisection reached the asked-for agreement
    ours = [row for name, row in rows.items() if name.startswith("ours")]
    assert all(row["tau"] > 1 and 0 < row["efficiency"] <= 1 for row in ours)


@pytest.mark.slow
@pytest.mark.xdist_group(name="tensor_parallel")  # two more processes: beside the other torchrun jobs, not at once
def test_tensor_parallel_preset_runs_at_tiny_shape_on_one_and_two_ranks():
    """bench_tensor_parallel.py, the preset for a 72B target over several GPUs, at its tiny shape on CPU processes:
    ours equals HF's greedy tokens under the same split, and the collectives are measured where there are some."""
    import bench_tensor_parallel

    options = ["--shape", "tiny", "--ranks", "1,2", "--repeats", "1", "--inner", "1", "--tau", "3"]
    runs = bench_tensor_parallel.main([*options, "--prompt-tokens", "128", "--max-new-tokens", "12"])
    (one,), (two,) = runs[1], runs[2]
    assert one["identical"] and two["identical"] and two["ranks"] == 2
    assert one["all_reduce_ms"] == 0 < two["all_reduce_ms"] and two["broadcast_ms"] > 0
    assert all(run["tau"] > 1 for run in (one, two))
    assert one["alpha"] == two["alpha"] and one["tokens"] == two["tokens"]  # the same saved weights in both layouts


def test_calibration_scales_only_the_deep_layers():
    import bench_gpu_preset
    import torch

    target, draft = bench_gpu_preset.build_pair("tiny", 2, "cpu", torch.float32)
    layers = target.model.language_model.layers
    assert draft.model.language_model.layers[1] is layers[1] and draft.lm_head is target.lm_head
    before = [layer.mlp.down_proj.weight.clone() for layer in layers]
    originals = {}
    bench_gpu_preset.scale_deep_layers(target, 2, 0.0, originals)
    assert torch.equal(layers[1].mlp.down_proj.weight, before[1]) and not layers[2].mlp.down_proj.weight.any()
    bench_gpu_preset.scale_deep_layers(target, 2, 1.0, originals)
    assert all(torch.equal(layer.mlp.down_proj.weight, b) for layer, b in zip(layers, before))
    # at alpha 0 the target is its first two layers: the draft agrees on everything
    from specvlm import SpeculativeGenerator

    bench_gpu_preset.scale_deep_layers(target, 2, 0.0, originals)
    inputs = bench_gpu_preset.video_inputs(target, 200, "cpu")
    out = SpeculativeGenerator(target, draft, tree="chain", num_draft_tokens=4).generate(
        **inputs, do_sample=False, max_new_tokens=17
    )
    assert out.stats.accepted_tokens == out.stats.drafted_tokens == 13 and out.stats.rounds == 4


@pytest.mark.slow
def test_testbed_fast_path_comparison_runs(capsys):
    import bench_fast

    bench_fast.main(
        [
            "--clips",
            "1",
            "--repeats",
            "1",
            "--max-new-tokens",
            "6",
            "--no-compile",
            "--threads",
            "1",
            "--methods",
            "target.generate,chain: ours fast,chain: ours eager",
        ]
    )
    out = capsys.readouterr().out
    assert "| chain: ours fast |" in out and "NO" not in out and "efficiency" in out


@pytest.mark.slow
def test_gpu_check_runs_the_lossless_matrix_on_cpu(tmp_path):
    import json

    import gpu_check

    out = tmp_path / "check.json"
    rows = gpu_check.main(["--device", "cpu", "--quick", "--tokens", "10", "--json", str(out)])
    assert len(rows) == 64 and json.loads(out.read_text())["rows"] == rows
    assert {r["engine"] for r in rows} == {"fast", "eager"} and {r["drafter"] for r in rows} == {
        "small",
        "self",
        "head",
    }
    assert all(r["result"] == "identical" for r in rows), [r for r in rows if r["result"] != "identical"]


@pytest.mark.slow
def test_gpu_check_runs_the_testbed_pairs_from_the_shipped_frames():
    import gpu_check

    rows = gpu_check.run_testbed("cpu", ["float32"], 4)
    assert [(r["family"], r["clip"]) for r in rows] == [
        (f, c) for f in ("qwen2_5_vl", "llava_onevision") for c in ("clip_00009", "clip_00019", "clip_00029")
    ]
    assert all(r["result"] == "identical" for r in rows)


@pytest.mark.slow
def test_serve_benchmark_runs(capsys):
    import bench_serve

    results = bench_serve.main(
        [
            "--clients",
            "1,2",
            "--requests",
            "1",
            "--rounds",
            "1",
            "--max-tokens",
            "4",
            "--configs",
            "speculative,target-only,speculative-batch1",
        ]
    )
    assert results["lossless"] is True
    assert [(row["name"], row["clients"]) for row in results["rows"]] == [
        (name, clients) for clients in (1, 2) for name in ("speculative", "target-only", "speculative-batch1")
    ]
    assert all(
        row["requests"] == row["clients"] and row["consistent"] and row["tokens_per_s"] > 0 for row in results["rows"]
    )
    assert "| speculative | 2 |" in capsys.readouterr().out


@pytest.mark.slow
def test_serve_soak_runs_briefly(capsys):
    import soak_serve

    result = soak_serve.main(
        ["--duration", "2", "--clients", "4", "--max-tokens", "4", "--sample-s", "1", "--threads", "1"]
    )
    assert result["ok"], result["checks"]
    statuses = result["out"]["tally"].statuses
    assert all(statuses[kind][expected] >= 1 for kind, expected in soak_serve.EXPECTED.items())  # each kind once
    assert result["mismatches"] == 0 and result["memory"]["max"] > 0
    assert "| image bomb | 400 |" in capsys.readouterr().out


def test_testbed_overlap_measures_the_world():
    import testbed_overlap

    result = testbed_overlap.main(["--clips", "3"])
    for shares in result.values():
        assert 0 < shares["tokens_labelled_min_cover"] <= shares["tokens_overlapping_an_object"] < 0.5


@pytest.mark.slow
def test_testbed_reads_video_runs_both_stages(tmp_path):
    import testbed_reads_video

    argv = ["--out", str(tmp_path), "--clips", "40", "--frames", "2", "--vision-steps", "1", "--every", "1"]
    body = testbed_reads_video.main([*argv, "--large-steps", "1", "--steps", "1"])
    assert "| large balls | 1 |" in body and "| (small-ball validation) | 0 |" in body and "| small balls | 1 |" in body
    argv[1] = str(tmp_path / "other")
    more = ["--large-steps", "0", "--steps", "1", "--text-steps", "1", "--align", "caption", "--mix", "0.5"]
    body = testbed_reads_video.main([*argv, *more, "--ball", "medium"])
    assert "| text | 1 |" in body and "| medium balls | 1 |" in body and "large" not in body
    argv[1] = str(tmp_path / "dense")
    more = ["--large-steps", "0", "--dense-steps", "1", "--dense-mix", "0.5", "--steps", "1", "--layout", "shared"]
    more += ["--dense-mix-kinds", "colors", "--last-lr", "1e-3", "--kinds", "colors,count", "--eval-questions", "2"]
    body = testbed_reads_video.main([*argv, *more, "--init-seed", "1", "--every-colours", "--dense-one-colour"])
    assert "| dense small balls (keep 0.1) | 1 |" in body and "| small balls | 1 |" in body and "count" in body
    assert '("colors" with every answer)' in body
    assert "colors +" in body or "colors -" in body  # the gap by kind, two kinds asked
    argv[1] = str(tmp_path / "caption")
    more = ["--large-steps", "0", "--dense-steps", "1", "--steps", "1", "--layout", "shared", "--kinds"]
    body = testbed_reads_video.main([*argv, *more, "colors,caption", "--dense-one-colour-captions"])
    assert "caption colours" in body and "caption first colours" in body
    argv[1] = str(tmp_path / "one-ball")
    body = testbed_reads_video.main([*argv, *more, "region,caption", "--dense-one-ball", "--texture", "position"])
    assert "| small balls | 1 |" in body
    argv[1] = str(tmp_path / "captions")  # captions alone: no question, no accuracy
    body = testbed_reads_video.main([*argv, *more, "caption", "--dense-one-colour-captions"])
    assert "| dense small balls (keep 0.1) | 1 |" in body and "caption first colours" in body


def test_one_ball_keeps_the_clips_of_one_ball_with_their_questions():
    import testbed_reads_video

    from specvlm.testbed.train import Clip

    def clip(name, caption):
        turns = [("Describe.", caption, None, "caption"), ("Where is the red ball?", "Top.", "top", "region")]
        return Clip(name, "", {}, 1, turns)

    one = clip("one", "There is one ball. The red ball starts at the top.")
    two = clip("two", "There are two balls. The red ball ... The blue ball ...")
    kept = testbed_reads_video.one_colour_turns([one, two], ("region",), one_ball=True)
    assert [c.id for c in kept] == ["one"] and kept[0].turns == one.turns[1:]
    assert [c.id for c in testbed_reads_video.one_colour_turns([one, two], ("region",))] == ["one", "two"]


@pytest.mark.slow
def test_testbed_recipe_trials_build_and_judge_a_variant(tmp_path):
    import testbed_recipe_trials

    body = testbed_recipe_trials.main(["--tiny", "--variants", "v5,v10", "--out", str(tmp_path), "--fp32"])
    for variant in ("v5", "v10"):  # the large-ball warm-up, the dense one
        row = next(line for line in body.splitlines() if line.startswith(f"| {variant} (fp32) |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "6" and cells[2].endswith("%")  # miniature()'s steps; the tower's read-out
        gaps = [cells[i] for i in ((4, 6, 7) if variant == "v5" else (4, 5, 6, 7))]  # v5's warm-up: large
        gaps += cells[8].split(" / ")  # the captions' colour words at the end: every mention, the first ones
        assert len(gaps) == (5 if variant == "v5" else 6) and all(c[0] in "+-" for c in gaps)  # every turn, "which
        #                                                                colours", after the warm-up and at the end
    with pytest.raises(SystemExit, match="unknown variant 'v99'"):
        testbed_recipe_trials.main(["--variants", "v99"])


def test_the_latest_recipe_trial_is_the_recipe_and_the_one_before_it_the_first_bundles():
    """Each trial names its recipe against `UNTIL_V16`: v17 must be today's `Recipe()` for Qwen2.5-VL (the bundle's
    Qwen pair; LLaVA-OneVision's stays on plain), v16 the first world-3 bundle's (both families on plain), so their
    rows in BENCHMARKS stay reproducible."""
    from dataclasses import replace

    import testbed_recipe_trials as trials

    from specvlm.testbed.recipe import Recipe

    def variant(name):
        return replace(replace(Recipe(), **trials.UNTIL_V16, **trials.UNTIL_V16_STEPS), **trials.VARIANTS[name][0])

    latest, plain = variant("v17"), {"qwen2_5_vl": "plain", "llava_onevision": "plain"}
    assert latest.texture("qwen2_5_vl") == Recipe().texture("qwen2_5_vl") == "position"
    assert replace(latest, textures=Recipe().textures) == Recipe()
    assert variant("v16") == replace(Recipe(), textures=plain) != Recipe()


@pytest.mark.slow
def test_testbed_findings_run_on_a_small_world(tmp_path):
    import bench_testbed

    body = bench_testbed.main(
        [
            "--family",
            "qwen2_5_vl",
            "--world",
            str(tmp_path / "world"),
            "--world-clips",
            "20",
            "--clips",
            "1",
            "--keep-ratios",
            "0.1",
            "--max-new-tokens",
            "8",
            "--cost-tokens",
            "2",
            "--repeats",
            "1",
            "--questions-per-clip",
            "3",
            "--no-compile",
            "--unseen-clips",
            "10",
        ]
    )
    assert "| all |" in body and "| random | 0.01 |" in body and "ratio" in body
    assert body.count("**Issue 23's goals**") == 2 and "an unseen world (seed 1)" in body  # both worlds
    assert "| SpecVLM 0.1 ≥ random 0.1 + 0.3 |" in body and "ball tokens in the top 10 %" in body
    tau_rows = [line for line in body.splitlines() if line.startswith(("| none", "| specvlm", "| random"))]
    assert tau_rows and all(line.rstrip(" |").endswith("1/1") for line in tau_rows)  # every output lossless


@pytest.mark.slow
def test_draft_views_benchmark_runs(capsys):
    import bench_draft_views

    bench_draft_views.main(["--repeats", "1", "--max-new-tokens", "8", "--no-compile", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| other-family draft, all frames |" in out and "| same-family draft, 2 frames |" in out
    tau = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.splitlines() if "draft," in line}
    # the same draft under permuted ids, bridged through text, proposes exactly what it proposed before
    assert tau["other-family draft, own vocabulary (ids permuted)"] == tau["other-family draft, all frames"]


@pytest.mark.slow
def test_eagle_benchmark_compares_eagle2_and_eagle3_heads(tmp_path, capsys):
    import bench_eagle

    from specvlm.testbed import generate_world

    generate_world(tmp_path / "world", 10, seed=0, frames=(16, 20), size=64)  # clip 9 is the test split's
    argv = ["--tiny", "qwen2_5_vl", "--world", str(tmp_path / "world"), "--modes", "none,eagle3", "--steps", "0,2"]
    bench_eagle.main([*argv, "--eval", "1", "--max-new-tokens", "6", "--small-tree", "", "--ttt-steps", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split("|") for line in lines if line.startswith(("| none |", "| eagle3 |"))]
    rows = [cells for cells in rows if len(cells) == len(bench_eagle.HEADERS) + 2]  # the results table's rows
    assert {cells[1].strip() for cells in rows} == {"none", "eagle3"}
    assert all(cells[12].strip() == "yes" for cells in rows)  # every output equal to target.generate


def test_gpu_session_script_parses_and_refuses_an_unknown_step(tmp_path):
    """benchmarks/gpu_session.sh runs where no test can (a GPU machine); here: bash reads it whole, and a misspelt
    step is one line and exit 2 before any step runs."""
    import subprocess
    import sys

    script = BENCHMARKS / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "STEPS": "preset chek", "PY": sys.executable},
        capture_output=True,
        text=True,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_session.sh: unknown step chek (check, preset, batched, draft-kv)"
    assert done.stdout == "" and not any(tmp_path.iterdir())


def test_testbed_tau_ceiling_tables_a_small_world(tmp_path):
    import testbed_tau_ceiling

    body = testbed_tau_ceiling.main(["--world", str(tmp_path / "world"), "--clips", "20"])
    caption = next(line for line in body.splitlines() if line.startswith("| caption |"))
    cells = [c.strip() for c in caption.strip("|").split("|")]
    assert cells[1] == "2" and all(c.endswith("%") for c in cells[3:8])  # 20 clips: 2 validation captions
    ceilings = [float(c) for c in cells[8:]]
    assert all(c >= 1.0 for c in ceilings) and ceilings[0] <= ceilings[1] <= ceilings[2]  # reading more, more room
