"""The synthetic world: determinism, real mp4s, and answers that follow from the event log."""

import json
import re

import numpy as np
import pytest

from specvlm.testbed import (
    CAPTION_PROMPTS,
    DESCRIBE_PROMPT,
    build_text_corpus,
    generate_world,
    is_correct,
    make_clip,
    render_clip,
    simulate,
    split_of,
)
from specvlm.testbed.language import NUMBERS, SHAPE_WORDS, Language, conversations, short_answer
from specvlm.testbed.world import COLORS, SHAPES, Obj, Scene, direction_name

SMALL = dict(frames=(16, 24), size=64)


def decode(path):
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    info = generate_world(out, 12, seed=3, **SMALL)
    return out, info


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_layout_splits_and_schema(world):
    out, info = world
    assert info["clips"] == {"train": 10, "validation": 1, "test": 1}
    for split in ("train", "validation", "test"):
        rows = read_jsonl(out / f"{split}.jsonl")
        assert len(rows) == info["records"][split] == info["clips"][split] * 6
        for r in rows:
            assert {"id", "clip", "video", "conversation", "kind", "answer", "split"} <= set(r)
            assert r["split"] == split == split_of(int(r["clip"].split("_")[1]))
            assert [t["role"] for t in r["conversation"]] == ["user", "assistant"]
            assert (out / r["video"]).is_file() and r["video"].endswith(".mp4")
            assert (r["answer"] is None) == (r["kind"] == "caption")
    assert len(read_jsonl(out / "clips.jsonl")) == 12


def test_same_seed_same_files_and_frames(world, tmp_path):
    out, _ = world
    generate_world(tmp_path, 12, seed=3, **SMALL)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "clips.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()
    # The frames are a pure function of (seed, index), and the mp4s are lossless: both worlds decode to the same
    # pixels, even where libx264 chose another bitstream (it did now and then when the clips were lossy, issue 25).
    for i in (0, 5):
        frames = render_clip(make_clip(i, seed=3, frames=SMALL["frames"])[0], SMALL["size"])
        assert np.array_equal(frames, render_clip(make_clip(i, seed=3, frames=SMALL["frames"])[0], SMALL["size"]))
        assert np.array_equal(decode(out / f"videos/clip_{i:05d}.mp4"), decode(tmp_path / f"videos/clip_{i:05d}.mp4"))
    other = tmp_path / "other"
    generate_world(other, 3, seed=4, **SMALL)
    assert (other / "train.jsonl").read_bytes() != (out / "train.jsonl").read_bytes()


def test_clip_depends_only_on_seed_and_index(world, tmp_path):
    out, _ = world
    generate_world(tmp_path, 3, seed=3, **SMALL)  # a smaller world starts with the same clips
    a = read_jsonl(tmp_path / "clips.jsonl")
    b = read_jsonl(out / "clips.jsonl")[:3]
    assert a == b


def test_reuse_and_regenerate(tmp_path):
    generate_world(tmp_path, 2, seed=0, **SMALL)
    video = tmp_path / "videos" / "clip_00000.mp4"
    stamp = video.stat().st_mtime_ns
    generate_world(tmp_path, 2, seed=0, **SMALL)
    assert video.stat().st_mtime_ns == stamp  # same world: reused
    generate_world(tmp_path, 1, seed=1, **SMALL)
    assert not (tmp_path / "videos" / "clip_00001.mp4").exists()  # stale clips removed
    assert json.loads((tmp_path / "world.json").read_text())["seed"] == 1


