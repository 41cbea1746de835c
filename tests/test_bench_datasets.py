"""Benchmark loaders on miniature copies of each benchmark's published local layout (tiny mp4s, PNGs, JSON), built
in tmp dirs; bad layouts give one-line DatasetErrors."""

import json

import numpy as np
import pytest
from PIL import Image

from specvlm.bench.datasets import (
    DESCRIBE_PROMPT,
    EXPLAIN_PROMPT,
    MC_PROMPT,
    DatasetError,
    load_dataset,
    load_llava_bench,
    load_longvideobench,
    load_mlvu,
    load_mmmu,
    load_mvbench,
    load_testbed,
    load_video_detail_caption,
    read_rows,
    shards,
)
from specvlm.errors import SpecVLMError
from specvlm.inputs.testing import index_frames, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """One tiny mp4, copied wherever a layout needs a video."""
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", index_frames(4, 32, 32), fps=4).read_bytes()


def _video(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _json(path, data, lines=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in data) if lines else json.dumps(data))
    return path


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(path)
    return path


def _error(fn, *args, match=None, **kw):
    with pytest.raises(DatasetError, match=match) as info:
        fn(*args, **kw)
    assert "\n" not in str(info.value) and isinstance(info.value, SpecVLMError)
    return str(info.value)


# ---- VideoDetailCaption ---------------------------------------------------------------------------------------------
@pytest.fixture
def vdc(tmp_path, clip):
    root = tmp_path / "VideoDetailCaption"
    rows = [{"video_name": f"v_{i}", "question": f"Describe video {i}.", "answer": f"caption {i}"} for i in range(6)]
    _json(root / "test.jsonl", rows, lines=True)
    for i in range(5):  # v_5 is missing on disk
        _video(root / "Test_Videos" / (f"v_{i}.mp4" if i != 3 else "v_3.MP4"), clip)
    return root


def test_vdc_records_and_prompts(vdc):
    recs = load_video_detail_caption(vdc, missing="skip")
    assert [r["id"] for r in recs] == [f"v_{i}" for i in range(5)]
    assert recs[0]["question"] == "Describe video 0." and recs[0]["reference"] == "caption 0"
    assert recs[3]["video"].endswith("Test_Videos/v_3.MP4")  # other extensions are found
    assert recs[0]["dataset"] == "videodetailcaption" and recs[0]["meta"]["video_name"] == "v_0"
    described = load_video_detail_caption(vdc, prompt="describe", missing="skip")
    assert {r["question"] for r in described} == {DESCRIBE_PROMPT}


def test_vdc_paper_sampling_is_hf_shuffle_then_skip_missing(vdc):
    order = np.random.default_rng(42).permutation(6)  # datasets.Dataset.shuffle(seed=42)
    recs = load_dataset("VideoDetailCaption", vdc, paper=True)  # limit 100, missing videos skipped
    assert [r["id"] for r in recs] == [f"v_{i}" for i in order if i != 5]
    assert [r["id"] for r in load_dataset("vdc", vdc, paper=True, limit=2)] == [f"v_{i}" for i in order[:2] if i != 5]


