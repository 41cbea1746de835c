"""The visual-token probe of the testbed recipe: token layouts, cell coverage and labels on hand-made scenes."""

import numpy as np
import pytest
import torch

from specvlm.testbed import world
from specvlm.testbed.probe import (
    COLOR_CLASSES,
    MOTION_CLASSES,
    REGION_CLASSES,
    VisualProbe,
    WordAligned,
    background_energy,
    cell_cover,
    token_grid,
    visual_labels,
)
from specvlm.testbed.render import object_masks, render_clip
from specvlm.testbed.world import COLORS, Obj, Scene


@pytest.fixture(autouse=True)
def large_objects(monkeypatch):
    """Hand-made scenes with objects large enough to fill grid cells at 32-64 px (world version 3 has only small
    balls)."""
    monkeypatch.setitem(world.SIZES, "large", 0.2)


def scene_with(objects, positions, n_frames=4, colors=None):
    """A still scene: objects[k] at positions[k] (unit square) in every frame."""
    states = np.zeros((n_frames, len(objects), 3))
    for k, (x, y) in enumerate(positions):
        states[:, k] = (x, y, 1.0)
    colors = colors or [[o.color for o in objects] for _ in range(n_frames)]
    return Scene(n_frames, 8, "black", "plain", 0, objects, [], states, colors)


def obj(i, shape, color, size="large"):
    o = Obj(i, shape, color, size, None, 0, 3)
    o.colors = [(0, color)]
    return o


def test_token_grid_layouts():
    qwen = {"video_grid_thw": torch.tensor([[2, 8, 8]])}
    assert token_grid(qwen, 2 * 4 * 4, 4) == (2, 4, 0)
    assert token_grid({}, 4 * 9 + 1, 4) == (4, 3, 1)  # LLaVA-OV: 4 frames of 3x3, one newline
    with pytest.raises(ValueError, match="not 4 square grids"):
        token_grid({}, 4 * 9, 4)
    with pytest.raises(ValueError, match="unexpected Qwen video grid"):
        token_grid(qwen, 31, 4)


def test_cell_cover_is_the_area_fraction():
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, :2, :2] = 1  # object 0 fills the top-left quarter
    masks[0, 3, 3] = 2  # object 1 one pixel of the bottom-right quarter
    cover = cell_cover(masks, 2, 2)
    assert cover.shape == (1, 3, 2, 2)
    assert torch.allclose(cover.sum(1), torch.ones(1, 2, 2))
    assert cover[0, 1, 0, 0] == 1 and cover[0, 2, 1, 1] == 0.25 and cover[0, 0, 1, 1] == 0.75


def test_object_masks_match_the_rendered_frames():
    s = scene_with([obj(0, "circle", "red"), obj(1, "circle", "blue")], [(0.3, 0.3), (0.7, 0.7)])
    masks = object_masks(s, 64, [0, 2])
    frames = render_clip(s, 64)[[0, 2]]
    for k, color in ((1, COLORS["red"]), (2, COLORS["blue"])):
        painted = (frames == np.array(color)).all(-1)
        assert (masks == k).sum() > 50 and ((masks == k) == painted).mean() > 0.99  # edges may antialias


def test_visual_labels_name_the_object_in_each_cell():
    # a large red ball in the top-left cell and a large blue ball in the bottom-right cell of a 2x2 grid, both still
    s = scene_with([obj(0, "circle", "red"), obj(1, "circle", "blue")], [(0.25, 0.25), (0.75, 0.75)])
    labels = visual_labels(s, [0, 1, 2, 3], 64, groups=2, side=2, extra=1)
    assert labels.shape == (2 * 4 + 1, 3)
    still = MOTION_CLASSES.index("still")
    red = [COLOR_CLASSES.index("red"), REGION_CLASSES.index("top left"), still]
    blue = [COLOR_CLASSES.index("blue"), REGION_CLASSES.index("bottom right"), still]
    for g in range(2):
        grid = labels[4 * g : 4 * g + 4].view(2, 2, 3)
        assert grid[0, 0].tolist() == red and grid[1, 1].tolist() == blue
        assert grid[0, 1].tolist() == [0, 0, 0] and grid[1, 0].tolist() == [0, 0, 0]
    assert labels[-1].tolist() == [-100, -100, -100]
    one_frame = visual_labels(s, [0, 1], 64, groups=2, side=2, extra=0)  # one frame per group: no motion to see
    assert one_frame[0].tolist() == red[:2] + [-100]


