"""Acceptance rules on hand-made distributions: greedy walks, and χ² tests that sampling rules emit exactly the
target's distribution. Each χ² test is paired with a broken rule that the same test must reject (its power)."""

import torch

from helpers import chi2_pvalue
from specvlm.tree import DraftTree
from specvlm.verify import accept_chain_sampled, accept_greedy, accept_tree_sampled

V = 6


def dist(*values):
    t = torch.tensor(values, dtype=torch.float32)
    return t / t.sum()


def outcome(verdict, tree):
    """(accepted nodes, next token) on the host, as the decode loop reads them after its one sync."""
    accepted = verdict.to_host(tree)
    assert accepted.tokens == tree.tokens[accepted.path].tolist()
    return accepted.path, accepted.next_token


def greedy(choice, tree):
    return outcome(accept_greedy(torch.tensor(choice), tree), tree)


def test_greedy_walks_longest_matching_path():
    #        root
    #     0:5    1:7
    #   2:1  3:2   4:3
    tree = DraftTree(torch.tensor([5, 7, 1, 2, 3]), torch.tensor([-1, -1, 0, 0, 1]))
    # target argmax after: root, node0, node1, node2, node3, node4
    assert greedy([7, 0, 3, 0, 0, 0], tree) == ([1, 4], 0)
    assert greedy([5, 2, 9, 9, 4, 9], tree) == ([0, 3], 4)
    assert greedy([9, 0, 0, 0, 0, 0], tree) == ([], 9)
    assert greedy([5, 1, 0, 6, 0, 0], tree) == ([0, 2], 6)


def test_greedy_path_of_a_deep_tree_in_node_order():
    # a chain 0-1-2-3 and a branch 0-4; the accepted path must come back root to leaf
    tree = DraftTree(torch.tensor([1, 2, 3, 4, 9]), torch.tensor([-1, 0, 1, 2, 0]))
    assert greedy([1, 2, 3, 4, 7, 8], tree) == ([0, 1, 2, 3], 7)
    assert greedy([1, 9, 0, 0, 0, 5], tree) == ([0, 4], 5)


def run_chain(rule, p, q, trials, seed=0):
    g = torch.Generator().manual_seed(seed)
    first, second = [], []
    for _ in range(trials):
        tokens = torch.stack([torch.multinomial(q[i], 1, generator=g)[0] for i in range(len(q))])
        tree = DraftTree(tokens, torch.arange(-1, len(q) - 1), probs=q, chain=True)
        path, nxt = rule(p, tree, g)
        emitted = tokens[path].tolist() + [nxt]
        first.append(emitted[0])
        if len(emitted) > 1:
            second.append(emitted[1])
    return first, second


P = torch.stack([dist(5, 1, 1, 8, 0.5, 3), dist(1, 1, 6, 1, 1, 2), dist(2, 2, 2, 1, 1, 1)])
Q = torch.stack([dist(1, 6, 1, 2, 1, 1), dist(3, 1, 1, 1, 3, 1)])


def test_chain_rejection_sampling_reproduces_target():
    first, second = run_chain(leviathan, P, Q, 20000)
    assert chi2_pvalue(first, P[0]) > 1e-3
    assert chi2_pvalue(second, P[1]) > 1e-3


def leviathan(p, tree, g):
    return outcome(accept_chain_sampled(p, tree, g), tree)


def recursive(p, tree, g):
    return outcome(accept_tree_sampled(p, tree, g), tree)


def test_chain_test_has_power_against_accept_all():
    def accept_all(p, tree, g):
        return list(range(len(tree))), int(torch.multinomial(p[len(tree)], 1, generator=g))
    first, _ = run_chain(accept_all, P, Q, 20000)
    assert chi2_pvalue(first, P[0]) < 1e-6


def test_chain_residual_with_vocab_the_draft_lacks():
    # the draft never proposes id 5 (as when its padded vocabulary is shorter); the target still emits it
    q = torch.stack([dist(1, 1, 1, 1, 1, 0)])
    first, _ = run_chain(leviathan, P[:2], q, 20000, seed=3)
    assert chi2_pvalue(first, P[0]) > 1e-3


# root children: nodes 0,1,2 (tokens 3,0,5); node 0 has children 3,4 (tokens 2,1)
TREE = DraftTree(torch.tensor([3, 0, 5, 2, 1]), torch.tensor([-1, -1, -1, 0, 0]))
PT = torch.stack([dist(5, 1, 1, 8, 0.5, 3), dist(1, 1, 6, 1, 1, 2), dist(1, 2, 3, 4, 5, 6),
                  dist(6, 5, 4, 3, 2, 1), dist(1, 1, 1, 1, 1, 1), dist(1, 1, 1, 1, 1, 1)])


def run_tree(rule, trials, seed=0):
    g = torch.Generator().manual_seed(seed)
    first, after_3 = [], []
    for _ in range(trials):
        path, nxt = rule(PT, TREE, g)
        emitted = TREE.tokens[path].tolist() + [nxt]
        first.append(emitted[0])
        if emitted[0] == 3 and len(emitted) > 1:
            after_3.append(emitted[1])
    return first, after_3


def test_tree_recursive_rejection_reproduces_target():
    first, after_3 = run_tree(recursive, 20000)
    assert chi2_pvalue(first, PT[0]) > 1e-3
    assert chi2_pvalue(after_3, PT[1]) > 1e-3   # below node 0 the target's row is PT[1]


def test_tree_test_has_power_against_skipping_the_residual():
    def no_residual(p, tree, g):  # on rejection, sample from the full p again (a classic bug)
        path, nxt = recursive(p, tree, g)
        row = path[-1] + 1 if path else 0
        kids = [c for c in tree.children()[row]]
        if kids and nxt not in tree.tokens[kids].tolist():
            nxt = int(torch.multinomial(p[row], 1, generator=g))
        return path, nxt
    first, _ = run_tree(no_residual, 20000)
    assert chi2_pvalue(first, PT[0]) < 1e-6


def test_sampling_rules_accept_a_certain_target():
    p = torch.zeros(3, V)
    p[0, 4] = p[1, 2] = p[2, 0] = 1
    tree = DraftTree(torch.tensor([4, 2]), torch.tensor([-1, 0]), probs=torch.stack([dist(1, 1, 1, 1, 1, 1)] * 2))
    assert leviathan(p, tree, None) == ([0, 1], 0)
    assert recursive(p, tree, None) == ([0, 1], 0)
