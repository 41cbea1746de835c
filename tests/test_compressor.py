"""The elastic visual compressor: each primitive's output shape and ratio, the three modes, the gate."""

import math

import pytest
import torch

from specvlm.drafters.compressor import (
    Conv,
    Pool,
    Prune,
    Resampler,
    TextOnly,
    VisualCompressor,
    avg_pool,
    compress_sequence,
    make_branch,
    prune_indices,
    question_features,
)

H = 16


@pytest.mark.parametrize("n", [1, 7, 20, 61])
@pytest.mark.parametrize("ratio", [1, 2, 3, 5, 20])
def test_prune_and_pool_keep_ceil_n_over_r(n, ratio):
    x = torch.randn(n, H)
    m = math.ceil(n / ratio)
    strided = Prune(ratio)(x)
    assert strided.shape == (m, H) and torch.equal(strided, x[::ratio])
    random = Prune(ratio, random=True, seed=3).eval()
    kept = prune_indices(n, ratio, torch.Generator().manual_seed(3), random=True)
    assert torch.equal(random(x), x[kept]) and torch.equal(random(x), random(x))  # seeded: same draw each call
    assert kept.tolist() == sorted(set(kept.tolist())) and len(kept) == m  # order kept, no repeats
    pooled = Pool(ratio)(x)
    assert pooled.shape == (m, H)
    assert torch.allclose(pooled[0], x[:ratio].mean(0), atol=1e-6)
    assert torch.allclose(pooled[-1], x[(m - 1) * ratio :].mean(0), atol=1e-6)  # a short last run: its own mean


def test_pool_matches_torch_when_divisible():
    x = torch.randn(24, H)
    expected = torch.nn.functional.avg_pool1d(x.T[None], 3, 3)[0].T
    assert torch.allclose(avg_pool(x, 3), expected, atol=1e-6)


