import torch

from eagle2.cache import TreeKVCache


def filled_cache(layers: int = 3, length: int = 10, capacity: int = 4) -> tuple[TreeKVCache, torch.Tensor]:
    cache = TreeKVCache(layers, capacity)
    keys = torch.randn(layers, 1, 2, length, 8, dtype=torch.float64)
    for layer in range(layers):
        returned_keys, returned_values = cache.update(keys[layer], -keys[layer], layer)
        assert torch.equal(returned_keys, keys[layer])
    return cache, keys


def test_update_appends_and_grows_past_capacity():
    cache, keys = filled_cache(length=10, capacity=4)
    assert cache.length == 10 and cache.get_seq_length() == 10
    extra = torch.randn(1, 2, 3, 8, dtype=torch.float64)
    full_keys, full_values = cache.update(extra, -extra, 0)
    assert torch.equal(full_keys, torch.cat((keys[0], extra), dim=2))
    assert torch.equal(full_values, -torch.cat((keys[0], extra), dim=2))


def test_keep_packs_the_accepted_path_after_the_prefix():
    cache, keys = filled_cache(length=10, capacity=16)
    tree = torch.randn(3, 1, 2, 6, 8, dtype=torch.float64)
    for layer in range(3):
        cache.update(tree[layer], -tree[layer], layer)
    cache.keep(10, [0, 2, 5])
    assert cache.length == 13
    for layer in range(3):
        stored = cache.layers[layer].keys[:, :, :13]
        expected = torch.cat((keys[layer], tree[layer][:, :, [0, 2, 5]]), dim=2)
        assert torch.equal(stored, expected)
        assert torch.equal(cache.layers[layer].values[:, :, :13], -expected)


def test_keep_of_a_packed_prefix_only_truncates():
    cache, keys = filled_cache(length=5, capacity=16)
    before = cache.layers[0].keys.data_ptr()
    tree = torch.randn(3, 1, 2, 4, 8, dtype=torch.float64)
    for layer in range(3):
        cache.update(tree[layer], -tree[layer], layer)
    cache.keep(5, [0, 1])
    assert cache.length == 7
    assert cache.layers[0].keys.data_ptr() == before
    assert torch.equal(cache.layers[1].keys[:, :, 5:7], tree[1][:, :, :2])


def test_truncate_drops_entries():
    cache, _ = filled_cache(length=8)
    cache.truncate(3)
    assert cache.length == 3