def test_visual_labels_use_each_groups_colour_and_motion():
    o = obj(0, "circle", "red")
    o.colors = [(0, "red"), (2, "green")]
    s = scene_with([o], [(0.5, 0.5)], colors=[["red"], ["red"], ["green"], ["green"]])
    s.states[:, 0, 0] = [0.5, 0.52, 0.54, 0.56]  # moving right
    labels = visual_labels(s, [0, 1, 2, 3], 32, groups=2, side=4, extra=0).view(2, 4, 4, 3)
    assert labels[:, 1, 2, 0].tolist() == [COLOR_CLASSES.index("red"), COLOR_CLASSES.index("green")]
    assert labels[:, 1, 2, 2].tolist() == [MOTION_CLASSES.index("right")] * 2
    assert labels[:, 0, 0].tolist() == [[0, 0, 0], [0, 0, 0]]


def test_probe_loss_learns_and_ignores_the_extra_tokens():
    torch.manual_seed(0)
    labels = torch.tensor([[1, 1, -100], [0, 0, 0], [3, 5, 2], [-100, -100, -100]])
    embeds = torch.randn(4, 8)
    probe = VisualProbe(8)
    first = probe.loss(embeds, labels)
    opt = torch.optim.SGD(probe.parameters(), lr=0.5)
    with torch.enable_grad():  # the suite runs with autograd off
        for _ in range(50):
            opt.zero_grad()
            loss = probe.loss(embeds, labels)
            loss.backward()
            opt.step()
    assert loss < 0.2 * first
    poisoned = embeds.clone()
    poisoned[3] = float("nan")  # an ignored token cannot reach the loss
    assert torch.isfinite(probe.loss(poisoned, labels))


def test_background_energy_is_the_backgrounds_share_of_the_squared_norm_and_trains_it_down():
    """background_energy = mean |bg|^2 / mean |obj|^2 with the denominator a constant: 0 without a background or
    without an object; as part of the probe's loss (`quiet`) its gradient reaches the background rows only and
    lowers their norm, while the object rows keep theirs."""
    embeds = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0]])  # squared norms 25, 1, 4, 100
    obj = torch.tensor([True, False, False, True])
    torch.testing.assert_close(background_energy(embeds, obj), torch.tensor(2.5 / 62.5))
    assert float(background_energy(embeds, torch.ones(4, dtype=torch.bool))) == 0.0
    assert float(background_energy(embeds, torch.zeros(4, dtype=torch.bool))) == 0.0
    labels = torch.tensor([[1, 1, 1], [0, 0, 0], [0, 0, 0], [2, 2, 2]])
    probe, loud = VisualProbe(2, quiet=2.0), VisualProbe(2)
    loud.load_state_dict(probe.state_dict())
    with torch.enable_grad():  # the suite runs with autograd off
        x = embeds.clone().requires_grad_(True)
        extra = probe.loss(x, labels) - loud.loss(x, labels)
        torch.testing.assert_close(extra, torch.tensor(2 * 2.5 / 62.5), rtol=1e-5, atol=1e-6)
        (grad,) = torch.autograd.grad(extra, x)
    assert torch.count_nonzero(grad[obj]) == 0 and torch.count_nonzero(grad[~obj]) > 0
    assert float((embeds[~obj] * grad[~obj]).sum()) > 0  # a step against it shrinks the background rows


def test_word_aligned_colour_read_out_pulls_a_token_towards_its_colour_word():
    """The colour read-out fixed to word embeddings: its logits are scale * x @ words^T, the words stay as they are,
    and training the token's embedding through it turns the token towards its colour's word."""
    torch.manual_seed(0)
    words = torch.randn(len(COLOR_CLASSES), 16)
    head = WordAligned(words)
    x = torch.randn(3, 16)
    torch.testing.assert_close(head(x), x @ words.T)
    assert [n for n, _ in head.named_parameters()] == ["scale"]  # the words are a buffer: never trained
    with pytest.raises(ValueError, match=r"colour_words must be \(10, 8\)"):
        VisualProbe(8, colour_words=words)
    probe = VisualProbe(16, colour_words=words)
    red = COLOR_CLASSES.index("red")
    token = torch.randn(1, 16, requires_grad=True)
    labels = torch.tensor([[red, 1, 1]])

    def cosines() -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(token, words)  # (classes,)

    before = float(cosines()[red])
    opt = torch.optim.SGD([token], lr=0.5)
    with torch.enable_grad():
        for _ in range(30):
            opt.zero_grad()
            probe.loss(token, labels).backward()
            opt.step()
    after = cosines()
    assert int(after.argmax()) == red and float(after[red]) > before + 0.3, (before, after)
    torch.testing.assert_close(probe.heads["color"].words, words)
