"""Benchmark loaders: the papers' benchmarks from LOCAL files in their published layouts (nothing is downloaded),
plus the testbed's own JSONL. Every loader returns a list of uniform records

    {"id": str, "dataset": str, "subset": str | None,
     "video": str (absolute path)  |  "images": [str (absolute path) | PIL.Image.Image],
     "question": str,              # the prompt to send, after the chosen prompt mode
     "reference": str | None,      # the benchmark's answer when it has one (MC: "(B) option text")
     "meta": dict}                 # the rest: original question, options, answer, bounds, categories, ...

Prompt modes (`prompt=`): "original" (the benchmark's question; multiple-choice options listed as "(A) ..."),
"describe" (video: SpecVLM's fixed long-form prompt, `DESCRIBE_PROMPT`), "explain" (images: the question and its
options followed by EagleVLM's `EXPLAIN_PROMPT` instead of the short-answer instruction), and "paper" (default: what
the papers ran: VideoDetailCaption -> original, MVBench / LongVideoBench / MLVU -> describe, LLaVA-Bench / MMMU ->
explain). Selection: `shuffle_seed` reorders exactly as `datasets.Dataset.shuffle(seed=)` does
(np.random.default_rng(seed).permutation(n)) and `limit` then keeps the first n (per task/subject where the paper
sampled per subset). `missing="skip"` drops records whose media file is absent (SpecVLM's VideoDetailCaption
protocol), "error" (default) raises. `PAPER_SETTINGS` and `load_dataset(name, root, paper=True)` apply the papers'
sampling. Bad input raises `DatasetError`, a one-line message naming the file.

Parquet layouts need `pyarrow` (not a dependency of specvlm); the JSON / JSONL layouts need nothing.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import SpecVLMError

DESCRIBE_PROMPT = (
    "Please provide a detailed description of the video, focusing on the main subjects, their actions, "
    "and the background scenes."
)
EXPLAIN_PROMPT = "Please give a detailed and reasonable explanation for the answer."
MC_PROMPT = "Answer with the option's letter from the given choices directly."
OPEN_PROMPT = "Answer the question using a single word or phrase."
VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")

# MVBench: task -> (json file, video folder under video/, data type, has start/end bounds), as in the benchmark's code
MVBENCH_TASKS = {
    "action_sequence": ("action_sequence.json", "star/Charades_v1_480", "video", True),
    "action_prediction": ("action_prediction.json", "star/Charades_v1_480", "video", True),
    "action_antonym": ("action_antonym.json", "ssv2_video", "video", False),
    "fine_grained_action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "unexpected_action": ("unexpected_action.json", "FunQA_test/test", "video", False),
    "object_existence": ("object_existence.json", "clevrer/video_validation", "video", False),
    "object_interaction": ("object_interaction.json", "star/Charades_v1_480", "video", True),
    "object_shuffle": ("object_shuffle.json", "perception/videos", "video", False),
    "moving_direction": ("moving_direction.json", "clevrer/video_validation", "video", False),
    "action_localization": ("action_localization.json", "sta/sta_video", "video", True),
    "scene_transition": ("scene_transition.json", "scene_qa/video", "video", False),
    "action_count": ("action_count.json", "perception/videos", "video", False),
    "moving_count": ("moving_count.json", "clevrer/video_validation", "video", False),
    "moving_attribute": ("moving_attribute.json", "clevrer/video_validation", "video", False),
    "state_change": ("state_change.json", "perception/videos", "video", False),
    "fine_grained_pose": ("fine_grained_pose.json", "nturgbd", "video", False),
    "character_order": ("character_order.json", "perception/videos", "video", False),
    "egocentric_navigation": ("egocentric_navigation.json", "vlnqa", "video", False),
    "episodic_reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "counterfactual_inference": ("counterfactual_inference.json", "clevrer/video_validation", "video", False),
}
MMMU_PAPER_SUBJECTS = ("Art", "Biology", "Chemistry", "Economics", "Math", "Physics")

# the papers' sampling (SpecVLM section 4 / code; EagleVLM section 4.1); `load_dataset(..., paper=True)` applies them
PAPER_SETTINGS = {
    "videodetailcaption": {"shuffle_seed": 42, "limit": 100, "missing": "skip"},
    "mvbench": {"tasks": ("action_sequence", "action_prediction"), "shuffle_seed": 42},
    "longvideobench": {"split": "test", "shuffle_seed": 24},
    "mlvu": {},
    "llava-bench": {"limit": 60},
    "mmmu": {"subjects": MMMU_PAPER_SUBJECTS, "split": "validation", "limit": 30},
    "testbed": {"split": "test"},
}


class DatasetError(SpecVLMError):
    pass


# ---- file helpers ---------------------------------------------------------------------------------------------------
def _dir(root, name: str) -> Path:
    p = Path(root).expanduser()
    if not p.exists():
        raise DatasetError(f"{name}: folder {p} does not exist")
    if not p.is_dir():
        raise DatasetError(f"{name}: {p} is not a folder")
    return p


def read_rows(path) -> list[dict]:
    """Rows of a .json (a list of objects, or an object holding one such list), .jsonl or .parquet file (a hub
    shard `name-00000-of-0000N.parquet` brings its sibling shards along)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        files = shards(path)
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DatasetError(
                f"{path}: reading parquet needs the 'pyarrow' package (pip install pyarrow), "
                "or use the benchmark's JSON layout"
            ) from None
        rows = []
        for file in files:
            try:
                rows += pq.read_table(file).to_pylist()
            except Exception as err:  # pyarrow raises several unrelated types for bad files
                raise DatasetError(f"{file}: cannot read parquet ({_first_line(err)})") from None
        return rows
    text = _read_text(path)
    if suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as err:
                    raise DatasetError(f"{path}: malformed JSON on line {n} ({_first_line(err)})") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise DatasetError(f"{path}: malformed JSON ({_first_line(err)})") from None
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            data = lists[0] if len(lists) == 1 else None
        rows = data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DatasetError(f"{path}: expected a list of records (JSON objects)")
    return rows


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.parquet$")


