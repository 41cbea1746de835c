"""Tree shapes and builders on hand-made log-probability tables (no model)."""

import torch

from specvlm.adapters.attention import additive_mask
from specvlm.engine.tree import (
    EAGLE1_TREE,
    DraftTree,
    TreeSpec,
    ancestor_matrix,
    build_chain,
    build_dynamic_tree,
    build_static_tree,
    node_depths,
    static_shape,
)

V = 8


def table_expand(table):
    """expand() whose next-token log-probs depend only on the token fed: table[token] -> (V,). Records every call
    as (tokens, parent slots, depth), and checks the slot protocol: a parent was fed before its children."""
    calls = []

    def expand(tokens, parent_slots, depth):
        # tokens, parent_slots (B, w) -> (B, w, V); calls record row 0
        fed = sum(len(c[0]) for c in calls)
        assert tokens.shape == parent_slots.shape and tokens.dim() == 2
        assert all(-1 <= p < fed for p in parent_slots.flatten().tolist())
        calls.append((tokens[0].tolist(), parent_slots[0].tolist(), depth))
        return torch.stack([torch.stack([table[int(t)] for t in row]) for row in tokens])

    return expand, calls


def fed_nodes(tree):
    """Node ids of row 0 in the order they were fed (their slots)."""
    fed = tree.fed[0].tolist()
    return sorted((n for n in range(len(tree)) if fed[n] >= 0), key=lambda n: fed[n])


def argmax_choice(logprobs):
    return logprobs.argmax(-1)


def random_table(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, V, generator=g).mul(2).log_softmax(-1)


def test_eagle1_static_shape_matches_the_paper():
    shape = static_shape(EAGLE1_TREE)
    parents = list(shape.parents)
    depths = node_depths(torch.tensor(parents)).tolist()
    assert depths == list(shape.depths)
    assert len(parents) == 25
    assert [depths.count(d) for d in range(1, 6)] == [4, 8, 8, 3, 2]
    leaves = set(range(25)) - set(parents)
    assert len(leaves) == 15
    assert all(p < i for i, p in enumerate(parents))


