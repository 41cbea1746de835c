"""Selection functions on hand-made score vectors and layouts: budgets, ordering, the Stage I/II split."""

import pytest
import torch

from specvlm.drafters.pruning import (
    METHODS,
    Layout,
    budget,
    evenly,
    grid_fill,
    select,
    select_frames,
    select_specvlm,
    select_temporal,
    select_window,
    shares,
    stage1,
)
from specvlm.errors import SpecVLMError


def test_budget_is_floor_and_validated():
    assert budget(100, 0.1) == 10 and budget(33, 0.25) == 8 and budget(7, 1.0) == 7 and budget(5, 0.1) == 0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(SpecVLMError):
            budget(10, bad)


def test_evenly_is_the_papers_linspace_stride():
    assert evenly(torch.arange(10), 4).tolist() == [0, 3, 6, 9]
    assert evenly(torch.arange(10, 20), 1).tolist() == [10]
    assert evenly(torch.arange(3), 5).tolist() == [0, 1, 2]


def test_stage1_reaches_the_mass_with_fewest_tokens():
    scores = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    assert stage1(scores, 5, 0.4).tolist() == [1]  # 0.4 alone holds 40%
    assert stage1(scores, 5, 0.5).tolist() == [1, 3]  # 0.7 >= 0.5
    assert stage1(scores, 1, 0.9).tolist() == [1]  # capped by the budget


def test_specvlm_two_stages():
    # 20 tokens; two hot tokens hold most of the mass, the rest are flat
    scores = torch.full((20,), 0.01)
    scores[[4, 15]] = torch.tensor([0.5, 0.3])
    keep = select_specvlm(scores, 6, 0.4)
    assert keep.tolist() == sorted(keep.tolist()) and len(keep) == 6
    # the second hot token (0.3) is beyond λ's mass, and Stage II's stride does not look at scores: dropped
    assert stage1(scores, 6, 0.4).tolist() == [4] and 4 in keep.tolist() and 15 not in keep.tolist()
    assert {4, 15} <= set(select_specvlm(scores, 6, 0.8).tolist())  # a larger λ takes it in Stage I
    # Stage I = [4]; Stage II = 5 evenly spaced among the 19 others
    others = [i for i in range(20) if i != 4]
    expected = sorted([4] + [others[j] for j in torch.linspace(0, 18, 5).long().tolist()])
    assert keep.tolist() == expected


def test_specvlm_edge_cases():
    scores = torch.rand(9, generator=torch.Generator().manual_seed(0))
    assert select("specvlm", 9, 1.0, scores=scores).tolist() == list(range(9))  # keep everything
    assert select("specvlm", 9, 0.1, scores=scores).numel() == 0  # budget 0: text-only draft
    assert select("specvlm", 1, 1.0, scores=scores[:1]).tolist() == [0]
    flat = torch.zeros(10)  # no attention signal at all
    assert select_specvlm(flat, 3, 0.4).tolist() == [0, 4, 9]


def test_every_method_respects_budget_order_and_determinism():
    layout = Layout((((4, 3, 3), 1, 37),))  # 4 frames of 3x3 plus one newline token
    scores = torch.rand(37, generator=torch.Generator().manual_seed(1))
    features = torch.randn(37, 8, generator=torch.Generator().manual_seed(2))
    for method in METHODS:
        for ratio in (0.05, 0.25, 0.5, 1.0):
            a = select(method, 37, ratio, scores=scores, layout=layout, features=features)
            b = select(method, 37, ratio, scores=scores, layout=layout, features=features)
            assert torch.equal(a, b), method
            assert a.numel() == budget(37, ratio), (method, ratio)
            assert a.tolist() == sorted(set(a.tolist())) and (a.numel() == 0 or 0 <= a.min() and a.max() < 37)


def test_random_depends_on_seed_and_windows_are_contiguous():
    a = select("random", 100, 0.1, seed=0)
    assert not torch.equal(a, select("random", 100, 0.1, seed=1))
    assert select("window-front", 10, 0.3).tolist() == [0, 1, 2]
    assert select("window-middle", 10, 0.3).tolist() == [3, 4, 5]
    assert select("window-back", 10, 0.3).tolist() == [7, 8, 9]


