"""The synthetic world: scenes of coloured shapes that move, bounce, collide, appear, disappear and change colour.

Everything here is numbers, no pixels and no words: `simulate` turns a random generator into a `Scene` (the objects,
their per-frame states and the event log); `render.py` draws it and `language.py` describes it. The simulation runs
in the unit square (x to the right, y downwards, radii in the same unit), so the same seed gives the same story at
every frame size.

Rules, chosen so that every fact a caption or an answer states is visible in the frames a model samples:
- (colour, shape) pairs are unique in a clip, and an object that changes colour has a shape no other object has, so
  "the red circle" or "the circle" always names one object;
- appearances, disappearances and colour changes leave at least `MIN_PHASE` frames on each side;
- motion is straight at one of two speeds in one of eight directions; walls reflect it (a `bounce` event), and two
  objects that touch while approaching both reverse (a `collide` event).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 230),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 25),
    "purple": (145, 55, 200),
    "pink": (250, 120, 190),
    "cyan": (40, 205, 220),
    "white": (245, 245, 245),
}
SIZES = {"small": 0.055, "medium": 0.08, "large": 0.11}  # radius, in units of the frame side
SPEEDS = {"slowly": 0.008, "quickly": 0.016}  # frame sides per frame
BACKGROUNDS = {  # name -> (RGB, colours not drawn on it)
    "black": ((18, 18, 22), ()),
    "dark gray": ((68, 68, 72), ()),
    "light gray": ((192, 192, 188), ("white", "yellow")),
    "beige": ((226, 212, 182), ("white", "yellow")),
}
TEXTURES = ("plain", "noise", "stripes", "gradient", "grid")
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


def simulate(rng: np.random.Generator, frames: tuple[int, int] = (16, 64), fps: int = 8) -> Scene:
    """One clip's story, drawn from `rng`: frame count in [frames[0], frames[1]], objects, schedule, physics."""
    lo, hi = frames
    if not 2 * MIN_PHASE + 2 <= lo <= hi:
        raise ValueError(f"frames must satisfy {2 * MIN_PHASE + 2} <= min <= max, got {frames}")
    n = int(rng.integers(lo, hi + 1))
    background = str(rng.choice(list(BACKGROUNDS)))
    texture = str(rng.choice(TEXTURES, p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    palette = [c for c in COLORS if c not in BACKGROUNDS[background][1]]

    n_start = int(rng.choice([1, 2, 3, 4], p=[0.15, 0.35, 0.3, 0.2]))
    n_late = int(rng.choice([0, 1, 2], p=[0.55, 0.35, 0.1])) if n > 3 * MIN_PHASE else 0
    objects: list[Obj] = []
    used: set[tuple[str, str]] = set()
    for i in range(n_start + n_late):
        while True:
            shape, color = str(rng.choice(SHAPES)), str(rng.choice(palette))
            if (color, shape) not in used:
                break
        used.add((color, shape))
        size = str(rng.choice(list(SIZES)))
        speed = None if rng.random() < 0.2 else str(rng.choice(list(SPEEDS)))
        first = 0 if i < n_start else int(rng.integers(MIN_PHASE, n - 2 * MIN_PHASE + 1))
        objects.append(Obj(i, shape, color, size, speed, first, n - 1))

    # disappearances and colour changes, each leaving MIN_PHASE frames on both sides
    for o in objects:
        if rng.random() < 0.25 and o.last - o.first + 1 >= 3 * MIN_PHASE:
            o.last = int(rng.integers(o.first + 2 * MIN_PHASE, n - MIN_PHASE + 1)) - 1  # gone from last+1
        o.colors = [(o.first, o.color)]
        unique_shape = sum(p.shape == o.shape for p in objects) == 1
        if unique_shape and rng.random() < 0.25 and o.last - o.first + 1 >= 2 * MIN_PHASE:
            t = int(rng.integers(o.first + MIN_PHASE, o.last - MIN_PHASE + 2))
            new = str(rng.choice([c for c in palette if c != o.color]))
            o.colors.append((t, new))

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


_EVENT_ORDER = {"appear": 0, "color_change": 1, "bounce": 2, "collide": 3, "disappear": 4}
_AXIS_DIRS = [(-1, 0), (1, 0), (0, -1), (0, 1)]
_DIAG_DIRS = [(-1, -1), (1, -1), (-1, 1), (1, 1)]


def _velocity(rng, speed: str | None) -> np.ndarray:
    if speed is None:
        return np.zeros(2)
    dirs = _AXIS_DIRS if rng.random() < 0.7 else _DIAG_DIRS
    d = np.asarray(dirs[int(rng.integers(len(dirs)))], dtype=float)
    return d / np.linalg.norm(d) * SPEEDS[speed]


def _place(rng, r: float, pos: np.ndarray, radii: np.ndarray, live: np.ndarray) -> np.ndarray:
    """A centre inside the frame that does not touch a live object (best of 50 tries)."""
    best, best_gap = None, -np.inf
    for _ in range(50):
        p = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
        gaps = np.linalg.norm(pos[live] - p, axis=1) - radii[live] - r if live.any() else np.array([1.0])
        gap = float(gaps.min())
        if gap > 0.03:
            return p
        if gap > best_gap:
            best, best_gap = p, gap
    return best


def _physics(rng, objects: list[Obj], n: int) -> tuple[np.ndarray, list[dict]]:
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
        # advance to t + 1; what changes direction there is logged at t + 1, the first frame that shows it
        moving = live & np.array([objects[i].visible(t + 1) for i in range(k)], dtype=bool)
        pos[moving] += vel[moving]
        turned: set[int] = set()
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
                turned.add(int(i))
        idx = np.flatnonzero(moving)
        for a_pos, a in enumerate(idx):
            for b in idx[a_pos + 1 :]:
                d = pos[a] - pos[b]
                if np.linalg.norm(d) < radii[a] + radii[b] and float(np.dot(vel[a] - vel[b], d)) < 0:
                    vel[a], vel[b] = -vel[a], -vel[b]
                    events.append({"frame": t + 1, "type": "collide", "objects": [int(a), int(b)]})
                    turned.update(i for i in (int(a), int(b)) if np.any(vel[i]))
        for i in sorted(turned):
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
