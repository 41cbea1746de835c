"""One command that checks losslessness on a device: the lossless matrix on tiny models of the real HF classes in
float32, and the bundled testbed pairs in float32 and bfloat16, each output compared with `target.generate`'s and
every difference diagnosed (`specvlm.numerics`: a near-tie at the dtype's rounding, or a bug).

    python benchmarks/gpu_check.py [--device cuda] [--json OUT] [--record]      # ≤ 5 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --quick                          # what the test suite runs

Matrix: 4 families × {image, video} × drafters {small draft model, "self", EagleHead} × trees {chain, static,
dynamic} × pruning {none, specvlm} (EagleHead: none) on the fast engine, plus the eager engine on the trees with
no pruning; compiled steps (`--compile`, default auto = on CUDA) for one chain per family. Testbed: the bundled
pair of each family on its 3 sample clips with the demo's settings (static tree, SpecVLM pruning 0.1), in float32
and bfloat16. No PyAV needed on the device: the clips' sampled frames ship in data/testbed_clips.npz (0.4 MB,
written by `--write-clips` where PyAV is installed) and go through the same processors and input checks as
`specvlm generate` (`specvlm.inputs.pipeline.media_inputs`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen2_vl", "llava_next_video")


def matrix_cases(quick: bool):
    for family in FAMILIES if not quick else FAMILIES[:2]:
        for kind in ("image", "video"):
            for drafter in ("small", "self", "head"):
                for tree in ("chain", "static", "dynamic") if not quick else ("chain", "dynamic"):
                    for pruning in ("none", "specvlm") if drafter != "head" else ("none",):
                        yield dict(family=family, kind=kind, drafter=drafter, tree=tree, pruning=pruning, engine="fast")
                    yield dict(family=family, kind=kind, drafter=drafter, tree=tree, pruning="none", engine="eager")


def run_matrix(device: str, quick: bool, compile: bool, tokens: int) -> list[dict]:
    from specvlm import EagleHead, SpeculativeGenerator
    from specvlm.tiny import make_inputs, make_model

    rows, models = [], {}

    def get(family):
        if family not in models:
            target = make_model(family).to(device)
            models[family] = dict(
                target=target,
                small=make_model(family, seed=1, hidden=32, layers=1).to(device),
                self="self",
                head=EagleHead.init_for(target, seed=0),
            )
        return models[family]

    cases = list(matrix_cases(quick))
    cases += (
        [
            dict(family=f, kind="video", drafter="self", tree="chain", pruning="none", engine="fast compiled")
            for f in (FAMILIES[:2] if quick else FAMILIES)
        ]
        if compile
        else []
    )
    for case in cases:
        m = get(case["family"])
        inputs = {k: v.to(device) for k, v in make_inputs(case["family"], case["kind"]).items()}
        options = dict(do_sample=False, max_new_tokens=tokens)
        reference = m["target"].generate(**inputs, **options)[0, inputs["input_ids"].shape[1] :].tolist()
        engine = "fast" if case["engine"].startswith("fast") else "eager"
        gen = SpeculativeGenerator(
            m["target"],
            m[case["drafter"]],
            tree=case["tree"],
            num_draft_tokens=4,
            pruning=case["pruning"],
            engine=engine,
            compile=case["engine"] == "fast compiled",
        )
        started = time.perf_counter()
        out = gen.generate(**inputs, **options)
        row = dict(case, dtype="float32", seconds=time.perf_counter() - started, tau=out.stats.mean_accepted_tokens)
        rows.append(progress(with_verdict(row, m["target"], inputs, out.token_ids, reference, options)))
    return rows


CLIPS = Path(__file__).parent / "data" / "testbed_clips.npz"  # the sample clips' sampled frames (--write-clips)


def write_clips() -> None:
    """Decodes the bundled caption clips (PyAV, here) into CLIPS, so that the device needs no video decoder."""
    from specvlm.inputs.pipeline import DEFAULT_NUM_FRAMES
    from specvlm.inputs.processor import load_processor
    from specvlm.inputs.video import load_video, sampler
    from specvlm.testbed.assets import bundled_pair, sample_clips

    sample_frames = load_processor(bundled_pair("qwen2_5_vl")[0]).video_processor.sample_frames
    arrays = {}
    for sample in sample_clips(kind="caption"):
        video = load_video(sample["video"], sample_indices_fn=sampler(DEFAULT_NUM_FRAMES, None, sample_frames))
        name = Path(video.path).stem
        arrays.update(
            {
                f"{name}.frames": video.frames,
                f"{name}.indices": np.array(video.indices),
                f"{name}.timestamps": np.array(video.timestamps),
                f"{name}.meta": np.array([video.fps, video.total_frames]),
            }
        )
    CLIPS.parent.mkdir(exist_ok=True)
    np.savez_compressed(CLIPS, **arrays)


def shipped_clips() -> dict:
    """{clip name: Video} from CLIPS (the same frames both bundled families sample from the mp4s)."""
    from specvlm.inputs.video import Video

    data = np.load(CLIPS)
    names = sorted({key.split(".")[0] for key in data.files})
    return {
        name: Video(
            data[f"{name}.frames"],
            data[f"{name}.indices"].tolist(),
            data[f"{name}.timestamps"].tolist(),
            float(data[f"{name}.meta"][0]),
            int(data[f"{name}.meta"][1]),
            f"{name}.mp4",
        )
        for name in names
    }


def run_testbed(device: str, dtypes: list[str], tokens: int) -> list[dict]:
    from transformers import AutoModelForImageTextToText

    from specvlm import SpeculativeGenerator
    from specvlm.inputs.pipeline import media_inputs
    from specvlm.inputs.processor import load_processor
    from specvlm.testbed.assets import bundled_pair, sample_clips

    clips = shipped_clips()
    rows = []
    for family in ("qwen2_5_vl", "llava_onevision"):
        target_dir, draft_dir = bundled_pair(family)
        processor = load_processor(target_dir)
        for dtype in dtypes:
            load = (
                lambda d, dtype=dtype: AutoModelForImageTextToText.from_pretrained(d, dtype=getattr(torch, dtype))
                .to(device)
                .eval()
            )
            target, draft = load(target_dir), load(draft_dir)
            gen = SpeculativeGenerator(target, draft, tree="static", pruning="specvlm", visual_keep_ratio=0.1)
            for sample in sample_clips(kind="caption"):
                clip = Path(sample["video"]).stem
                inputs = media_inputs(
                    processor,
                    sample["question"],
                    [],
                    clips[clip],
                    target_dir,
                    target.config,
                    draft_dir,
                    draft.config,
                    max_new_tokens=tokens,
                )
                inputs = _to(inputs, device, getattr(torch, dtype))
                plain = {k: v for k, v in inputs.items() if k != "draft_inputs"}
                options = dict(do_sample=False, max_new_tokens=tokens)
                reference = target.generate(**plain, **options)[0, plain["input_ids"].shape[1] :].tolist()
                started = time.perf_counter()
                out = gen.generate(**inputs, **options)
                row = dict(
                    family=family,
                    kind="testbed",
                    drafter="draft",
                    tree="static",
                    pruning="specvlm",
                    engine="fast",
                    dtype=dtype,
                    clip=clip,
                    seconds=time.perf_counter() - started,
                    tau=out.stats.mean_accepted_tokens,
                )
                rows.append(progress(with_verdict(row, target, plain, out.token_ids, reference, options)))
    return rows


def progress(row: dict) -> dict:
    """Prints the case's verdict as it comes (a run stopped by a time limit still tells what it saw)."""
    case = " ".join(str(row[k]) for k in ("family", "kind", "drafter", "tree", "pruning", "engine", "dtype"))
    where = "" if row["position"] < 0 else f" at {row['position']}"
    print(f"{case}: {row['result']}{where} ({row['seconds']:.2f}s, τ {row['tau']:.2f})", flush=True)
    return row