@pytest.mark.parametrize("ratio", [2, 3, 5])
def test_conv_is_strided_and_starts_as_pooling(ratio):
    conv = Conv(H, ratio)
    x = torch.randn(17, H)
    out = conv(x)
    assert out.shape == (math.ceil(17 / ratio), H)
    assert sum(p.numel() for p in conv.parameters()) == ratio * H * H + H
    full = (17 // ratio) * ratio
    assert torch.allclose(out[: 17 // ratio], avg_pool(x[:full], ratio), atol=1e-5)  # init = average pooling


def test_conv_ratio_is_capped():
    with pytest.raises(ValueError, match="1..5"):
        Conv(H, 6)
    with pytest.raises(ValueError, match="1..5"):
        make_branch("conv:20", H)


@pytest.mark.parametrize("queries", [1, 2, 8])
def test_resampler_returns_its_queries(queries):
    r = Resampler(H, queries, heads=2)
    for n in (1, 5, 40):
        x = torch.randn(n, H)
        out = r(x)
        assert out.shape == (queries, H)
        assert torch.allclose(out, x.mean(0).expand(queries, H), atol=1e-5)  # untrained: mean-pooled span
    assert r(torch.randn(0, H)).shape == (0, H)


def test_text_only_drops_the_span():
    x = torch.randn(12, H)
    assert TextOnly()(x).shape == (0, H)
    c = VisualCompressor(H, "select", branches=["text"])
    seq = torch.randn(20, H)
    out, row_of = compress_sequence(seq, [(5, 12)], c, torch.randn(H))
    assert out.shape == (8, H)
    assert torch.equal(out, torch.cat([seq[:5], seq[17:]]))
    assert row_of[5:17].eq(-1).all() and row_of[:5].tolist() == list(range(5)) and row_of[17:].tolist() == [5, 6, 7]


def test_compress_sequence_several_spans():
    c = VisualCompressor(H, "concat", branches=["pool:4"])
    seq = torch.randn(30, H)
    out, row_of = compress_sequence(seq, [(2, 8), (15, 12)], c, None)
    assert out.shape == (30 - 8 - 12 + 2 + 3, H)
    assert torch.equal(out[row_of[row_of >= 0]], seq[row_of >= 0])  # text rows survive unchanged, in order
    assert torch.allclose(out[2:4], avg_pool(seq[2:10], 4))


def test_branch_specs():
    assert [
        make_branch(s, H, heads=2).spec
        for s in ("prune:20", "prune_random:4", "pool:3", "conv:3", "resampler:2", "text")
    ] == ["prune:20", "prune_random:4", "pool:3", "conv:3", "resampler:2", "text"]
    for bad in ("pool", "pool:0", "pool:x", "blur:3", "text:2"):
        with pytest.raises(ValueError):
            make_branch(bad, H)


def test_concat_mode_lengths():
    c = VisualCompressor(H, "concat", heads=2)  # prune 20x, pool 20x, conv 3x, resampler 2 queries
    assert c.names == ["prune:20", "pool:20", "conv:3", "resampler:2"]
    (out,) = c([torch.randn(60, H)])
    assert out.shape == (3 + 3 + 20 + 2, H)


def test_weighted_mode_mixes_same_ratio_branches():
    torch.manual_seed(0)
    c = VisualCompressor(H, "weighted", ratio=3)
    assert c.names == ["prune:3", "pool:3", "conv:3"]
    x, q = torch.randn(10, H), torch.randn(H)
    (out,) = c([x], q)
    w = c.gate_logits(q).softmax(-1)
    expected = w[0] * x[::3] + w[1] * avg_pool(x, 3) + w[2] * c.branches[2](x)
    assert out.shape == (4, H) and torch.allclose(out, expected, atol=1e-5)
    with pytest.raises(ValueError, match="one ratio"):
        VisualCompressor(H, "weighted", branches=["pool:3", "pool:20"])
    with pytest.raises(ValueError, match="one ratio"):
        VisualCompressor(H, "weighted", branches=["pool:3", "text"])


def test_select_gate_is_one_hot_and_differentiable_through_gumbel():
    torch.manual_seed(0)
    assert VisualCompressor(H, "select").names == ["prune:20", "pool:20", "conv:3", "resampler:2", "text"]
    c = VisualCompressor(H, "select", branches=["prune:20", "pool:20", "conv:3", "resampler:2"], heads=2).train()
    q = torch.randn(H)
    with torch.enable_grad():
        w = c.gate_weights(q)
        assert sorted(w.tolist()) == [0.0] * 3 + [1.0]  # hard: one-hot in the forward pass
        (out,) = c([torch.randn(40, H)], q)
        out.pow(2).sum().backward()
    assert c.gate.weight.grad is not None and c.gate.weight.grad.abs().sum() > 0  # straight-through gradient
    draws = {int(c.gate_weights(q).argmax()) for _ in range(200)}
    assert len(draws) > 1  # Gumbel noise explores while training


def test_select_uses_argmax_at_inference_and_records_picks():
    torch.manual_seed(1)
    c = VisualCompressor(H, "select", heads=2).eval()
    q = torch.randn(H)
    best = int(c.gate_logits(q).argmax())
    expected_len = c.branches[best].kept(40)
    for _ in range(5):
        (out,) = c([torch.randn(40, H)], q)
        assert out.shape == (expected_len, H)
    assert c.picks == {c.names[best]: 5}


def test_budget_term_pushes_the_gate_to_cheaper_branches():
    """With only the budget term in the loss, the gate's probability moves from conv 3x (keeps 1/3) to
    text-only (keeps nothing)."""
    torch.manual_seed(0)
    c = VisualCompressor(H, "select", branches=["conv:3", "pool:20", "text"], budget_weight=1.0).train()
    q = torch.randn(H)
    opt = torch.optim.SGD(c.gate.parameters(), lr=1.0)
    before = c.gate_logits(q).softmax(-1).detach()
    with torch.enable_grad():
        for _ in range(20):
            opt.zero_grad()
            c([torch.randn(30, H)], q)
            c.budget_loss.backward()
            opt.step()
    after = c.gate_logits(q).softmax(-1).detach()
    assert after[2] > before[2] and after[0] < before[0]
    assert c.eval().gate_logits(q).argmax() == 2


def test_question_features_pool_the_text_after_the_visual_span():
    hidden = torch.arange(10, dtype=torch.float)[:, None].expand(10, 4)
    visual = torch.zeros(10, dtype=torch.bool)
    visual[2:6] = True
    assert question_features(hidden, visual, end=9)[0] == 7.0  # rows 6, 7, 8
    assert question_features(hidden, visual, end=6)[0] == 0.5  # nothing after: all text before end
    assert question_features(hidden, torch.zeros(10, dtype=torch.bool))[0] == 4.5


def test_compressor_config_round_trip():
    c = VisualCompressor(H, "select", branches=["prune_random:10", "conv:2", "text"], budget_weight=0.1, heads=2)
    again = VisualCompressor.from_config(H, c.config())
    assert again.config() == c.config()
    assert [type(b) for b in again.branches] == [type(b) for b in c.branches]
    with pytest.raises(ValueError, match="mode"):
        VisualCompressor(H, "mixture")


def test_verifier_branch_keeps_the_most_attended_rows_and_needs_scores():
    x = torch.arange(20.0)[:, None].expand(20, H)
    scores = torch.full((20,), 0.01)
    scores[7], scores[13] = 10.0, 5.0
    branch = make_branch("verifier:5", H)
    out = branch(x, scores)
    assert out.shape == (4, H) and out[:, 0].tolist() == sorted(out[:, 0].tolist()) and 7 in out[:, 0].tolist()
    with pytest.raises(ValueError, match="attention scores"):
        branch(x)
    calls = []
    c = VisualCompressor(H, "select", branches=["pool:5", "verifier:5"]).eval()
    with torch.no_grad():
        c.gate.bias.copy_(torch.tensor([10.0, -10.0]))  # the gate picks pool: scores never computed
        c([x], torch.zeros(H), lambda: calls.append(1) or [scores])
        assert calls == [] and c.picks == {"pool:5": 1}
        c.gate.bias.copy_(torch.tensor([-10.0, 10.0]))
        (out,) = c([x], torch.zeros(H), lambda: calls.append(1) or [scores])
    assert calls == [1] and torch.equal(out, branch(x, scores))
