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
