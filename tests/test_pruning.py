"""Selection functions on hand-made score vectors and layouts: budgets, ordering, the Stage I/II split."""

import pytest
import torch

from specvlm.pruning import (METHODS, Layout, budget, evenly, grid_fill, select, select_frames, select_specvlm,
                             select_temporal, stage1)


def test_budget_is_floor_and_validated():
    assert budget(100, 0.1) == 10 and budget(33, 0.25) == 8 and budget(7, 1.0) == 7 and budget(5, 0.1) == 0
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError):
            budget(10, bad)


def test_evenly_is_the_papers_linspace_stride():
    assert evenly(torch.arange(10), 4).tolist() == [0, 3, 6, 9]
    assert evenly(torch.arange(10, 20), 1).tolist() == [10]
    assert evenly(torch.arange(3), 5).tolist() == [0, 1, 2]


def test_stage1_reaches_the_mass_with_fewest_tokens():
    scores = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    assert stage1(scores, 5, 0.4).tolist() == [1]          # 0.4 alone holds 40%
    assert stage1(scores, 5, 0.5).tolist() == [1, 3]       # 0.7 >= 0.5
    assert stage1(scores, 1, 0.9).tolist() == [1]          # capped by the budget


def test_specvlm_two_stages():
    # 20 tokens; two hot tokens hold most of the mass, the rest are flat
    scores = torch.full((20,), 0.01)
    scores[[4, 15]] = torch.tensor([0.5, 0.3])
    keep = select_specvlm(scores, 6, 0.4)
    assert keep.tolist() == sorted(keep.tolist()) and len(keep) == 6
    assert 4 in keep.tolist() and 15 not in keep.tolist()[:1]
    # Stage I = [4]; Stage II = 5 evenly spaced among the 19 others
    others = [i for i in range(20) if i != 4]
    expected = sorted([4] + [others[j] for j in torch.linspace(0, 18, 5).long().tolist()])
    assert keep.tolist() == expected


def test_specvlm_edge_cases():
    scores = torch.rand(9, generator=torch.Generator().manual_seed(0))
    assert select("specvlm", 9, 1.0, scores=scores).tolist() == list(range(9))   # keep everything
    assert select("specvlm", 9, 0.1, scores=scores).numel() == 0                # budget 0: text-only draft
    assert select("specvlm", 1, 1.0, scores=scores[:1]).tolist() == [0]
    flat = torch.zeros(10)                                                       # no attention signal at all
    assert select_specvlm(flat, 3, 0.4).tolist() == [0, 4, 9]


def test_every_method_respects_budget_order_and_determinism():
    layout = Layout((((4, 3, 3), 1, 37),))       # 4 frames of 3x3 plus one newline token
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


def test_temporal_drops_tokens_that_repeat_the_previous_frame():
    layout = Layout((((3, 2, 2), 0, 12),))
    frame = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    features = torch.cat([frame, frame, frame])                       # a static video ...
    features[4 + 2] = torch.randn(8, generator=torch.Generator().manual_seed(9))   # ... except one token in frame 1
    keep = select_temporal(features, layout, 5)
    assert keep.tolist() == [0, 1, 2, 3, 6]


def test_frames_keeps_whole_evenly_spaced_frames():
    layout = Layout((((6, 2, 2), 0, 24),))
    assert select_frames(layout, 8).tolist() == [0, 1, 2, 3, 20, 21, 22, 23]


def test_grid_fill_spreads_over_frames_and_space():
    layout = Layout((((2, 4, 4), 0, 32),))
    picked = grid_fill(layout, torch.tensor([], dtype=torch.long), 8)
    assert picked.numel() == 8 and (picked < 16).sum() == 4            # half per frame
    rows, cols = (picked % 16) // 4, (picked % 16) % 4
    assert set(rows.tolist()) == {1, 3} and set(cols.tolist()) == {1, 3}   # a 2-D lattice, not a 1-D run


def test_scores_are_required_where_used():
    with pytest.raises(ValueError, match="attention scores"):
        select("specvlm", 10, 0.5)
    with pytest.raises(ValueError, match="unknown pruning"):
        select("fastv", 10, 0.5)
