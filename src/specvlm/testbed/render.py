"""Scene -> RGB frames (numpy for the background, Pillow's ImageDraw for the shapes: ~0.1 ms a frame)."""

from __future__ import annotations

import math

import numpy as np

from .world import BACKGROUNDS, COLORS, Scene


def _polygon(n: int, r_in: float = 1.0, rot: float = -math.pi / 2) -> list[tuple[float, float]]:
    """n points (or 2n alternating outer/inner points when r_in < 1) on the unit circle, first one at the top."""
    if r_in < 1.0:
        return [
            (
                (1.0 if k % 2 == 0 else r_in) * math.cos(rot + k * math.pi / n),
                (1.0 if k % 2 == 0 else r_in) * math.sin(rot + k * math.pi / n),
            )
            for k in range(2 * n)
        ]
    return [(math.cos(rot + 2 * math.pi * k / n), math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]


_W = 0.36  # half-width of the cross's arms
UNIT_SHAPES = {  # outlines in units of the radius; circle is drawn as an ellipse
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -1.0), (0.92, 0.72), (-0.92, 0.72)],
    "star": _polygon(5, 0.45),
    "diamond": [(0.0, -1.0), (0.75, 0.0), (0.0, 1.0), (-0.75, 0.0)],
    "hexagon": _polygon(6, rot=0.0),
    "cross": [
        (-_W, -1),
        (_W, -1),
        (_W, -_W),
        (1, -_W),
        (1, _W),
        (_W, _W),
        (_W, 1),
        (-_W, 1),
        (-_W, _W),
        (-1, _W),
        (-1, -_W),
        (-_W, -_W),
    ],
}


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    """One object centred at (cx, cy) pixels with radius r, filled with `fill` (an RGB triple or a label)."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon([(cx + px * r, cy + py * r) for px, py in UNIT_SHAPES[shape]], fill=fill)


# the "position" texture: red rises by this many levels from the left edge to the right, blue from the top to the
# bottom. Qwen2.5-VL's tower has only relative positions (2-D rope), so on a plain background a ball's token cannot
# say where it is and the region read-out stays at chance (docs/DESIGN.md, Testbed); the background's colour can.
# Far below every ball colour (world.COLORS), so the balls stay as distinct as on black.
POSITION_LEVELS = 48.0


def background(scene: Scene, size: int) -> np.ndarray:
    """(size, size, 3) uint8: the plain colour plus a faint, static texture (amplitude about 10 levels; "position":
    a 2-D colour gradient, `POSITION_LEVELS`)."""
    base = np.asarray(BACKGROUNDS[scene.background][0], dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if scene.texture == "noise":
        rng = np.random.default_rng(scene.texture_seed)
        delta = rng.normal(0.0, 4.0, size=(size, size)).astype(np.float32)
    elif scene.texture == "stripes":
        period = size / 8
        delta = 8.0 * (np.floor((yy * size) / period) % 2 - 0.5)
    elif scene.texture == "gradient":
        delta = 20.0 * (yy - 0.5)
    elif scene.texture == "position":  # where a cell is, in its colour (see POSITION_LEVELS)
        delta = POSITION_LEVELS * np.stack([xx, np.zeros_like(xx), yy], axis=-1)
    elif scene.texture == "grid":
        step = max(size // 8, 4)
        iy, ix = np.mgrid[0:size, 0:size]
        delta = np.where((iy % step == 0) | (ix % step == 0), 14.0, 0.0).astype(np.float32)
    else:
        delta = np.zeros((size, size), dtype=np.float32)
    if delta.ndim == 2:  # the same on every channel
        delta = delta[..., None]
    return np.clip(base[None, None, :] + delta, 0, 255).astype(np.uint8)


def render_clip(scene: Scene, size: int = 224) -> np.ndarray:
    """(F, size, size, 3) uint8 RGB frames of the scene."""
    from PIL import Image, ImageDraw

    if size < 32 or size % 2:
        raise ValueError(f"frame size must be an even number >= 32 (yuv420p halves it), got {size}")
    bg = Image.fromarray(background(scene, size))
    out = np.empty((scene.n_frames, size, size, 3), dtype=np.uint8)
    for t in range(scene.n_frames):
        img = bg.copy()
        draw = ImageDraw.Draw(img)
        for k, o in enumerate(scene.objects):
            x, y, live = scene.states[t, k]
            if not live:
                continue
            _draw_shape(draw, o.shape, x * size, y * size, o.radius * size, COLORS[scene.colors[t][k]])
        out[t] = np.asarray(img)
    return out


def object_masks(scene: Scene, size: int, frames) -> np.ndarray:
    """(len(frames), size, size) uint8: which object each pixel of the given frames shows (object index + 1, 0 for
    the background), drawn in the order `render_clip` paints them, so a later object covers an earlier one."""
    from PIL import Image, ImageDraw

    out = np.zeros((len(frames), size, size), dtype=np.uint8)
    for n, t in enumerate(frames):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        for k, o in enumerate(scene.objects):
            x, y, live = scene.states[t, k]
            if not live:
                continue
            _draw_shape(draw, o.shape, x * size, y * size, o.radius * size, k + 1)
        out[n] = np.asarray(img)
    return out