def test_mp4s_decode_to_the_rendered_frames(world):
    """Lossless H.264: a decoder returns exactly the yuv420p planes of the rendered frames (`rgb_to_yuv420p`), so
    what a build trains on cannot depend on the encoder's choices; in RGB only chroma subsampling and limited
    range remain (a few levels)."""
    import av

    from specvlm.testbed.export import rgb_to_yuv420p

    out, _ = world
    for clip in read_jsonl(out / "clips.jsonl")[:4]:
        i = int(clip["id"].split("_")[1])
        rendered = render_clip(make_clip(i, seed=3, frames=SMALL["frames"])[0], 64)
        with av.open(str(out / clip["video"])) as c:
            planes = np.stack([f.to_ndarray() for f in c.decode(video=0)])
        assert np.array_equal(planes, rgb_to_yuv420p(rendered))
        frames = decode(out / clip["video"])
        assert frames.shape == (clip["frames"], 64, 64, 3)
        assert np.abs(frames.astype(int) - rendered).mean() < 6
    with av.open(str(out / "videos" / "clip_00000.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        assert float(stream.average_rate) == 8


def test_rendered_colours_where_the_log_says():
    scene = simulate(np.random.default_rng(7))
    frames = render_clip(scene, 128)
    for t in (0, scene.n_frames - 1):
        for k, o in enumerate(scene.objects):
            x, y, live = scene.states[t, k]
            if not live or any(
                p is not o and p.visible(t) and np.hypot(*(scene.states[t, p.id, :2] - (x, y))) < p.radius + o.radius
                for p in scene.objects
            ):
                continue
            pixel = frames[t, int(y * 128), int(x * 128)]
            assert tuple(pixel) == COLORS[o.color_at(t)]


def test_event_log_matches_the_motion():
    """Between frames without a bounce or collision, every object moves the way its motion log says."""
    for seed in range(40):
        scene = simulate(np.random.default_rng(seed))
        turns = {(e["frame"], i) for e in scene.events if e["type"] in ("bounce", "collide") for i in e["objects"]}
        for k, o in enumerate(scene.objects):
            for t in range(o.first, o.last):
                if (t + 1, k) in turns:
                    continue
                dx, dy = scene.states[t + 1, k, :2] - scene.states[t, k, :2]
                assert direction_name(dx, dy) == o.direction_at(t)
        for e in scene.events:
            o = scene.objects[e["objects"][0]]
            if e["type"] == "appear":
                assert o.first == e["frame"] and scene.states[e["frame"], o.id, 2] == 1
                assert scene.states[e["frame"] - 1, o.id, 2] == 0
            if e["type"] == "disappear":
                assert scene.states[e["frame"], o.id, 2] == 0 and scene.states[e["frame"] - 1, o.id, 2] == 1
            if e["type"] == "color_change":
                assert scene.colors[e["frame"]][o.id] == e["to"] and scene.colors[e["frame"] - 1][o.id] == e["from"]


def hand_scene(direction="left", n=32):
    v = {"left": (-0.01, 0), "right": (0.01, 0), "up": (0, -0.01), "down": (0, 0.01)}[direction]
    states = np.zeros((n, 1, 3))
    for t in range(n):
        states[t, 0] = (0.5 + v[0] * t, 0.5 + v[1] * t, 1)
    o = Obj(
        0,
        "circle",
        "red",
        "medium",
        "slowly",
        0,
        n - 1,
        colors=[(0, "red")],
        motion=[(0, direction)],
        start_pos=tuple(states[0, 0, :2]),
        end_pos=tuple(states[-1, 0, :2]),
    )
    return Scene(n, 8, "black", "plain", 0, [o], [], states, [["red"]] * n)


@pytest.mark.parametrize("direction", ["left", "up"])
def test_red_circle_moving_left_is_answered_left(direction):
    scene = hand_scene(direction)
    for seed in range(20):
        q, text, answer = Language(scene, np.random.default_rng(seed)).q_direction()
        assert "circle" in q or "disc" in q
        assert answer == direction and is_correct(text, direction)
    caption = conversations(scene, np.random.default_rng(0), questions=0)[0]["answer_text"]
    assert "red" in caption and "black" in caption


def named(scene, q):
    """The objects a question's wording can refer to."""
    hits = []
    for o in scene.objects:
        for w in SHAPE_WORDS[o.shape]:
            if len(o.colors) > 1 and re.search(rf"\bthe {w}\b", q):
                hits.append(o)
            elif re.search(rf"\b{o.color} {w}\b|\b{w} that is {o.color}\b", q):
                hits.append(o)
    return list({o.id: o for o in hits}.values())


def oracle(scene, kind, q):
    """An independent answer from the scene's log, for the kinds whose question pins the fact down."""
    objs, n = scene.objects, scene.n_frames
    if kind == "direction":
        (o,) = named(scene, q)
        dirs = [d for _, d in o.motion]
        d = dirs[-1] if re.search(r"at the end|in the end|last change", q) else dirs[0]
        return "does not move" if d is None else d
    if kind == "speed":
        (o,) = named(scene, q)
        return o.speed
    if kind == "color":
        (o,) = [o for o in objs if any(re.search(rf"\b{w}\b", q) for w in SHAPE_WORDS[o.shape])]
        return o.colors[-1][1] if re.search(r"turn|change", q) else o.color
    if kind == "shape":
        (c,) = [c for c in COLORS if re.search(rf"\b{c}\b", q)]
        (o,) = [o for o in objs if c in [x for _, x in o.colors]]
        return o.shape
    if kind == "existence":
        (c,) = [c for c in COLORS if re.search(rf"\b{c}\b", q)]
        (s,) = [s for s in SHAPES if any(re.search(rf"\b{w}\b", q) for w in SHAPE_WORDS[s])]
        return "yes" if any(o.shape == s and c in [x for _, x in o.colors] for o in objs) else "no"
    if kind == "count":
        plural = [s for s in SHAPES if any(re.search(rf"\b{w}(e?s)\b", q) for w in SHAPE_WORDS[s])]
        colour = [c for c in COLORS if re.search(rf"\b{c}\b", q)]
        if colour:
            return NUMBERS[sum(o.first == 0 and o.color == colour[0] for o in objs)]
        if plural:
            return NUMBERS[sum(o.shape == plural[0] for o in objs)]
        if re.search(r"start|first frame|beginning", q):
            return NUMBERS[sum(o.first == 0 for o in objs)]
        if re.search(r"\bend\b|last frame", q):
            return NUMBERS[sum(o.visible(n - 1) for o in objs)]
        return NUMBERS[len(objs)]
    if kind in ("first", "last") and " or " not in q:
        e = scene.events[0 if kind == "first" else -1]
        return e["type"]
    return None


def test_answers_follow_the_event_log():
    checked = 0
    for i in range(120):
        scene, convs = make_clip(i, seed=11, questions=8)
        for c in convs[1:]:
            assert c["answer"] in c["answer_text"].lower() or c["kind"] == "count" and c["answer"] == "one"
            assert is_correct(c["answer_text"], c["answer"]), (c["answer_text"], c["answer"])
            assert c["answer_text"] == short_answer(c["answer"])
            expected = oracle(scene, c["kind"], c["question"])
            if expected is None:
                continue
            if c["kind"] in ("first", "last"):
                verb = {
                    "appear": "appears",
                    "disappear": "disappears",
                    "color_change": "turns",
                    "bounce": "bounces",
                    "collide": "collide",
                }[expected]
                assert verb in c["answer"], (c["question"], c["answer"])
            else:
                assert c["answer"] == expected, (c["question"], c["answer"], expected)
            checked += 1
    assert checked > 300


def test_caption_covers_objects_background_and_events():
    for i in range(30):
        scene, convs = make_clip(i, seed=5)
        cap = convs[0]
        assert cap["kind"] == "caption" and cap["question"] in CAPTION_PROMPTS
        text = cap["answer_text"]
        assert scene.background in text
        for o in scene.objects:
            assert o.color in text and any(w in text for w in SHAPE_WORDS[o.shape])
        verbs = {
            "appear": r"appears|shows up|pops into view",
            "disappear": r"disappears|vanishes|is gone",
            "bounce": r"bounces|rebounds|bounces back",
            "color_change": r"turns|changes|becomes",
            "collide": r"collide|bumps|hit",
        }
        for e in scene.events:
            assert re.search(verbs[e["type"]], text), (e, text)


def test_wording_varies_but_not_the_facts():
    questions, prompts, kinds = set(), set(), set()
    for i in range(60):
        _, convs = make_clip(i, seed=2)
        prompts.add(convs[0]["question"])
        for c in convs[1:]:
            kinds.add(c["kind"])
            if c["kind"] == "direction":
                questions.add(re.sub(r"the .*?(move|moving|heading|travel)", "X", c["question"]))
    assert len(prompts) >= 6 and DESCRIBE_PROMPT in prompts | set(CAPTION_PROMPTS)
    assert len(questions) >= 5
    assert {"color", "shape", "count", "first", "last", "direction"} <= kinds


def test_is_correct():
    assert is_correct("It moves to the left.", "left")
    assert not is_correct("It moves up and to the left.", "left")
    assert is_correct("Up and to the left.", "up and to the left")
    assert is_correct("There are 3.", "three") and is_correct("Three.", "three")
    assert not is_correct("Two or three.", "three")
    assert is_correct("No, it does not.", "no") and not is_correct("Yes.", "no")
    assert is_correct("In the center.", "centre") and not is_correct("In the top left corner.", "top")
    assert is_correct("First, the red circle appears.", "the red circle appears")
    assert not is_correct("The blue one is red.", "blue") and is_correct("It is blue.", "blue")


def test_text_corpus(world):
    out, _ = world
    simulated = build_text_corpus(n_clips=20, seed=1)
    assert simulated == build_text_corpus(n_clips=20, seed=1)
    assert DESCRIBE_PROMPT in simulated and len(simulated) > 200
    from_files = build_text_corpus(out)
    rows = sum(len(read_jsonl(out / f"{s}.jsonl")) for s in ("train", "validation", "test"))
    assert len(from_files) >= 2 * rows
    assert set(build_text_corpus(out / "test.jsonl", prompts=False)) <= set(from_files)


def test_bad_arguments():
    with pytest.raises(ValueError):
        generate_world("/tmp/never", 0)
    with pytest.raises(ValueError):
        render_clip(hand_scene(), 33)
    with pytest.raises(ValueError):
        simulate(np.random.default_rng(0), frames=(4, 8))
