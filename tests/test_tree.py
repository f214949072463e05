import pytest
import torch

from eagle2.tree import DraftTree, StaticTreeShape, builtin_tree_names, load_static_tree, subtree


def random_tree(size: int, seed: int) -> DraftTree:
    generator = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (), generator=generator)) for i in range(1, size)]
    tokens = torch.randint(0, 50, (size,), generator=generator)
    probs = torch.rand(size, generator=generator)
    return DraftTree.from_parents(tokens, torch.tensor(parents), probs)


@pytest.mark.parametrize("seed", range(5))
def test_ancestor_mask_is_the_ancestor_relation(seed):
    tree = random_tree(30, seed)
    parents = tree.parents.tolist()
    for node in range(tree.size):
        ancestors = set()
        walk = node
        while walk >= 0:
            ancestors.add(walk)
            walk = parents[walk]
        assert set(tree.ancestor_mask[node].nonzero().squeeze(1).tolist()) == ancestors
        # depth = number of strict ancestors; positions of the tree forward are the depths
        assert int(tree.depths[node]) == len(ancestors) - 1
        assert tree.path_to(node) == sorted(ancestors)


def test_path_scores_are_log_products_of_draft_probs():
    tree = random_tree(20, 7)
    for node in range(tree.size):
        expected = sum(torch.log(tree.draft_probs[n]).item() for n in tree.path_to(node)[1:])
        assert tree.path_scores[node].item() == pytest.approx(expected, abs=1e-5)


def test_leaf_paths_cover_every_node():
    tree = random_tree(25, 3)
    covered = {n for path in tree.leaf_paths() for n in path}
    assert covered == set(range(tree.size))
    assert all(path[0] == 0 for path in tree.leaf_paths())


def test_from_parents_rejects_non_topological_order():
    with pytest.raises(ValueError, match="earlier node"):
        DraftTree.from_parents(torch.tensor([1, 2, 3]), torch.tensor([-1, 2, 0]))


def test_subtree_keeps_structure_and_refuses_orphans():
    tree = DraftTree.from_parents(torch.tensor([5, 6, 7, 8]), torch.tensor([-1, 0, 1, 0]))
    kept = subtree(tree, torch.tensor([0, 1, 2]))
    assert kept.parents.tolist() == [-1, 0, 1]
    assert kept.tokens.tolist() == [5, 6, 7]
    with pytest.raises(AssertionError):
        subtree(tree, torch.tensor([0, 2]))


def test_mc_sim_7b_63_is_the_official_eagle1_tree():
    shape = load_static_tree("mc_sim_7b_63")
    assert len(shape.paths) == 25
    assert shape.size == 26  # root included
    assert shape.max_depth == 5
    # breadth-first, parents before children, ranks as written in the paths
    for node in range(1, shape.size):
        assert shape.parents[node] < node
        assert shape.depths[node] == shape.depths[shape.parents[node]] + 1


def test_static_tree_from_paths_validates():
    with pytest.raises(ValueError, match="no parent path"):
        StaticTreeShape.from_paths([[0], [1, 0]])
    with pytest.raises(ValueError, match="ranks >= 0"):
        StaticTreeShape.from_paths([[0], [-1]])
    with pytest.raises(KeyError, match="built-in trees"):
        load_static_tree("no_such_tree")
    assert "mc_sim_7b_63" in builtin_tree_names()
    assert load_static_tree([[0], [0, 0], [1]]).size == 4


def test_likely_chain_follows_the_most_probable_child():
    #        0
    #      1   2        (probs .3, .6)
    #     3 4   5       (.9, .1 | .5)
    #            6      (.7)
    tree = DraftTree.from_parents(
        torch.arange(7), torch.tensor([-1, 0, 0, 1, 1, 2, 5]), torch.tensor([1.0, 0.3, 0.6, 0.9, 0.1, 0.5, 0.7])
    )
    assert tree.likely_chain == [0, 2, 5, 6]
    assert DraftTree.from_parents(torch.tensor([4]), torch.tensor([-1])).likely_chain == [0]


class CountingHead(torch.nn.Linear):
    def __init__(self) -> None:
        super().__init__(8, 11, bias=False, dtype=torch.float64)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_lazy_logits_compute_the_likely_chain_in_one_matmul_and_equal_row_by_row():
    from eagle2.verify import LazyLogits

    torch.manual_seed(0)
    head = CountingHead()
    hidden = torch.randn(7, 8, dtype=torch.float64)
    lazy = LazyLogits(hidden, head, likely=[0, 2, 5, 6])
    for node in (0, 2, 5):
        torch.testing.assert_close(lazy[node], head(hidden[node]))
    assert head.calls == 1 + 3  # one matmul for the chain, plus the three reference rows above
    torch.testing.assert_close(lazy[3], hidden[3] @ head.weight.T)  # off the chain: its own row
    assert head.calls == 5
    lazy[6], lazy[0]
    assert head.calls == 5
