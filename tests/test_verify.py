"""Acceptance rules on hand-made distributions: greedy walks, and χ² tests that sampling rules emit exactly the
target's distribution. Each χ² test is paired with a broken rule that the same test must reject (its power).

The rules take a batch: the χ² tests run all their trials as the rows of one call (each row its own draft tokens
and coins), which is also the test that rows of a batch do not share draws or outcomes."""

import torch

from specvlm.engine.sampling import RowRandom
from specvlm.engine.tree import DraftTree
from specvlm.engine.verify import accept_chain_sampled, accept_greedy, accept_tree_sampled

from helpers import chi2_pvalue

V = 6


def dist(*values):
    t = torch.tensor(values, dtype=torch.float32)
    return t / t.sum()


def outcomes(verdict, tree):
    """[(accepted nodes, next token)] per row, on the host, as the decode loop reads them after its one sync."""
    rows = verdict.to_host(tree)
    for row, accepted in enumerate(rows):
        assert accepted.tokens == tree.tokens[row, accepted.path].tolist()
    return [(accepted.path, accepted.next_token) for accepted in rows]


def greedy(choice, tree):
    return outcomes(accept_greedy(torch.tensor([choice]), tree), tree)[0]


def one(tokens, parents, **kw):
    return DraftTree(torch.tensor([tokens]), torch.tensor([parents]), **kw)


def test_greedy_walks_longest_matching_path():
    #        root
    #     0:5    1:7
    #   2:1  3:2   4:3
    tree = one([5, 7, 1, 2, 3], [-1, -1, 0, 0, 1])
    # target argmax after: root, node0, node1, node2, node3, node4
    assert greedy([7, 0, 3, 0, 0, 0], tree) == ([1, 4], 0)
    assert greedy([5, 2, 9, 9, 4, 9], tree) == ([0, 3], 4)
    assert greedy([9, 0, 0, 0, 0, 0], tree) == ([], 9)
    assert greedy([5, 1, 0, 6, 0, 0], tree) == ([0, 2], 6)


def test_greedy_path_of_a_deep_tree_in_node_order():
    # a chain 0-1-2-3 and a branch 0-4; the accepted path must come back root to leaf
    tree = one([1, 2, 3, 4, 9], [-1, 0, 1, 2, 0])
    assert greedy([1, 2, 3, 4, 7, 8], tree) == ([0, 1, 2, 3], 7)
    assert greedy([1, 9, 0, 0, 0, 5], tree) == ([0, 4], 5)


def test_greedy_rows_of_a_batch_are_independent():
    """Two rows with different tree shapes and target choices: each row's outcome is what it is alone; nodes a row
    did not propose (`valid`) are never accepted, even when they match."""
    tree = DraftTree(
        torch.tensor([[5, 7, 1, 2, 3], [1, 2, 3, 4, 9]]), torch.tensor([[-1, -1, 0, 0, 1], [-1, 0, 1, 2, 0]])
    )
    choice = torch.tensor([[7, 0, 3, 0, 0, 0], [1, 2, 3, 4, 7, 8]])
    assert outcomes(accept_greedy(choice, tree), tree) == [([1, 4], 0), ([0, 1, 2, 3], 7)]
    cut = DraftTree(tree.tokens, tree.parents, valid=torch.tensor([[True] * 5, [True, True, False, False, True]]))
    assert outcomes(accept_greedy(choice, cut), cut) == [([1, 4], 0), ([0, 1], 3)]
    assert cut.valid is not None and [a.drafted for a in accept_greedy(choice, cut).to_host(cut)] == [5, 3]


def test_a_round_without_draft_tokens_takes_the_targets_token():
    empty = DraftTree(
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.long),
        chain=True,
        max_depth=0,
    )
    assert outcomes(accept_greedy(torch.tensor([[4], [1]]), empty), empty) == [([], 4), ([], 1)]
    p = torch.zeros(2, 1, V)
    p[0, 0, 3] = p[1, 0, 5] = 1
    assert outcomes(accept_chain_sampled(p, empty), empty) == [([], 3), ([], 5)]
    assert outcomes(accept_tree_sampled(p, empty), empty) == [([], 3), ([], 5)]


def random_for(seed, rows):
    return RowRandom([torch.Generator().manual_seed(seed)] * rows)


def run_chain(rule, p, q, trials, seed=0, valid=None):
    """`trials` rows in one call, each drafting its own chain from q; the first and second emitted tokens."""
    g = torch.Generator().manual_seed(seed + 1)
    n = len(q)
    tokens = torch.stack([torch.multinomial(q[i], trials, replacement=True, generator=g) for i in range(n)], 1)
    tree = DraftTree(
        tokens,
        torch.arange(-1, n - 1).expand(trials, n),
        probs=q.expand(trials, -1, -1),
        chain=True,
        valid=None if valid is None else valid.expand(trials, -1),
    )
    first, second = [], []
    for row, (path, nxt) in enumerate(rule(p.expand(trials, -1, -1), tree, random_for(seed, trials))):
        emitted = tokens[row, path].tolist() + [nxt]
        first.append(emitted[0])
        if len(emitted) > 1:
            second.append(emitted[1])
    return first, second


P = torch.stack([dist(5, 1, 1, 8, 0.5, 3), dist(1, 1, 6, 1, 1, 2), dist(2, 2, 2, 1, 1, 1)])
Q = torch.stack([dist(1, 6, 1, 2, 1, 1), dist(3, 1, 1, 1, 3, 1)])