def with_verdict(row: dict, target, inputs, ours, reference, options) -> dict:
    from specvlm.numerics import diagnose

    d = diagnose(target, inputs, ours, reference, **{k: v for k, v in options.items() if k != "do_sample"})
    return dict(row, result=d.kind, position=d.position, gap=d.gap, tolerance=d.tolerance)


def _to(inputs: dict, device: str, dtype: torch.dtype) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, dict):
            out[k] = _to(v, device, dtype)
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(device, dtype) if v.is_floating_point() else v.to(device)
        else:
            out[k] = v
    return out


def summary(rows: list[dict]) -> str:
    done = [r for r in rows if "result" in r]
    counts = {k: sum(r["result"] == k for r in done) for k in ("identical", "near-tie", "bug")}
    by_dtype = {}
    for r in done:
        by_dtype.setdefault(r["dtype"], []).append(r["result"] == "identical")
    rates = ", ".join(f"{d}: {sum(v)}/{len(v)} identical" for d, v in by_dtype.items())
    return (
        f"{len(done)} outputs: {counts['identical']} identical to target.generate, {counts['near-tie']} "
        f"near-ties, {counts['bug']} bugs ({rates})"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="two families, two trees, no testbed (the test suite's run)")
    ap.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per matrix case")
    ap.add_argument("--testbed-tokens", type=int, default=64)
    ap.add_argument("--json", default=None, metavar="OUT")
    ap.add_argument("--record", action="store_true", help="write the table into docs/BENCHMARKS.md")
    ap.add_argument("--write-clips", action="store_true", help=f"decode the sample clips into {CLIPS.name} and exit")
    args = ap.parse_args(argv)
    if args.write_clips:
        write_clips()
        return []
    torch.set_grad_enabled(False)
    compile = args.device.startswith("cuda") if args.compile == "auto" else args.compile == "on"
    started = time.perf_counter()
    rows = run_matrix(args.device, args.quick, compile, args.tokens)
    if not args.quick:
        rows += run_testbed(args.device, ["float32", "bfloat16"], args.testbed_tokens)
    line = summary(rows)
    table = format_table(rows)
    print(table)
    print(line)
    print(f"total {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, summary=line, device=args.device), f, indent=1)
    if args.record:
        from common import record

        record(
            f"lossless-check-{args.device.split(':')[0]}",
            f"Lossless check on {args.device}",
            f"{line}\n\n{grouped_table(rows)}\n\n{differences(rows)}",
        )
    return rows


def differences(rows: list[dict]) -> str:
    different = [r for r in rows if r.get("result", "identical") != "identical"]
    return f"Every difference:\n\n{format_table(different)}" if different else "No output differs."


def grouped_table(rows: list[dict]) -> str:
    """Counts per family, input, drafter and dtype (every tree, pruning and engine of the group together)."""
    from common import table

    groups: dict[tuple, list[str]] = {}
    for r in rows:
        if "result" in r:
            groups.setdefault((r["family"], r["kind"], r["drafter"], r["dtype"]), []).append(r["result"])
    body = [
        [*key, len(results), *(sum(x == k for x in results) for k in ("identical", "near-tie", "bug"))]
        for key, results in groups.items()
    ]
    return table(["family", "input", "drafter", "dtype", "cases", "identical", "near-tie", "bug"], body)


def format_table(rows: list[dict]) -> str:
    from common import table

    body = []
    for r in rows:
        if "result" not in r:
            body.append([r.get("family", "-"), r.get("note", ""), "", "", "", "", "", "", "", ""])
            continue
        body.append(
            [
                r["family"],
                r["kind"] + (f" {r['clip']}" if "clip" in r else ""),
                r["drafter"],
                r["tree"],
                r["pruning"],
                r["engine"],
                r["dtype"],
                f"{r['tau']:.2f}",
                r["result"],
                "-" if r["position"] < 0 else f"{r['position']} (gap {r['gap']:.3g} vs {r['tolerance']:.3g})",
            ]
        )
    return table(
        [
            "family",
            "input",
            "drafter",
            "tree",
            "pruning",
            "engine",
            "dtype",
            "τ",
            "vs target.generate",
            "first difference",
        ],
        body,
    )


if __name__ == "__main__":
    main()
