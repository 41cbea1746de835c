"""The synthetic world (version 3): small coloured balls that move, bounce off the walls, appear, disappear and change
colour on a plain black background.

Everything here is numbers, no pixels and no words: `simulate` turns a random generator into a `Scene` (the objects,
their per-frame states and the event log); `render.py` draws it and `language.py` describes it. The simulation runs
in the unit square (x to the right, y downwards, radii in the same unit), so the same seed gives the same story at
every frame size.

Version 3 (issue 23) is built around what a small from-scratch vision tower sees and around sparse information:
- objects differ only by colour (one shape, one size): version 2's towers named the colour of 99 % of object cells
  but the shape at chance (a 28 px cell sees an object's interior, a shape needs its outline), and its questions
  named objects by shape. An object is named by its colour, which is unique in a clip over the whole clip (also
  across colour changes), or by where it is;
- objects are small (radius `RADIUS`, ~7 px at 224) on one plain background, so the visual tokens that carry any
  fact are a few percent of the grid (`docs/BENCHMARKS.md`, testbed v3 overlap): pruning at random to 10 % then
  misses most of them, pruning guided by where the verifier looks need not;
- motion is along one axis at one speed (or none), and objects pass over each other (no collisions: with small
  objects they were rare, and a rare event is not learnt): direction, region, count, colour and the order of
  events are what the language asks about;
- appearances, disappearances and colour changes leave at least `MIN_PHASE` frames on each side, so each is seen
  by the frames a model samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle",)  # one shape: the towers cannot tell shapes apart at the patch size (see the docstring)
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 255),
    "yellow": (245, 225, 40),
    "orange": (250, 140, 20),
    "purple": (165, 70, 230),
    "pink": (255, 130, 200),
    "cyan": (40, 215, 230),
    "white": (245, 245, 245),
}
# radius in units of the frame side. "small" (~7 px at 224, under one token's cell in both families) is the world;
# "large" (~31 px, a few percent of the frame each) only the build's warm-up world, where a from-scratch language model
# learns to read the visual tokens before the information thins out (docs/DESIGN.md, Testbed: the warm-up);
# "medium" (~13 px, about one token's cell) a trial between them
SIZES = {"small": 0.03, "medium": 0.06, "large": 0.14}
RADIUS = SIZES["small"]
SPEEDS = {"quickly": 0.02}  # frame sides per frame: ~1 Qwen cell between two sampled frames of a 3-second clip
BACKGROUNDS = {"black": ((16, 16, 20), ())}  # name -> (RGB, colours not drawn on it)
TEXTURES = ("plain",)  # what `simulate` draws from
# what a world may be rendered on instead (`export.generate_world(texture=)`): "position", a background whose colour
# says where a cell is (render.POSITION_LEVELS), so a tower with relative positions only can see a ball's region
WORLD_TEXTURES = ("plain", "position")
WALLS = ("left", "right", "top", "bottom")
REGIONS = (
    ("top left", "top", "top right"),
    ("left side", "centre", "right side"),
    ("bottom left", "bottom", "bottom right"),
)
MIN_PHASE = 6  # frames an object/colour stays before/after a change


@dataclass
class Obj:
    id: int
    shape: str
    color: str  # colour when it first shows
    size: str  # small | medium | large
    speed: str | None  # slowly | quickly | None (it stays still)
    first: int  # first frame it is visible
    last: int  # last frame it is visible
    colors: list = field(default_factory=list)  # [(frame, colour)], from `first`
    motion: list = field(default_factory=list)  # [(frame, direction)], direction None when still
    start_pos: tuple = (0.0, 0.0)  # centre at `first`
    end_pos: tuple = (0.0, 0.0)  # centre at `last`

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    def color_at(self, frame: int) -> str:
        color = self.colors[0][1]
        for t, c in self.colors:
            if t <= frame:
                color = c
        return color

    def direction_at(self, frame: int) -> str | None:
        direction = self.motion[0][1]
        for t, d in self.motion:
            if t <= frame:
                direction = d
        return direction

    def visible(self, frame: int) -> bool:
        return self.first <= frame <= self.last

    @property
    def ever_colors(self) -> list[str]:
        return [c for _, c in self.colors]


@dataclass
class Scene:
    n_frames: int
    fps: int
    background: str
    texture: str
    texture_seed: int
    objects: list[Obj]
    events: list[dict]  # {"frame", "type", "objects": [ids]} (+ "walls" for bounce, "from"/"to")
    states: np.ndarray  # (F, K, 3) float: x, y, visible (0/1) per frame and object
    colors: list[list[str]]  # [frame][object] colour name

    def to_dict(self) -> dict:
        """The scene as JSON-able data: the clip's event log and everything the language is computed from."""
        return {
            "n_frames": self.n_frames,
            "fps": self.fps,
            "background": self.background,
            "texture": self.texture,
            "objects": [
                {
                    "id": o.id,
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "speed": o.speed,
                    "first": o.first,
                    "last": o.last,
                    "colors": [list(c) for c in o.colors],
                    "motion": [list(m) for m in o.motion],
                    "start": region(*o.start_pos),
                    "end": region(*o.end_pos),
                }
                for o in self.objects
            ],
            "events": self.events,
        }