def test_vdc_errors(vdc, tmp_path):
    assert "v_5" in _error(load_video_detail_caption, vdc, match="does not exist")  # missing="error" default
    (vdc / "Test_Videos").rename(vdc / "elsewhere")
    _error(load_video_detail_caption, vdc, match="no Test_Videos folder")
    assert len(load_video_detail_caption(vdc, video_dir=vdc / "elsewhere", missing="skip")) == 5
    _error(load_video_detail_caption, tmp_path / "nowhere", match="does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    _error(load_video_detail_caption, empty, match="no annotation file")
    _error(load_video_detail_caption, vdc, prompt="explain", match="prompt must be one of")


def test_vdc_parquet_needs_pyarrow_or_json(tmp_path):
    root = tmp_path / "vdc"
    (root / "Test_Videos").mkdir(parents=True)
    (root / "test-00000-of-00001.parquet").write_bytes(b"PAR1 not really")
    try:
        import pyarrow  # noqa: F401

        _error(load_video_detail_caption, root, match="cannot read parquet")
    except ImportError:
        _error(load_video_detail_caption, root, match="pyarrow")


# ---- MVBench --------------------------------------------------------------------------------------------------------
@pytest.fixture
def mvbench(tmp_path, clip):
    root = tmp_path / "MVBench"
    for task in ("action_sequence", "action_prediction"):
        rows = [
            {
                "video": f"{task}_{i}.mp4",
                "question": f"What happened {i}?",
                "candidates": ["sat down", "stood up", "ran"],
                "answer": "stood up",
                "start": 1.0,
                "end": 3.5,
            }
            for i in range(4)
        ]
        _json(root / "json" / f"{task}.json", rows)
        for i in range(4):
            _video(root / "video" / "star" / "Charades_v1_480" / f"{task}_{i}.mp4", clip)
    _json(
        root / "json" / "episodic_reasoning.json",
        [{"video": "ep0", "question": "Why?", "candidates": ["a", "b"], "answer": "b", "start": 0, "end": 2}],
    )
    for k in range(3):
        _png(root / "video" / "tvqa" / "frames_fps3_hq" / "ep0" / f"{k:05d}.png", k * 40)
    return root


def test_mvbench_default_tasks_describe_prompt(mvbench):
    recs = load_mvbench(mvbench)
    assert [r["subset"] for r in recs] == ["action_sequence"] * 4 + ["action_prediction"] * 4
    assert all(r["question"] == DESCRIBE_PROMPT for r in recs)
    first = recs[0]
    assert first["id"] == "action_sequence-0" and first["reference"] == "(B) stood up"
    assert first["video"].endswith("video/star/Charades_v1_480/action_sequence_0.mp4")
    assert first["meta"]["start"] == 1.0 and first["meta"]["end"] == 3.5


def test_mvbench_original_prompt_and_per_task_sampling(mvbench):
    recs = load_mvbench(mvbench, prompt="original", limit=2, shuffle_seed=42)
    assert len(recs) == 4 and [r["subset"] for r in recs] == ["action_sequence"] * 2 + ["action_prediction"] * 2
    order = np.random.default_rng(42).permutation(4)[:2]
    assert [r["id"] for r in recs[:2]] == [f"action_sequence-{i}" for i in order]
    assert recs[0]["question"].splitlines() == [
        f"Question: What happened {order[0]}?",
        "Options:",
        "(A) sat down",
        "(B) stood up",
        "(C) ran",
        MC_PROMPT,
    ]


def test_mvbench_frame_folder_task_and_all(mvbench):
    (rec,) = load_mvbench(mvbench, tasks="episodic_reasoning")
    assert rec["video"].endswith("tvqa/frames_fps3_hq/ep0") and rec["meta"]["data_type"] == "frame"
    assert {r["subset"] for r in load_mvbench(mvbench, tasks="all")} == {
        "action_sequence",
        "action_prediction",
        "episodic_reasoning",
    }


def test_mvbench_errors(mvbench, tmp_path):
    _error(load_mvbench, mvbench, tasks=["action_sequence", "bogus"], match="unknown task 'bogus'")
    _error(load_mvbench, mvbench, tasks="object_shuffle", match="object_shuffle.json does not exist")
    (mvbench / "video" / "star" / "Charades_v1_480" / "action_sequence_2.mp4").unlink()
    _error(load_mvbench, mvbench, match="action_sequence_2.mp4 referenced by record action_sequence-2 does not exist")
    assert len(load_mvbench(mvbench, missing="skip")) == 7
    _json(mvbench / "json" / "action_prediction.json", [{"question": "no video field"}])
    _error(load_mvbench, mvbench, match="record 0 has no 'video' field")
    bare = tmp_path / "bare"
    bare.mkdir()
    _error(load_mvbench, bare, tasks="all", match="no task json files")


# ---- LongVideoBench -------------------------------------------------------------------------------------------------
@pytest.fixture
def lvb(tmp_path, clip):
    root = tmp_path / "LongVideoBench"
    base = {
        "candidates": ["red", "green", "blue"],
        "duration": 12.0,
        "duration_group": 15,
        "question_category": "S2E",
        "video_id": "vid",
    }
    _json(
        root / "lvb_test_wo_gt.json",
        [dict(base, id=f"t{i}", video_path=f"t{i}.mp4", question=f"Q{i}?") for i in range(3)],
    )
    _json(root / "lvb_val.json", [dict(base, id="v0", video_path="v0.mp4", question="Colour?", correct_choice=2)])
    for name in ("t0", "t1", "t2", "v0"):
        _video(root / "videos" / f"{name}.mp4", clip)
    return root


def test_longvideobench_splits(lvb):
    test = load_longvideobench(lvb)
    assert [r["id"] for r in test] == ["t0", "t1", "t2"] and test[0]["reference"] is None
    assert test[0]["question"] == DESCRIBE_PROMPT and test[0]["subset"] == "S2E"
    (val,) = load_longvideobench(lvb, split="val", prompt="original")
    assert val["reference"] == "(C) blue" and val["meta"]["answer"] == 2
    assert val["question"].splitlines() == ["Question: Colour?", "A. red", "B. green", "C. blue", MC_PROMPT]
    paper = load_dataset("longvideobench", lvb, paper=True)
    assert [r["id"] for r in paper] == [f"t{i}" for i in np.random.default_rng(24).permutation(3)]


def test_longvideobench_errors(lvb, tmp_path):
    _error(load_longvideobench, lvb, split="train", match="split must be 'val' or 'test'")
    (lvb / "lvb_val.json").unlink()
    _error(load_longvideobench, lvb, split="val", match="no annotation file")
    _json(lvb / "lvb_test_wo_gt.json", [{"id": "x", "video_path": "x.mp4", "candidates": ["a"]}])
    _error(load_longvideobench, lvb, match="record 0 has no 'question' field")


# ---- MLVU -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def mlvu(tmp_path, clip):
    root = tmp_path / "data"
    base = root / "MLVU"
    _json(
        base / "json" / "1_plotQA.json",
        [
            {
                "video": f"p{i}.mp4",
                "question": f"Plot {i}?",
                "candidates": ["x", "y"],
                "answer": "y",
                "question_type": "plotQA",
                "duration": 30,
            }
            for i in range(3)
        ],
    )
    _json(
        base / "json" / "8_sub_scene.json",
        [
            {
                "video": "s0.mp4",
                "question": "Describe the scene.",
                "answer": "A long free answer.",
                "question_type": "sub_scene",
            }
        ],
    )
    for i in range(3):
        _video(base / "video" / "1_plotQA" / f"p{i}.mp4", clip)
    _video(base / "video" / "sub_scene" / "s0.mp4", clip)  # the other published folder naming
    return root


def test_mlvu_tasks_and_layouts(mlvu):
    recs = load_mlvu(mlvu)
    assert [r["subset"] for r in recs] == ["plotQA"] * 3 + ["sub_scene"]
    assert all(r["question"] == DESCRIBE_PROMPT for r in recs)
    assert recs[0]["reference"] == "(B) y" and recs[3]["reference"] == "A long free answer."
    assert recs[3]["video"].endswith("MLVU/video/sub_scene/s0.mp4")
    original = load_mlvu(mlvu / "MLVU", tasks=["8_sub_scene"], prompt="original")
    assert [r["question"] for r in original] == ["Describe the scene."]
    assert [r["id"] for r in load_mlvu(mlvu, tasks="plotQA", limit=2)] == ["plotQA-0", "plotQA-1"]


def test_mlvu_errors(mlvu, tmp_path):
    _error(load_mlvu, mlvu, tasks=["count"], match="no json for task")
    _error(load_mlvu, tmp_path, match="no json folder")
    (mlvu / "MLVU" / "json" / "1_plotQA.json").write_text("[{broken")
    _error(load_mlvu, mlvu, match="1_plotQA.json: malformed JSON")


# ---- LLaVA-Bench (in the wild) --------------------------------------------------------------------------------------
@pytest.fixture
def llava_bench(tmp_path):
    root = tmp_path / "llava-bench-in-the-wild"
    _json(
        root / "questions.jsonl",
        [
            {
                "question_id": i,
                "image": f"{i:03d}.png",
                "text": f"What is in image {i}?",
                "category": "conv" if i % 2 else "detail",
            }
            for i in range(4)
        ],
        lines=True,
    )
    _json(root / "answers_gpt4.jsonl", [{"question_id": i, "text": f"Answer {i}."} for i in range(4)], lines=True)
    for i in range(4):
        _png(root / "images" / f"{i:03d}.png", i * 50)
    return root


def test_llava_bench(llava_bench):
    recs = load_llava_bench(llava_bench)
    assert [r["id"] for r in recs] == ["0", "1", "2", "3"] and recs[1]["subset"] == "conv"
    assert recs[0]["question"] == f"What is in image 0?\n{EXPLAIN_PROMPT}" and recs[0]["reference"] == "Answer 0."
    assert recs[2]["images"] == [str(llava_bench / "images" / "002.png")]
    assert load_llava_bench(llava_bench, prompt="original")[0]["question"] == "What is in image 0?"
    assert len(load_dataset("llava_bench", llava_bench, paper=True, limit=3)) == 3


def test_llava_bench_errors(llava_bench):
    (llava_bench / "images" / "001.png").unlink()
    _error(load_llava_bench, llava_bench, match="001.png referenced by record 1 does not exist")
    (llava_bench / "questions.jsonl").write_text('{"question_id": 0}\nnot json\n')
    _error(load_llava_bench, llava_bench, match="malformed JSON on line 2")
    (llava_bench / "questions.jsonl").unlink()
    _error(load_llava_bench, llava_bench, match="questions.jsonl does not exist")


# ---- MMMU -----------------------------------------------------------------------------------------------------------
@pytest.fixture
def mmmu(tmp_path):
    root = tmp_path / "MMMU"
    for subject in ("Art", "Math", "Physics"):
        rows = [
            {
                "id": f"validation_{subject}_{i + 1}",
                "question": f"<image 1> {subject} question {i}?",
                "options": "['one', 'two', 'three']",
                "answer": "C",
                "question_type": "multiple-choice",
                "image_1": f"images/{subject}_{i}.png",
                "image_2": None,
                "subfield": "sub",
            }
            for i in range(3)
        ]
        rows.append(
            {
                "id": f"validation_{subject}_4",
                "question": "Open one?",
                "options": "[]",
                "answer": "42",
                "question_type": "open",
                "image_1": {"path": f"images/{subject}_0.png"},
            }
        )
        _json(root / subject / "validation.json", rows)
        for i in range(3):
            _png(root / subject / "images" / f"{subject}_{i}.png", i * 60)
    return root


def test_mmmu_subjects_options_and_images(mmmu):
    recs = load_mmmu(mmmu, subjects=["Math", "Art"])
    assert [r["subset"] for r in recs] == ["Math"] * 4 + ["Art"] * 4
    mc, open_ = recs[0], recs[3]
    assert mc["question"].splitlines() == [
        "<image 1> Math question 0?",
        "(A) one",
        "(B) two",
        "(C) three",
        EXPLAIN_PROMPT,
    ]
    assert mc["reference"] == "(C) three" and mc["images"] == [str(mmmu / "Math" / "images" / "Math_0.png")]
    assert open_["reference"] == "42" and open_["meta"]["question_type"] == "open"
    assert open_["images"] == [str(mmmu / "Math" / "images" / "Math_0.png")]  # {"path": ...} form
    assert load_mmmu(mmmu, subjects="Art", prompt="original")[3]["question"].endswith("single word or phrase.")
    assert {r["subset"] for r in load_mmmu(mmmu)} == {"Art", "Math", "Physics"}  # every subject present
    assert len(load_dataset("mmmu", mmmu, paper=True, limit=2, subjects=("Art", "Math"))) == 4


def test_mmmu_errors(mmmu, tmp_path):
    _error(load_mmmu, mmmu, subjects=["Biology"], match="subject folder .*Biology does not exist")
    _error(load_mmmu, mmmu, split="test", match="no subject folder with test data")
    rows = json.loads((mmmu / "Art" / "validation.json").read_text())
    rows[0]["options"] = "['unterminated"
    _json(mmmu / "Art" / "validation.json", rows)
    _error(load_mmmu, mmmu, subjects="Art", match="record 0 has unreadable options")
    rows[0]["options"], rows[0]["image_1"] = "['a']", 7
    _json(mmmu / "Art" / "validation.json", rows)
    _error(load_mmmu, mmmu, subjects="Art", match="neither a path nor embedded bytes")


# ---- the testbed ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from specvlm.testbed import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, n_clips=2, seed=0, frames=(16, 16), size=32)
    return root


def test_testbed_world(world):
    recs = load_testbed(world, split="train")
    assert len(recs) == 12 and recs[0]["id"] == "clip_00000-00" and recs[0]["subset"] == "caption"
    assert recs[0]["video"] == str(world / "videos" / "clip_00000.mp4")
    row = json.loads((world / "train.jsonl").read_text().splitlines()[0])
    assert recs[0]["question"] == row["conversation"][0]["content"]
    assert recs[0]["reference"] == row["conversation"][1]["content"]
    assert load_testbed(world, split="test") == []  # clips 9, 19, ... are the test split
    assert load_testbed(world / "train.jsonl", limit=3) == recs[:3]
    captions = load_testbed(world, split="train", kinds="caption")
    assert [r["id"] for r in captions] == ["clip_00000-00", "clip_00001-00"]
    assert load_dataset("testbed", world, paper=True, split="train", limit=1) == recs[:1]


def test_bench_kinds_caption_takes_one_record_per_clip(tmp_path):
    """What `specvlm bench --kinds caption --limit 12` selects: twelve clips, where --limit alone takes the first
    clips' caption and questions (14 clips: indices 8 and 9 are validation and test, 12 train)."""
    from specvlm.bench.runner import load_records
    from specvlm.testbed import generate_world

    generate_world(tmp_path, n_clips=14, seed=0, frames=(16, 16), size=32, questions=2)
    spec = f"testbed:{tmp_path}"
    captions = load_records(spec, split="train", kinds=("caption",), limit=12)
    assert len({r["meta"]["clip"] for r in captions}) == len({r["video"] for r in captions}) == 12
    assert {r["subset"] for r in captions} == {"caption"}
    assert len({r["meta"]["clip"] for r in load_records(spec, split="train", limit=12)}) == 4


def test_testbed_errors(world, tmp_path):
    _error(load_testbed, tmp_path / "none", match="does not exist")
    _error(load_testbed, world, split="bogus", match="bogus.jsonl does not exist")
    bad = _json(tmp_path / "bad.jsonl", [{"video": "v.mp4", "conversation": "not a list"}], lines=True)
    _error(load_testbed, bad, match="record 0 has a malformed conversation")
    no_user = _json(
        tmp_path / "nouser.jsonl",
        [{"video": "v.mp4", "conversation": [{"role": "assistant", "content": "hi"}]}],
        lines=True,
    )
    _error(load_testbed, no_user, match="has no user turn")
    gone = _json(
        tmp_path / "gone.jsonl", [{"video": "v.mp4", "conversation": [{"role": "user", "content": "q"}]}], lines=True
    )
    _error(load_testbed, gone, match="v.mp4 referenced by record 0 does not exist")


# ---- shared ---------------------------------------------------------------------------------------------------------
def test_read_rows_and_load_dataset_errors(tmp_path):
    assert read_rows(_json(tmp_path / "wrapped.json", {"data": [{"a": 1}], "version": "1"})) == [{"a": 1}]
    _error(read_rows, _json(tmp_path / "scalar.json", [1, 2]), match="expected a list of records")
    _error(read_rows, _json(tmp_path / "two.json", {"a": [], "b": []}), match="expected a list of records")
    (tmp_path / "latin.json").write_bytes(b"\xff\xfe\x00garbage")
    _error(read_rows, tmp_path / "latin.json", match="cannot read|malformed")
    _error(load_dataset, "imagenet", tmp_path, match="unknown dataset 'imagenet'; known: videodetailcaption")
    _error(load_dataset, "testbed", tmp_path, split="x", match="x.jsonl does not exist")
    _json(tmp_path / "x.jsonl", [], lines=True)
    _error(load_dataset, "testbed", tmp_path, split="x", limit=-1, match="limit must be >= 0")


def test_sharded_parquet_reads_every_shard(tmp_path):
    for i in range(3):
        (tmp_path / f"test-{i:05d}-of-00003.parquet").write_bytes(b"")
    assert [p.name for p in shards(tmp_path / "test-00000-of-00003.parquet")] == [
        f"test-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    assert shards(tmp_path / "validation.parquet") == [tmp_path / "validation.parquet"]
    (tmp_path / "test-00001-of-00003.parquet").unlink()
    _error(read_rows, tmp_path / "test-00000-of-00003.parquet", match="1 of 3 shards of test are missing")
