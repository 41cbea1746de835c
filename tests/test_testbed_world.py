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
from specvlm.testbed.language import LOCATION, NUMBERS, QUESTION_KINDS, Language, caption, conversations, short_answer
from specvlm.testbed.world import COLORS, Obj, Scene, direction_name, region

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


def test_a_position_textured_world_tells_the_place_by_the_background(tmp_path):
    """`texture="position"`: the background's red rises to the right and its blue downwards (render.POSITION_LEVELS),
    the green and the balls unchanged; the story and its words are those of the plain world; world.json records the
    texture, and a world written before textures counts as plain when reused."""
    from dataclasses import replace

    from specvlm.testbed.render import POSITION_LEVELS, background

    scene = simulate(np.random.default_rng(7))
    plain, coded = background(scene, 64).astype(int), background(replace(scene, texture="position"), 64).astype(int)
    assert (coded[:, :, 1] == plain[:, :, 1]).all() and (coded[0, 0] == plain[0, 0]).all()
    assert coded[0, -1, 0] - coded[0, 0, 0] == coded[-1, 0, 2] - coded[0, 0, 2] == int(POSITION_LEVELS * 63 / 64)
    assert (np.diff(coded[:, :, 0], axis=1) >= 0).all() and (np.diff(coded[:, :, 2], axis=0) >= 0).all()
    generate_world(tmp_path / "plain", 2, seed=0, **SMALL)
    generate_world(tmp_path / "coded", 2, seed=0, texture="position", **SMALL)
    assert read_jsonl(tmp_path / "plain" / "train.jsonl") == read_jsonl(tmp_path / "coded" / "train.jsonl")
    info = json.loads((tmp_path / "coded" / "world.json").read_text())
    assert info["texture"] == "position"
    assert decode(tmp_path / "coded" / "videos" / "clip_00000.mp4")[0, 2, -3, 0] > 40  # red at the right edge
    old = json.loads((tmp_path / "plain" / "world.json").read_text())
    del old["texture"]
    (tmp_path / "plain" / "world.json").write_text(json.dumps(old))
    video = tmp_path / "plain" / "videos" / "clip_00000.mp4"
    stamp = video.stat().st_mtime_ns
    generate_world(tmp_path / "plain", 2, seed=0, **SMALL)
    assert video.stat().st_mtime_ns == stamp  # reused
    with pytest.raises(ValueError, match="texture must be one of"):
        generate_world(tmp_path / "x", 1, texture="stripes", **SMALL)


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
    """Between frames without a bounce, every object moves the way its motion log says."""
    for seed in range(40):
        scene = simulate(np.random.default_rng(seed))
        turns = {(e["frame"], i) for e in scene.events if e["type"] == "bounce" for i in e["objects"]}
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


def test_every_colour_names_one_object():
    """Version 3 names objects by colour: no colour is ever worn by two objects of a clip."""
    for seed in range(200):
        scene = simulate(np.random.default_rng(seed))
        worn = [c for o in scene.objects for c in o.ever_colors]
        assert len(worn) == len(set(worn))
        assert {o.shape for o in scene.objects} <= {"circle"}


def hand_scene(direction="left", n=32):
    v = {"left": (-0.01, 0), "right": (0.01, 0), "up": (0, -0.01), "down": (0, 0.01)}[direction]
    states = np.zeros((n, 1, 3))
    for t in range(n):
        states[t, 0] = (0.5 + v[0] * t, 0.5 + v[1] * t, 1)
    o = Obj(
        0,
        "circle",
        "red",
        "small",
        "quickly",
        0,
        n - 1,
        colors=[(0, "red")],
        motion=[(0, direction)],
        start_pos=tuple(states[0, 0, :2]),
        end_pos=tuple(states[-1, 0, :2]),
    )
    return Scene(n, 8, "black", "plain", 0, [o], [], states, [["red"]] * n)


@pytest.mark.parametrize("direction", ["left", "up"])
def test_red_ball_moving_left_is_answered_left(direction):
    scene = hand_scene(direction)
    q, answer = Language(scene, np.random.default_rng(0)).q_direction()
    assert q == "Which way does the red ball move?"
    assert answer == direction and is_correct(short_answer(answer), direction)
    assert caption(scene).startswith(f"There is one ball. The red ball starts in the centre and moves {direction}.")


def test_the_caption_names_the_balls_in_colour_order():
    """The balls at the start and at the end in the fixed order of COLORS, wherever they are: the order is what the
    tower sees (a blue ball at the top left comes after a red one at the bottom right)."""
    still = dict(colors=[], motion=[(0, None)])
    blue = Obj(0, "circle", "blue", "small", None, 0, 7, **still, start_pos=(0.1, 0.1), end_pos=(0.1, 0.1))
    red = Obj(1, "circle", "red", "small", None, 0, 7, **still, start_pos=(0.9, 0.9), end_pos=(0.9, 0.9))
    blue.colors, red.colors = [(0, "blue")], [(0, "red")]
    states = np.zeros((8, 2, 3))
    states[:, 0], states[:, 1] = (0.1, 0.1, 1), (0.9, 0.9, 1)
    scene = Scene(8, 8, "black", "plain", 0, [blue, red], [], states, [["blue", "red"]] * 8)
    assert caption(scene) == (
        "There are two balls. The red ball starts at the bottom right and does not move. The blue ball starts at "
        "the top left and does not move. At the end, the red ball is at the bottom right and the blue ball is at "
        "the top left."
    )