def direction_name(vx: float, vy: float) -> str | None:
    """'left', 'up', ..., 'up and to the left' for diagonals; None for no motion. y grows downwards."""
    h = "left" if vx < -1e-9 else "right" if vx > 1e-9 else None
    v = "up" if vy < -1e-9 else "down" if vy > 1e-9 else None
    if h and v:
        return f"{v} and to the {h}"
    return h or v


def region(x: float, y: float) -> str:
    """The 3x3 grid cell a point lies in."""
    return REGIONS[min(int(y * 3), 2)][min(int(x * 3), 2)]


def region_margin(x: float, y: float) -> float:
    """Distance from the point to the nearest inner grid line: small values mean the region is borderline."""
    return min(abs(v - b) for v in (x, y) for b in (1 / 3, 2 / 3))


def simulate(rng: np.random.Generator, frames: tuple[int, int] = (16, 48), fps: int = 8, ball: str = "small") -> Scene:
    """One clip's story, drawn from `rng`: frame count in [frames[0], frames[1]], objects, schedule, physics; every
    ball of size `ball` (a SIZES name)."""
    if ball not in SIZES:
        raise ValueError(f"ball must be one of {sorted(SIZES)}, got {ball!r}")
    lo, hi = frames
    if not 2 * MIN_PHASE + 2 <= lo <= hi:
        raise ValueError(f"frames must satisfy {2 * MIN_PHASE + 2} <= min <= max, got {frames}")
    n = int(rng.integers(lo, hi + 1))
    background = str(rng.choice(list(BACKGROUNDS)))
    texture = str(rng.choice(TEXTURES))
    n_start = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.3, 0.15]))
    n_late = int(rng.choice([0, 1], p=[0.6, 0.4])) if n > 3 * MIN_PHASE else 0
    # every colour an object ever has is unique in the clip, so "the red ball" names one object at any moment
    free = [str(c) for c in rng.permutation(list(COLORS))]
    objects: list[Obj] = []
    for i in range(n_start + n_late):
        speed = None if rng.random() < 0.25 else "quickly"
        first = 0 if i < n_start else int(rng.integers(MIN_PHASE, n - 2 * MIN_PHASE + 1))
        objects.append(Obj(i, "circle", free.pop(), ball, speed, first, n - 1))
    # disappearances and colour changes, each leaving MIN_PHASE frames on both sides
    for o in objects:
        if rng.random() < 0.25 and o.last - o.first + 1 >= 3 * MIN_PHASE:
            o.last = int(rng.integers(o.first + 2 * MIN_PHASE, n - MIN_PHASE + 1)) - 1  # gone from last+1
        o.colors = [(o.first, o.color)]
        if free and rng.random() < 0.25 and o.last - o.first + 1 >= 2 * MIN_PHASE:
            t = int(rng.integers(o.first + MIN_PHASE, o.last - MIN_PHASE + 2))
            o.colors.append((t, free.pop()))

    events: list[dict] = []
    for o in objects:
        if o.first > 0:
            events.append({"frame": o.first, "type": "appear", "objects": [o.id]})
        if o.last < n - 1:
            events.append({"frame": o.last + 1, "type": "disappear", "objects": [o.id]})
        for t, c in o.colors[1:]:
            events.append({"frame": t, "type": "color_change", "objects": [o.id], "from": o.color, "to": c})

    states, motion_events = _physics(rng, objects, n)
    events = sorted(events + motion_events, key=lambda e: (e["frame"], _EVENT_ORDER[e["type"]], e["objects"]))
    colors = [[o.color_at(t) for o in objects] for t in range(n)]
    return Scene(n, fps, background, texture, int(rng.integers(2**31)), objects, events, states, colors)