def test_shares_are_proportional_exact_and_spread():
    assert shares([4, 4, 4, 4], 2) == [1, 0, 1, 0]  # the extra tokens do not pile up at the front
    assert shares([10, 10, 1], 5) == [2, 3, 0]  # each part: floor or ceiling of k*size/total
    assert shares([0, 4, 4, 0], 8) == [0, 4, 4, 0] and shares([3, 5], 0) == [0, 0] and shares([0, 0], 0) == [0, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        sizes = torch.randint(0, 9, (int(torch.randint(1, 8, (1,), generator=g)),), generator=g).tolist()
        k = int(torch.randint(0, sum(sizes) + 1, (1,), generator=g))
        q = shares(sizes, k)
        assert sum(q) == k and all(0 <= a <= size for a, size in zip(q, sizes)), (sizes, k, q)
        assert all(abs(a - k * size / max(sum(sizes), 1)) < 1 for a, size in zip(q, sizes)), (sizes, k, q)


def static_video(frames: int, h: int = 2, w: int = 2, dim: int = 8) -> torch.Tensor:
    """`frames` identical frames of h*w random tokens, flattened frame-major as the prompt holds them."""
    return torch.randn(h * w, dim, generator=torch.Generator().manual_seed(0)).repeat(frames, 1)


def frames_of(keep: torch.Tensor, per_frame: int) -> list[int]:
    return sorted(set((keep // per_frame).tolist()))


def test_temporal_static_video_keeps_the_references_and_one_token_per_other_frame():
    layout = Layout((((8, 2, 2), 0, 32),))  # two groups of 4 frames: references are frames 0 and 4
    keep = select_temporal(static_video(8), layout, 14)  # 8 reference tokens + 6 for the 6 other frames
    references = list(range(0, 4)) + list(range(16, 20))
    assert set(references) <= set(keep.tolist())
    others = [i for i in keep.tolist() if i not in references]
    assert len(others) == 6 and frames_of(torch.tensor(others), 4) == [1, 2, 3, 5, 6, 7]
    fewer = select_temporal(static_video(8), layout, 10)  # only 2 tokens beyond the references
    assert set(references) <= set(fewer.tolist()) and len(frames_of(fewer, 4)) == 4


def test_temporal_keeps_what_changed_from_the_reference_frame():
    layout = Layout((((8, 2, 2), 0, 32),))
    features = static_video(8)
    new = torch.randn(2, 8, generator=torch.Generator().manual_seed(9))
    features[4 * 2 + 1] = new[0]  # frame 2, position 1: one token changes
    features[4 * 5 + 3 : 4 * 8 : 4] = new[1]  # position 3 changes in frame 5 and stays changed to 7
    keep = select_temporal(features, layout, 14).tolist()
    assert 9 in keep
    # compared with the group's reference (frame 4), not with the previous frame: kept in frames 5, 6 and 7
    assert {23, 27, 31} <= set(keep)
    assert 10 not in keep and 11 not in keep  # an unchanged token of frame 2 lost to the changed one


def test_temporal_small_budget_spreads_over_frames():
    layout = Layout((((4, 3, 3), 0, 36),))  # one group: its reference frame alone needs 9 tokens
    features = torch.randn(36, 8, generator=torch.Generator().manual_seed(3))
    for k in (2, 3, 5, 8):
        keep = select_temporal(features, layout, k)
        assert keep.numel() == k and not torch.equal(keep, select_window(36, k, "front"))
        assert len(frames_of(keep, 9)) >= 2, (k, keep.tolist())
    # a budget that exactly holds the reference frame keeps it whole (DyCoke at 75 % pruning with windows of 4)
    assert select_temporal(features, layout, 9).tolist() == list(range(9))


def test_temporal_is_deterministic_and_budget_exact_on_mixed_layouts():
    # an image without a grid, a 5-frame video (groups of 4 and 1) with a newline tail
    layout = Layout(((None, 0, 6), ((5, 2, 3), 1, 31)))
    features = torch.randn(37, 8, generator=torch.Generator().manual_seed(4))
    for k in range(38):
        torch.manual_seed(k)  # the global RNG must not matter
        a = select_temporal(features, layout, k)
        torch.manual_seed(k + 100)
        assert torch.equal(a, select_temporal(features, layout, k))
        assert a.numel() == k and a.tolist() == sorted(set(a.tolist())) and (k == 0 or int(a.max()) < 37)
    # the references (image, frames 0 and 4, tail) are 6 + 6 + 6 + 1 tokens: kept whole once affordable
    references = set(range(6)) | set(range(6, 12)) | set(range(30, 37))
    assert references <= set(select_temporal(features, layout, 20).tolist())


def test_frames_keeps_whole_evenly_spaced_frames():
    layout = Layout((((6, 2, 2), 0, 24),))
    assert select_frames(layout, 8).tolist() == [0, 1, 2, 3, 20, 21, 22, 23]


def test_frames_below_one_frame_keeps_tokens_evenly_from_the_middle_frame():
    layout = Layout((((5, 3, 3), 0, 45),))
    assert select_frames(layout, 4).tolist() == [18, 20, 23, 26]  # frame 2 of 0..4, linspace over its 9 tokens
    assert select_frames(layout, 1).tolist() == [18]
    # one frame and a bit: frames 0 and 4, the second cut to 2 tokens spread over it
    assert select_frames(layout, 11).tolist() == list(range(9)) + [36, 44]


def test_grid_fill_spreads_over_frames_and_space():
    layout = Layout((((2, 4, 4), 0, 32),))
    picked = grid_fill(layout, torch.tensor([], dtype=torch.long), 8)
    assert picked.numel() == 8 and (picked < 16).sum() == 4  # half per frame
    rows, cols = (picked % 16) // 4, (picked % 16) % 4
    assert set(rows.tolist()) == {1, 3} and set(cols.tolist()) == {1, 3}  # a 2-D lattice, not a 1-D run


def test_scores_are_required_where_used():
    with pytest.raises(ValueError, match="attention scores"):
        select("specvlm", 10, 0.5)
    with pytest.raises(ValueError, match="unknown pruning"):
        select("fastv", 10, 0.5)