def oracle(scene, kind, q):
    """An independent answer from the scene's log, for the kinds whose question pins the fact down."""
    objs, n = scene.objects, scene.n_frames
    colour = [c for c in COLORS if re.search(rf"\bthe {c} ball\b", q)]
    if kind == "colors":
        t = 0 if "start" in q else n - 1
        return [c for c in COLORS if any(o.visible(t) and o.color_at(t) == c for o in objs)]
    if kind == "direction":
        (o,) = [o for o in objs if colour[0] in o.ever_colors]
        dirs = [d for _, d in o.motion]
        return (dirs[-1] if "at the end" in q else dirs[0]) or "does not move"
    if kind == "region":
        (o,) = [o for o in objs if colour[0] in o.ever_colors]
        return region(*(o.start_pos if re.search(r"start|appears", q) else o.end_pos))
    if kind == "color":
        if "turn into" in q:
            (o,) = [o for o in objs if colour[0] in o.ever_colors]
            return o.colors[-1][1]
        if "appears later" in q:
            (o,) = [o for o in objs if o.first > 0]
            return o.color
        if "disappears" in q:
            (o,) = [o for o in objs if o.last < n - 1]
            return o.color_at(o.last)
        starters = [o for o in objs if o.first == 0]
        if "starts" in q:
            (o,) = [o for o in starters if q.endswith(f"starts {LOCATION[region(*o.start_pos)]}?")]
        else:
            (o,) = [o for o in starters if (o.motion[0][1] or "does not move") in q]
        return o.color
    if kind == "count":
        if "start" in q:
            return NUMBERS[sum(o.first == 0 for o in objs)]
        if "end" in q:
            return NUMBERS[sum(o.visible(n - 1) for o in objs)]
        if "not move" in q:
            return NUMBERS[sum(o.speed is None for o in objs)]
        return NUMBERS[len(objs)]
    return None


def test_answers_follow_the_event_log():
    checked, kinds = 0, set()
    for i in range(120):
        scene, convs = make_clip(i, seed=11, questions=8)
        for c in convs[1:]:
            kinds.add(c["kind"])
            assert is_correct(c["answer_text"], c["answer"]), (c["answer_text"], c["answer"])
            assert c["answer_text"] == short_answer(c["answer"])
            expected = oracle(scene, c["kind"], c["question"])
            if expected is None:
                assert c["kind"] == "order" and c["answer"] in c["question"]
                continue
            if c["kind"] == "colors":
                assert re.findall(r"[a-z]+", c["answer"].replace(" and ", " ")) == expected
            else:
                assert c["answer"] == expected, (c["question"], c["answer"], expected)
            checked += 1
    assert checked > 600 and kinds == set(QUESTION_KINDS)


def test_caption_is_the_clips_and_never_repeats_a_sentence():
    """The caption is a function of the scene (not of the wording generator), names every ball and event, and no
    sentence comes twice (version 2's captions looped)."""
    verbs = {"appear": "appears", "disappear": "disappears", "bounce": "bounces off", "color_change": "turns"}
    for i in range(60):
        scene, convs = make_clip(i, seed=5)
        cap = convs[0]
        assert cap["kind"] == "caption" and cap["question"] in CAPTION_PROMPTS
        text = cap["answer_text"]
        assert text == caption(scene) == conversations(scene, np.random.default_rng(99), 0)[0]["answer_text"]
        sentences = text.split(". ")
        assert len(sentences) == len(set(sentences))
        for o in scene.objects:
            assert all(f"{c} ball" in text for c in o.ever_colors)
        for e in scene.events:
            assert verbs[e["type"]] in text, (e, text)


def test_questions_cover_every_kind():
    prompts, kinds = set(), set()
    for i in range(60):
        _, convs = make_clip(i, seed=2)
        prompts.add(convs[0]["question"])
        kinds |= {c["kind"] for c in convs[1:]}
    assert len(prompts) >= 4 and DESCRIBE_PROMPT in prompts | set(CAPTION_PROMPTS)
    assert kinds == set(QUESTION_KINDS)


def test_is_correct():
    assert is_correct("It moves to the left.", "left")
    assert not is_correct("It moves up and then left.", "left")
    assert is_correct("Does not move.", "does not move") and not is_correct("Left.", "does not move")
    assert is_correct("There are 3.", "three") and is_correct("Three.", "three")
    assert not is_correct("Two or three.", "three")
    assert is_correct("No, it does not.", "no") and not is_correct("Yes.", "no")
    assert is_correct("In the center.", "centre") and not is_correct("Top left.", "top")
    assert is_correct("Left side.", "left side") and not is_correct("Bottom left.", "left side")
    assert is_correct("The red ball appears.", "the red ball appears")
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