_EVENT_ORDER = {"appear": 0, "color_change": 1, "bounce": 2, "disappear": 4}
_AXIS_DIRS = [(-1, 0), (1, 0), (0, -1), (0, 1)]


def _velocity(rng, speed: str | None) -> np.ndarray:
    """Along one axis (four directions a model can tell apart from a few frames), or none."""
    if speed is None:
        return np.zeros(2)
    return np.asarray(_AXIS_DIRS[int(rng.integers(len(_AXIS_DIRS)))], dtype=float) * SPEEDS[speed]


def _place(rng, r: float, pos: np.ndarray, radii: np.ndarray, live: np.ndarray) -> np.ndarray:
    """A centre inside the frame, clear of the walls and of live objects (best of 50 tries), and not within 0.04
    of an inner region boundary when that can be had (so "where does it start" has one clear answer)."""
    best, best_gap = None, -np.inf
    for _ in range(50):
        p = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        gaps = np.linalg.norm(pos[live] - p, axis=1) - radii[live] - r if live.any() else np.array([1.0])
        gap = min(float(gaps.min()), 0.1) + (0.05 if region_margin(*p) > 0.04 else 0.0)
        if gap >= 0.15:
            return p
        if gap > best_gap:
            best, best_gap = p, gap
    return best


def _physics(rng, objects: list[Obj], n: int) -> tuple[np.ndarray, list[dict]]:
    """Straight motion, walls reflect it (a `bounce` event logged at the first frame that shows the new
    direction); objects pass over one another."""
    k = len(objects)
    pos = np.zeros((k, 2))
    vel = np.stack([_velocity(rng, o.speed) for o in objects]) if k else np.zeros((0, 2))
    radii = np.array([o.radius for o in objects])
    placed = np.zeros(k, dtype=bool)
    states = np.zeros((n, k, 3))
    events: list[dict] = []
    for t in range(n):
        live = np.array([o.visible(t) for o in objects], dtype=bool)
        for i, o in enumerate(objects):
            if o.first == t:
                pos[i] = _place(rng, radii[i], pos, radii, live & placed)
                placed[i] = True
                o.motion = [(t, direction_name(*vel[i]))]
                o.start_pos = (float(pos[i, 0]), float(pos[i, 1]))
            if o.last == t:
                o.end_pos = (float(pos[i, 0]), float(pos[i, 1]))
        states[t, :, :2] = pos
        states[t, :, 2] = live
        if t == n - 1:
            break
        moving = live & np.array([objects[i].visible(t + 1) for i in range(k)], dtype=bool)
        pos[moving] += vel[moving]
        for i in np.flatnonzero(moving):
            hit = []
            if pos[i, 0] - radii[i] < 0 and vel[i, 0] < 0:
                hit.append("left")
            if pos[i, 0] + radii[i] > 1 and vel[i, 0] > 0:
                hit.append("right")
            if pos[i, 1] - radii[i] < 0 and vel[i, 1] < 0:
                hit.append("top")
            if pos[i, 1] + radii[i] > 1 and vel[i, 1] > 0:
                hit.append("bottom")
            for wall in hit:
                axis = 0 if wall in ("left", "right") else 1
                edge = radii[i] if wall in ("left", "top") else 1 - radii[i]
                pos[i, axis] = 2 * edge - pos[i, axis]
                vel[i, axis] = -vel[i, axis]
            if hit:
                events.append({"frame": t + 1, "type": "bounce", "objects": [int(i)], "walls": hit})
                objects[i].motion.append((t + 1, direction_name(*vel[i])))
    for o in objects:
        o.motion = _dedupe(o.motion)
    return states, events


def _dedupe(motion: list) -> list:
    out = []
    for t, d in motion:
        if not out or out[-1][1] != d:
            out.append((t, d))
    return out