def test_static_tree_fills_ranks_and_feeds_only_inner_nodes():
    table = random_table()
    first = torch.randn(V, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    expand, calls = table_expand(table)
    tree = build_static_tree(first[None], expand)
    shape = static_shape(EAGLE1_TREE)
    tokens = tree.tokens[0]
    assert tree.parents[0].tolist() == list(shape.parents)
    for node, (parent, rank) in enumerate(zip(shape.parents, shape.ranks)):
        row = first if parent < 0 else table[int(tokens[parent])]
        assert int(tokens[node]) == int(row.argsort(descending=True)[rank])
    # one call per depth 1..4, feeding exactly the nodes that have children, each at its depth, parents by slot
    assert [depth for _, _, depth in calls] == [1, 2, 3, 4]
    fed = fed_nodes(tree)
    assert sorted(fed) == sorted(set(p for p in shape.parents if p >= 0))
    assert [t for fed_tokens, _, _ in calls for t in fed_tokens] == tokens[fed].tolist()
    parents = tree.parents[0].tolist()
    assert [p for _, slots, _ in calls for p in slots] == [
        fed.index(parents[n]) if parents[n] >= 0 else -1 for n in fed
    ]


def test_static_tree_respects_max_depth():
    expand, _ = table_expand(random_table())
    tree = build_static_tree(torch.zeros(1, V).log_softmax(-1), expand, max_depth=2)
    assert len(tree) == 12 and int(tree.depths.max()) == 2


def brute_force_dynamic(first, table, k, depth, total):
    """All candidates EAGLE-2 generates, by explicit enumeration, and the best total-1 of them by value."""
    cands = []  # (value, path tokens)
    frontier = []
    top = torch.topk(first, k)
    for v, t in zip(top.values.tolist(), top.indices.tolist()):
        cands.append((v, (t,)))
        frontier.append((v, (t,)))
    for _ in range(depth - 1):
        layer = []
        for v, path in frontier:
            top = torch.topk(table[path[-1]], k)
            for cv, ct in zip(top.values.tolist(), top.indices.tolist()):
                layer.append((v + cv, path + (ct,)))
        cands += layer
        frontier = sorted(layer, key=lambda c: -c[0])[:k]
    best = sorted(cands, key=lambda c: -c[0])[: total - 1]
    return sorted(path for _, path in best)


def paths_of(tree, row=0):
    return sorted(tuple(tree.tokens[row, tree.path(n, row)].tolist()) for n in range(len(tree)))


def test_dynamic_tree_matches_brute_force_and_is_connected():
    for seed in range(5):
        table, first = random_table(seed), random_table(seed + 10)[0]
        expand, calls = table_expand(table)
        tree = build_dynamic_tree(first[None], expand, top_k=3, depth=4, total_tokens=12)
        assert len(tree) == 11
        assert paths_of(tree) == brute_force_dynamic(first, table, 3, 4, 12)
        assert all(p < i for i, p in enumerate(tree.parents[0].tolist()))
        assert tree.depths.tolist() == node_depths(tree.parents).tolist()
        # k nodes fed per layer after the first, at depths 1..3; a kept node that was fed carries its slot
        assert [(len(tokens), depth) for tokens, _, depth in calls] == [(3, 1), (3, 2), (3, 3)]
        fed_tokens = [t for tokens, _, _ in calls for t in tokens]
        for node, slot in enumerate(tree.fed[0].tolist()):
            if slot >= 0:
                assert fed_tokens[slot] == int(tree.tokens[0, node])


def test_dynamic_tree_keeps_parents_on_ties():
    # a certain continuation: child log-prob exactly 0, so child and parent have equal value
    table = torch.full((V, V), -30.0)
    table[:, 0] = 0.0
    first = torch.tensor([-0.1, -0.2] + [-30.0] * (V - 2))
    expand, _ = table_expand(table)
    tree = build_dynamic_tree(first[None], expand, top_k=2, depth=5, total_tokens=4)
    for n in range(len(tree)):
        assert all(0 <= p < n for p in tree.path(n)[:-1])
    assert paths_of(tree) == [(0,), (0, 0), (0, 0, 0)]


def test_chain_greedy_and_probs():
    table = random_table(3)
    first = table[5]
    expand, calls = table_expand(table)
    tree = build_chain(first[None], expand, 4, argmax_choice)
    tokens = tree.tokens[0].tolist()
    assert tokens[0] == int(first.argmax())
    assert all(tokens[i + 1] == int(table[tokens[i]].argmax()) for i in range(3))
    assert tree.parents.tolist() == [[-1, 0, 1, 2]] and tree.is_chain and tree.chain and tree.valid is None
    assert torch.allclose(tree.probs[0, 0], first.exp()) and torch.allclose(tree.probs[0, 2], table[tokens[1]].exp())
    assert calls == [([tokens[0]], [-1], 1), ([tokens[1]], [0], 2), ([tokens[2]], [1], 3)]
    assert tree.fed.tolist() == [[0, 1, 2, -1]]


def test_chain_stops_after_a_token_the_draft_doubts():
    # q rows: token 1 then 2 are sure (0.9), token 3 doubted (0.2 < 0.5): the chain ends with token 3
    def row(token, p):
        probs = torch.full((8,), (1 - p) / 7)
        probs[token] = p
        return probs.log()

    table = {1: row(2, 0.9), 2: row(3, 0.2), 3: row(4, 0.9), 4: row(5, 0.9)}
    expand, calls = table_expand(table)
    tree = build_chain(row(1, 0.9)[None], expand, 5, argmax_choice, min_prob=0.5)
    assert tree.tokens.tolist() == [[1, 2, 3]] and tree.parents.tolist() == [[-1, 0, 1]] and len(calls) == 2
    assert tree.probs.shape == (1, 3, 8) and tree.valid.tolist() == [[True, True, True]]
    assert build_chain(row(1, 0.9)[None], table_expand(table)[0], 5, argmax_choice).tokens.tolist() == [
        [1, 2, 3, 4, 5]
    ]  # no threshold: all γ = 5 tokens
    # a batch: row 1 starts at a token whose chain stays sure, so drafting goes on for it; row 0's later nodes are
    # padding its chain never proposed (not valid), its real ones the same as alone
    table.update({5: row(6, 0.9), 6: row(7, 0.9), 7: row(1, 0.9)})
    both = build_chain(torch.stack([row(1, 0.9), row(5, 0.9)]), table_expand(table)[0], 5, argmax_choice, min_prob=0.5)
    assert both.tokens[0, :3].tolist() == [1, 2, 3] and both.tokens[1].tolist() == [5, 6, 7, 1, 2]
    assert both.valid.tolist() == [[True] * 3 + [False] * 2, [True] * 5]


def test_ancestor_matrix_and_mask():
    parents = torch.tensor([-1, -1, 0, 2, 1])
    other = torch.tensor([-1, 0, 1, 2, 3])  # a chain: a batch's rows differ
    assert torch.equal(ancestor_matrix(torch.stack([parents, other]))[0], ancestor_matrix(parents))
    assert torch.equal(ancestor_matrix(torch.stack([parents, other]))[1], torch.ones(6, 6, dtype=torch.bool).tril())
    vis = ancestor_matrix(parents)
    assert torch.equal(vis, ancestor_matrix(parents, max_depth=3))  # 3 = the deepest node's depth
    assert not torch.equal(vis, ancestor_matrix(parents, max_depth=2))
    # node 3 (row 4): itself, node 2, node 0, root
    assert vis[4].nonzero().flatten().tolist() == [0, 1, 3, 4]
    assert vis[5].nonzero().flatten().tolist() == [0, 2, 5]
    mask = additive_mask(vis, prefix_len=3, dtype=torch.float32, device="cpu")
    assert mask.shape == (1, 1, 6, 9)
    assert (mask[0, 0, :, :3] == 0).all()
    assert mask[0, 0, 4, 3 + 3] == 0 and mask[0, 0, 4, 3 + 2] == torch.finfo(torch.float32).min


def test_tree_spec_validation_and_depth():
    assert TreeSpec("chain", num_draft_tokens=3).max_depth == 3
    assert TreeSpec("static").max_depth == 5
    assert TreeSpec("dynamic", depth=7).max_depth == 7
    assert (TreeSpec("chain", num_draft_tokens=3).max_nodes, TreeSpec("chain", num_draft_tokens=3).max_fed) == (3, 2)
    assert (TreeSpec("static").max_nodes, TreeSpec("static").max_fed) == (25, 10)
    assert (TreeSpec("dynamic").max_nodes, TreeSpec("dynamic").max_fed) == (59, 50)
    for bad in (
        dict(kind="beam"),
        dict(kind="chain", num_draft_tokens=0),
        dict(total_tokens=1),
        dict(confidence_threshold=1.0),
        dict(confidence_threshold=-0.1),
    ):
        try:
            TreeSpec(**bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_draft_tree_paths_and_children():
    tree = DraftTree(torch.tensor([[7, 8, 9, 10], [1, 2, 3, 4]]), torch.tensor([[-1, -1, 0, 2], [-1, 0, 1, 2]]))
    assert tree.children() == [[0, 1], [2], [], [3], []] and tree.children(1) == [[0], [1], [2], [3], []]
    assert tree.path(3) == [0, 2, 3] and tree.path(3, row=1) == [0, 1, 2, 3]
    assert not tree.is_chain and tree.depths.tolist() == [[1, 1, 2, 3], [1, 2, 3, 4]]
    assert tree.ancestors.shape == (2, 4, 4) and tree.rows == 2


def test_batched_builders_give_each_row_its_own_tree():
    """Rows of a batch are built independently: each row's tree equals the one-row build from its own root
    distribution, for every builder (static, dynamic, chain)."""
    table = random_table(7)
    firsts = torch.stack([random_table(20)[0], random_table(21)[3], random_table(22)[5]])
    builders = {
        "static": lambda f, e: build_static_tree(f, e),
        "dynamic": lambda f, e: build_dynamic_tree(f, e, top_k=3, depth=4, total_tokens=12),
        "chain": lambda f, e: build_chain(f, e, 4, argmax_choice),
    }
    for name, build in builders.items():
        batched = build(firsts, table_expand(table)[0])
        for row in range(3):
            alone = build(firsts[row : row + 1], table_expand(table)[0])
            for field in ("tokens", "parents", "depths", "fed"):
                assert torch.equal(getattr(batched, field)[row], getattr(alone, field)[0]), (name, field, row)
        if name == "dynamic":
            assert paths_of(batched, 1) != paths_of(batched, 2)  # the rows' trees differ in shape