def shards(path: Path) -> list[Path]:
    """All shards of a hub-style sharded parquet split (`test-00000-of-00003.parquet` -> its 3 files), in order;
    any other file is its own only shard. A missing shard is an error (rows would silently be lost)."""
    path = Path(path)
    match = _SHARD.match(path.name)
    if match is None:
        return [path]
    stem, count = match["stem"], int(match["count"])
    files = [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.parquet") for i in range(count)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise DatasetError(f"{path.parent}: {len(absent)} of {count} shards of {stem} are missing (e.g. {absent[0]})")
    return files


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _field(row: dict, key: str, path, i: int):
    if key not in row or row[key] is None:
        raise DatasetError(f"{path}: record {i} has no '{key}' field")
    return row[key]


def _select(rows: list, shuffle_seed: int | None, limit: int | None) -> list:
    """HF `Dataset.shuffle(seed).select(range(limit))`."""
    if shuffle_seed is not None:
        rows = [rows[int(i)] for i in np.random.default_rng(shuffle_seed).permutation(len(rows))]
    if limit is not None:
        if limit < 0:
            raise DatasetError(f"limit must be >= 0, got {limit}")
        rows = rows[:limit]
    return rows


def _check_media(records: list[dict], missing: str, name: str) -> list[dict]:
    if missing not in ("error", "skip"):
        raise DatasetError(f"missing must be 'error' or 'skip', got {missing!r}")
    kept = []
    for r in records:
        paths = [r["video"]] if "video" in r else [p for p in r["images"] if isinstance(p, str)]
        absent = next((p for p in paths if not Path(p).exists()), None)
        if absent is None:
            kept.append(r)
        elif missing == "error":
            raise DatasetError(
                f"{name}: file {absent} referenced by record {r['id']} does not exist "
                "(missing='skip' drops such records)"
            )
    return kept


def _mode(prompt: str, paper: str, allowed: tuple[str, ...], name: str) -> str:
    if prompt == "paper":
        return paper
    if prompt not in allowed:
        raise DatasetError(f"{name}: prompt must be one of {', '.join(('paper',) + allowed)}, got {prompt!r}")
    return prompt


def _letters(options: list) -> list[str]:
    return [f"({chr(ord('A') + i)}) {o}" for i, o in enumerate(options)]


def mc_question(question: str, options: list) -> str:
    """'Question: ...\\nOptions:\\n(A) ...' as MVBench's evaluation formats it."""
    return "\n".join([f"Question: {question}", "Options:", *_letters(options)])


def _mc_reference(options: list, answer) -> str | None:
    """'(B) text' from the answer given as option text, letter or index."""
    if answer is None or not options:
        return None if answer is None else str(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(options):
        return _letters(options)[answer]
    text = str(answer).strip()
    if text in [str(o) for o in options]:
        return _letters(options)[[str(o) for o in options].index(text)]
    if len(text) == 1 and "A" <= text.upper() < chr(ord("A") + len(options)):
        return _letters(options)[ord(text.upper()) - ord("A")]
    return text


def _find_video(folder: Path, name: str) -> Path:
    """`folder/name`, trying the usual extensions when `name` has none or the file is absent."""
    p = folder / name
    if p.suffix and p.exists():
        return p
    stem = p.with_suffix("") if p.suffix.lower() in {e.lower() for e in VIDEO_EXTENSIONS} else p
    for ext in VIDEO_EXTENSIONS:
        if Path(f"{stem}{ext}").exists():
            return Path(f"{stem}{ext}")
    return p if p.suffix else Path(f"{p}.mp4")


def _annotation(root: Path, name: str, preferred: tuple[str, ...], exclude: tuple[str, ...] = ()) -> Path:
    """The first of `preferred` (glob patterns relative to root, in order) that matches a file."""
    for pattern in preferred:
        hits = sorted(p for p in root.glob(pattern) if p.is_file() and not any(x in p.parts for x in exclude))
        if hits:
            return hits[0]
    raise DatasetError(f"{name}: no annotation file in {root} (looked for {', '.join(preferred)})")


# ---- video benchmarks -----------------------------------------------------------------------------------------------
def load_video_detail_caption(
    root,
    *,
    prompt: str = "paper",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
    video_dir=None,
) -> list[dict]:
    """lmms-lab/VideoDetailCaption: rows {video_name, question, answer} in a parquet / JSON / JSONL file under
    `root` (e.g. test/*.parquet or data/test-*.parquet), videos `Test_Videos/<video_name>.mp4` (.MP4, .mkv also
    tried) in `root` or `root/evaluation`, or `video_dir`. Prompt: the dataset's question (paper) or
    "describe"."""
    name = "VideoDetailCaption"
    root = _dir(root, name)
    mode = _mode(prompt, "original", ("original", "describe"), name)
    ann = _annotation(
        root,
        name,
        (
            "test*.parquet",
            "test/*.parquet",
            "data/test*.parquet",
            "**/*.parquet",
            "*test*.jsonl",
            "*test*.json",
            "*.jsonl",
            "*.json",
            "**/*.jsonl",
            "**/*.json",
        ),
        exclude=("Test_Videos",),
    )
    if video_dir is not None:
        videos = _dir(video_dir, name)
    else:
        found = [p for p in (root / "Test_Videos", root / "evaluation" / "Test_Videos") if p.is_dir()] or sorted(
            p for p in root.glob("**/Test_Videos") if p.is_dir()
        )
        if not found:
            raise DatasetError(
                f"{name}: no Test_Videos folder in {root} (unpack Test_Videos.zip there, or pass video_dir)"
            )
        videos = found[0]
    rows = read_rows(ann)
    names = Counter(str(r.get("video_name")) for r in rows)
    out = []
    for i, row in enumerate(rows):
        vname = str(_field(row, "video_name", ann, i))
        question = str(_field(row, "question", ann, i))
        out.append(
            {
                "id": vname if names[vname] == 1 else f"{vname}-{i}",
                "dataset": "videodetailcaption",
                "subset": None,
                "video": str(_find_video(videos, vname)),
                "question": question if mode == "original" else DESCRIBE_PROMPT,
                "reference": row.get("answer"),
                "meta": {"question": question, "video_name": vname},
            }
        )
    return _check_media(_select(out, shuffle_seed, limit), missing, name)


def load_mvbench(
    root,
    *,
    tasks=("action_sequence", "action_prediction"),
    prompt: str = "paper",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
) -> list[dict]:
    """OpenGVLab/MVBench: `json/<task>.json` (lists of {video, question, candidates, answer[, start, end]}) and
    videos under `video/<source folder>/` (the benchmark's own task -> folder table, `MVBENCH_TASKS`). `tasks`:
    names from that table (default: the two SpecVLM used) or "all" (every task whose json is present). `limit` and
    `shuffle_seed` apply per task, as SpecVLM sampled each subset. Prompt: "describe" (paper) or "original"."""
    name = "MVBench"
    root = _dir(root, name)
    mode = _mode(prompt, "describe", ("original", "describe"), name)
    jdir = root / "json" if (root / "json").is_dir() else root
    if tasks == "all":
        tasks = [t for t, spec in MVBENCH_TASKS.items() if (jdir / spec[0]).is_file()]
        if not tasks:
            raise DatasetError(f"{name}: no task json files in {jdir}")
    elif isinstance(tasks, str):
        tasks = [tasks]
    out = []
    for task in tasks:
        if task not in MVBENCH_TASKS:
            raise DatasetError(f"{name}: unknown task {task!r}; known: {', '.join(MVBENCH_TASKS)}")
        fname, folder, dtype, bound = MVBENCH_TASKS[task]
        ann = jdir / fname
        rows = read_rows(ann)
        vdir = root / "video" / folder
        recs = []
        for i, row in enumerate(rows):
            video = str(_field(row, "video", ann, i))
            question = str(_field(row, "question", ann, i))
            options = list(row.get("candidates") or [])
            path = vdir / video if dtype == "frame" else _find_video(vdir, video)
            if not path.exists() and (root / "video" / video).exists():
                path = root / "video" / video
            meta = {"question": question, "options": options, "answer": row.get("answer"), "data_type": dtype}
            if bound and "start" in row and "end" in row:
                meta.update(start=row["start"], end=row["end"])
            recs.append(
                {
                    "id": f"{task}-{i}",
                    "dataset": "mvbench",
                    "subset": task,
                    "video": str(path),
                    "question": DESCRIBE_PROMPT
                    if mode == "describe"
                    else mc_question(question, options) + "\n" + MC_PROMPT,
                    "reference": _mc_reference(options, row.get("answer")),
                    "meta": meta,
                }
            )
        out += _select(recs, shuffle_seed, limit)
    return _check_media(out, missing, name)


def load_longvideobench(
    root,
    *,
    split: str = "test",
    prompt: str = "paper",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
) -> list[dict]:
    """longvideobench/LongVideoBench: `lvb_val.json` / `lvb_test_wo_gt.json` (or validation- / test-*.parquet)
    with {id, video_path, question, candidates[, correct_choice], duration, ...}, videos in `videos/`. `split`:
    "test" (SpecVLM's, no answers) or "val". Prompt: "describe" (paper) or "original"."""
    name = "LongVideoBench"
    root = _dir(root, name)
    mode = _mode(prompt, "describe", ("original", "describe"), name)
    if split not in ("val", "validation", "test"):
        raise DatasetError(f"{name}: split must be 'val' or 'test', got {split!r}")
    test = split == "test"
    ann = _annotation(
        root,
        name,
        ("lvb_test_wo_gt.json", "lvb_test*.json", "test*.parquet") if test else ("lvb_val.json", "validation*.parquet"),
    )
    rows = read_rows(ann)
    out = []
    for i, row in enumerate(rows):
        question = str(_field(row, "question", ann, i))
        options = list(_field(row, "candidates", ann, i))
        video = str(_field(row, "video_path", ann, i))
        answer = row.get("correct_choice")
        meta = {
            k: row.get(k)
            for k in (
                "video_id",
                "duration",
                "duration_group",
                "question_category",
                "subtitle_path",
                "starting_timestamp_for_subtitles",
            )
            if k in row
        }
        meta.update(question=question, options=options, answer=answer)
        out.append(
            {
                "id": str(row.get("id", i)),
                "dataset": "longvideobench",
                "subset": row.get("question_category"),
                "video": str(root / "videos" / video),
                "question": DESCRIBE_PROMPT
                if mode == "describe"
                else "\n".join(
                    [f"Question: {question}", *[f"{chr(65 + k)}. {c}" for k, c in enumerate(options)], MC_PROMPT]
                ),
                "reference": _mc_reference(options, answer if isinstance(answer, int) and answer >= 0 else None),
                "meta": meta,
            }
        )
    return _check_media(_select(out, shuffle_seed, limit), missing, name)


def load_mlvu(
    root,
    *,
    tasks=None,
    prompt: str = "paper",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
) -> list[dict]:
    """MLVU (dev, MLVU/MVLU on the hub): `json/<n>_<task>.json` (e.g. 1_plotQA.json, 8_sub_scene.json) with
    {video, question, candidates, answer, question_type}, videos in `video/<n>_<task>/` (or `video/<task>/`).
    `root` is the MLVU folder or the folder holding it. `tasks`: None = every json present, or names with or
    without the number ("plotQA", "4_count"). Multiple-choice tasks list their options; the generation tasks
    (sub_scene, summary) have a free answer. `limit`/`shuffle_seed` apply per task. Prompt: "describe" (paper)
    or "original"."""
    name = "MLVU"
    root = _dir(root, name)
    mode = _mode(prompt, "describe", ("original", "describe"), name)
    base = root / "MLVU" if (root / "MLVU" / "json").is_dir() else root
    jdir = base / "json"
    if not jdir.is_dir():
        raise DatasetError(f"{name}: no json folder in {root} (expected MLVU/json/ or json/)")
    files = sorted(jdir.glob("*.json"), key=lambda p: (_task_number(p.stem), p.stem))
    if not files:
        raise DatasetError(f"{name}: no task json files in {jdir}")
    if tasks is not None:
        wanted = [tasks] if isinstance(tasks, str) else list(tasks)
        chosen = [p for p in files if p.stem in wanted or _task_name(p.stem) in wanted]
        unknown = [t for t in wanted if not any(t in (p.stem, _task_name(p.stem)) for p in files)]
        if unknown:
            raise DatasetError(f"{name}: no json for task(s) {', '.join(unknown)} in {jdir}")
        files = chosen
    out = []
    for ann in files:
        task = _task_name(ann.stem)
        vdir = next(
            (d for d in (base / "video" / ann.stem, base / "video" / task) if d.is_dir()), base / "video" / ann.stem
        )
        recs = []
        for i, row in enumerate(read_rows(ann)):
            question = str(_field(row, "question", ann, i))
            video = str(_field(row, "video", ann, i))
            options = list(row.get("candidates") or [])
            original = mc_question(question, options) + "\n" + MC_PROMPT if options else question
            recs.append(
                {
                    "id": f"{task}-{i}",
                    "dataset": "mlvu",
                    "subset": task,
                    "video": str(_find_video(vdir, video)),
                    "question": DESCRIBE_PROMPT if mode == "describe" else original,
                    "reference": _mc_reference(options, row.get("answer")) if options else row.get("answer"),
                    "meta": {
                        "question": question,
                        "options": options,
                        "answer": row.get("answer"),
                        "question_type": row.get("question_type"),
                        "duration": row.get("duration"),
                    },
                }
            )
        out += _select(recs, shuffle_seed, limit)
    return _check_media(out, missing, name)


def _task_number(stem: str) -> int:
    head = stem.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def _task_name(stem: str) -> str:
    head, _, rest = stem.partition("_")
    return rest if head.isdigit() and rest else stem


# ---- image benchmarks -----------------------------------------------------------------------------------------------
def load_llava_bench(
    root, *, prompt: str = "paper", limit: int | None = None, shuffle_seed: int | None = None, missing: str = "error"
) -> list[dict]:
    """liuhaotian/llava-bench-in-the-wild: `questions.jsonl` ({question_id, image, text, category}), images in
    `images/`, and `answers_gpt4.jsonl` ({question_id, text}) as references when present. EagleVLM used the first
    60 (`limit=60`). Prompt: "explain" (paper: the question followed by `EXPLAIN_PROMPT`) or "original"."""
    name = "LLaVA-Bench"
    root = _dir(root, name)
    mode = _mode(prompt, "explain", ("original", "explain"), name)
    ann = root / "questions.jsonl"
    if not ann.is_file():
        raise DatasetError(f"{name}: {ann} does not exist")
    answers = {}
    if (root / "answers_gpt4.jsonl").is_file():
        answers = {r.get("question_id"): r.get("text") for r in read_rows(root / "answers_gpt4.jsonl")}
    out = []
    for i, row in enumerate(read_rows(ann)):
        qid = _field(row, "question_id", ann, i)
        text = str(_field(row, "text", ann, i))
        image = str(_field(row, "image", ann, i))
        out.append(
            {
                "id": str(qid),
                "dataset": "llava-bench",
                "subset": row.get("category"),
                "images": [str(root / "images" / image)],
                "question": text if mode == "original" else f"{text}\n{EXPLAIN_PROMPT}",
                "reference": answers.get(qid),
                "meta": {"question": text, "category": row.get("category")},
            }
        )
    return _check_media(_select(out, shuffle_seed, limit), missing, name)


def load_mmmu(
    root,
    *,
    subjects=None,
    split: str = "validation",
    prompt: str = "paper",
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
) -> list[dict]:
    """MMMU/MMMU: one folder per subject (`Art/validation-00000-of-00001.parquet` on the hub; a
    `validation.json` / `.jsonl` with the same fields also works) with {id, question, options, answer,
    question_type, image_1..image_7}. Parquet images are embedded and come back as PIL images; in JSON an image is
    a path relative to the file (or {"path": ...}). `subjects`: None = every subject folder holding `split`
    (EagleVLM: `MMMU_PAPER_SUBJECTS`, 30 each, i.e. `limit=30`, applied per subject). Prompt: "explain" (paper:
    question, options, then `EXPLAIN_PROMPT` instead of the short-answer instruction) or "original"."""
    name = "MMMU"
    root = _dir(root, name)
    mode = _mode(prompt, "explain", ("original", "explain"), name)
    patterns = (f"{split}*.parquet", f"{split}*.jsonl", f"{split}*.json")
    if subjects is None:
        subjects = sorted(d.name for d in root.iterdir() if d.is_dir() and any(any(d.glob(p)) for p in patterns))
        if not subjects:
            raise DatasetError(f"{name}: no subject folder with {split} data in {root}")
    elif isinstance(subjects, str):
        subjects = [subjects]
    out = []
    for subject in subjects:
        sdir = root / subject
        if not sdir.is_dir():
            raise DatasetError(f"{name}: subject folder {sdir} does not exist")
        ann = _annotation(sdir, name, patterns)
        recs = []
        for i, row in enumerate(read_rows(ann)):
            question = str(_field(row, "question", ann, i))
            options = _options(row.get("options"), ann, i)
            images = [_image(row[k], ann, i) for k in (f"image_{j}" for j in range(1, 8)) if row.get(k) is not None]
            qtype = row.get("question_type") or ("multiple-choice" if options else "open")
            lines = [question] + ([f"({chr(65 + k)}) {o}" for k, o in enumerate(options)] if options else [])
            tail = EXPLAIN_PROMPT if mode == "explain" else MC_PROMPT if qtype == "multiple-choice" else OPEN_PROMPT
            answer = row.get("answer")
            recs.append(
                {
                    "id": str(row.get("id", f"{split}_{subject}_{i + 1}")),
                    "dataset": "mmmu",
                    "subset": subject,
                    "images": images,
                    "question": "\n".join(lines + [tail]),
                    "reference": _mc_reference(options, answer) if options else answer,
                    "meta": {
                        "question": question,
                        "options": options,
                        "answer": answer,
                        "question_type": qtype,
                        "subfield": row.get("subfield"),
                        "explanation": row.get("explanation"),
                    },
                }
            )
        out += _select(recs, shuffle_seed, limit)
    return _check_media(out, missing, name)


def _options(value, path, i) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    try:
        parsed = ast.literal_eval(str(value))  # the hub stores options as a Python list literal
    except (ValueError, SyntaxError):
        raise DatasetError(f"{path}: record {i} has unreadable options {str(value)[:40]!r}") from None
    if not isinstance(parsed, (list, tuple)):
        raise DatasetError(f"{path}: record {i} options are not a list")
    return list(parsed)


def _image(value, path: Path, i: int):
    """A parquet image struct {bytes, path} -> PIL image; a JSON path (or {"path": ...}) -> absolute path."""
    if isinstance(value, dict) and value.get("bytes"):
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(value["bytes"])) as img:
                img.load()
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(f"{path}: record {i} has an unreadable embedded image ({_first_line(err)})") from None
    rel = value.get("path") if isinstance(value, dict) else value
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{path}: record {i} has an image that is neither a path nor embedded bytes")
    return str(path.parent / rel)


# ---- the testbed ----------------------------------------------------------------------------------------------------
def load_testbed(
    path,
    *,
    split: str = "test",
    kinds=None,
    limit: int | None = None,
    shuffle_seed: int | None = None,
    missing: str = "error",
) -> list[dict]:
    """The synthetic world (`specvlm.testbed.generate_world`): `path` is the world folder (reads `<split>.jsonl`)
    or one JSONL file of records {id, video (relative to the file's folder), conversation, kind, answer, split}.
    The question is the first user turn, the reference the first assistant turn; `kinds` filters by question kind
    ("caption", "direction", ...)."""
    name = "testbed"
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{name}: {p} does not exist")
    ann = p / f"{split}.jsonl" if p.is_dir() else p
    if not ann.is_file():
        raise DatasetError(f"{name}: {ann} does not exist")
    kinds = None if kinds is None else {kinds} if isinstance(kinds, str) else set(kinds)
    out = []
    for i, row in enumerate(read_rows(ann)):
        conv = _field(row, "conversation", ann, i)
        video = _field(row, "video", ann, i)
        if not isinstance(conv, list) or not all(isinstance(t, dict) and "content" in t for t in conv):
            raise DatasetError(f"{ann}: record {i} has a malformed conversation")
        user = next((t["content"] for t in conv if t.get("role") == "user"), None)
        reply = next((t["content"] for t in conv if t.get("role") == "assistant"), None)
        if user is None:
            raise DatasetError(f"{ann}: record {i} has no user turn")
        kind = row.get("kind")
        if kinds is not None and kind not in kinds:
            continue
        out.append(
            {
                "id": str(row.get("id", i)),
                "dataset": "testbed",
                "subset": kind,
                "video": str(ann.parent / video),
                "question": user,
                "reference": reply,
                "meta": {
                    "answer": row.get("answer"),
                    "clip": row.get("clip"),
                    "split": row.get("split"),
                    "conversation": conv,
                },
            }
        )
    return _check_media(_select(out, shuffle_seed, limit), missing, name)


LOADERS: dict[str, Callable[..., list[dict]]] = {
    "videodetailcaption": load_video_detail_caption,
    "mvbench": load_mvbench,
    "longvideobench": load_longvideobench,
    "mlvu": load_mlvu,
    "llava-bench": load_llava_bench,
    "mmmu": load_mmmu,
    "testbed": load_testbed,
}


def load_dataset(name: str, root, *, paper: bool = False, **options) -> list[dict]:
    """`LOADERS[name](root, **options)`; with `paper`, the papers' sampling (`PAPER_SETTINGS`) fills in the options
    not given."""
    key = name.lower().replace("_", "-")
    key = {
        "vdc": "videodetailcaption",
        "video-detail-caption": "videodetailcaption",
        "llava-bench-in-the-wild": "llava-bench",
        "llavabench": "llava-bench",
    }.get(key, key)
    if key not in LOADERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(LOADERS)}")
    if paper:
        options = {**PAPER_SETTINGS[key], **options}
    return LOADERS[key](root, **options)