def leviathan(p, tree, random):
    return outcomes(accept_chain_sampled(p, tree, random), tree)


def recursive(p, tree, random):
    return outcomes(accept_tree_sampled(p, tree, random), tree)


def test_chain_rejection_sampling_reproduces_target():
    first, second = run_chain(leviathan, P, Q, 20000)
    assert chi2_pvalue(first, P[0]) > 1e-3
    assert chi2_pvalue(second, P[1]) > 1e-3


def test_chain_test_has_power_against_accept_all():
    def accept_all(p, tree, random):
        n = len(tree)
        return [(list(range(n)), int(torch.multinomial(p[row, n], 1))) for row in range(tree.rows)]

    first, _ = run_chain(accept_all, P, Q, 20000)
    assert chi2_pvalue(first, P[0]) < 1e-6


def test_chain_residual_with_vocab_the_draft_lacks():
    # the draft never proposes id 5 (as when its padded vocabulary is shorter); the target still emits it
    q = torch.stack([dist(1, 1, 1, 1, 1, 0)])
    first, _ = run_chain(leviathan, P[:2], q, 20000, seed=3)
    assert chi2_pvalue(first, P[0]) > 1e-3


def test_a_chain_that_ended_early_draws_its_bonus_from_the_target():
    """A row whose chain stopped after one token (its second node not `valid`, as a batched confidence stop pads
    it): when the first token is accepted the next one comes from the target's row after it (P[1]), never from a
    residual against the padding node's q."""
    first, second = run_chain(leviathan, P, Q, 20000, seed=5, valid=torch.tensor([True, False]))
    assert chi2_pvalue(first, P[0]) > 1e-3
    assert chi2_pvalue(second, P[1]) > 1e-3

    def residual_at_the_end(p, tree, random):  # the bug: the end of a chain treated as a rejection of node 1
        residual = (p[0, 1] - tree.probs[0, 1]).clamp_min(0)
        return [
            (path, int(torch.multinomial(residual, 1)) if path == [0] else nxt)
            for path, nxt in leviathan(p, tree, random)
        ]

    _, broken = run_chain(residual_at_the_end, P, Q, 20000, seed=5, valid=torch.tensor([True, False]))
    assert chi2_pvalue(broken, P[1]) < 1e-6


# root children: nodes 0,1,2 (tokens 3,0,5); node 0 has children 3,4 (tokens 2,1)
TOKENS, PARENTS = [3, 0, 5, 2, 1], [-1, -1, -1, 0, 0]
PT = torch.stack(
    [
        dist(5, 1, 1, 8, 0.5, 3),
        dist(1, 1, 6, 1, 1, 2),
        dist(1, 2, 3, 4, 5, 6),
        dist(6, 5, 4, 3, 2, 1),
        dist(1, 1, 1, 1, 1, 1),
        dist(1, 1, 1, 1, 1, 1),
    ]
)


def run_tree(rule, trials, seed=0, valid=None):
    tree = DraftTree(
        torch.tensor(TOKENS).expand(trials, -1),
        torch.tensor(PARENTS).expand(trials, -1),
        valid=None if valid is None else valid.expand(trials, -1),
    )
    first, after_3 = [], []
    for path, nxt in rule(PT.expand(trials, -1, -1), tree, random_for(seed, trials)):
        emitted = [TOKENS[node] for node in path] + [nxt]
        first.append(emitted[0])
        if emitted[0] == 3 and len(emitted) > 1:
            after_3.append(emitted[1])
    return first, after_3


def test_tree_recursive_rejection_reproduces_target():
    first, after_3 = run_tree(recursive, 20000)
    assert chi2_pvalue(first, PT[0]) > 1e-3
    assert chi2_pvalue(after_3, PT[1]) > 1e-3  # below node 0 the target's row is PT[1]


def test_tree_nodes_not_proposed_are_never_tried():
    """Nodes 1 and 4 not proposed: the root's children are tokens 3 and 5 only, node 0's child token 2 only; the
    emitted law is still the target's (a rule that counted them as rejected would skew it towards 0 and 1)."""
    valid = torch.tensor([True, False, True, True, False])
    first, after_3 = run_tree(recursive, 20000, seed=2, valid=valid)
    assert chi2_pvalue(first, PT[0]) > 1e-3 and chi2_pvalue(after_3, PT[1]) > 1e-3


def test_tree_test_has_power_against_skipping_the_residual():
    def no_residual(p, tree, random):  # on rejection, sample from the full p again (a classic bug)
        out = []
        for row, (path, nxt) in enumerate(recursive(p, tree, random)):
            at = path[-1] + 1 if path else 0
            kids = tree.children(row)[at]
            if kids and nxt not in tree.tokens[row, kids].tolist():
                nxt = int(torch.multinomial(p[row, at], 1))
            out.append((path, nxt))
        return out

    first, _ = run_tree(no_residual, 20000)
    assert chi2_pvalue(first, PT[0]) < 1e-6


def test_sampling_rules_accept_a_certain_target():
    p = torch.zeros(1, 3, V)
    p[0, 0, 4] = p[0, 1, 2] = p[0, 2, 0] = 1
    tree = one([4, 2], [-1, 0], probs=torch.stack([dist(1, 1, 1, 1, 1, 1)] * 2)[None])
    assert leviathan(p, tree, None) == [([0, 1], 0)]
    assert recursive(p, tree, None) == [([0, 1], 0)]
