"""lib/knn.py's memory budget: blocks of test rows sized from it give the scores of one block over all test
rows to the bit, ties included. (The split over two processes is checked under torchrun in
tests/test_folder_device.py, in the same launch as the folder path's sharding.)"""
import torch
import torch.nn.functional as F

from lib import knn
from lib.knn import block_rows, knn_scores


def features(seed, test=150, bank=500, dim=8):
    """Half dyadic rows (entries in {0, +-1/4, +-1/2}: every dot product exact in any order, so many exact
    ties at the k-th neighbour), half random unit rows; labels of 6 classes."""
    g = torch.Generator().manual_seed(seed)

    def rows(n):
        return torch.cat([torch.randint(-2, 3, (n // 2, dim), generator=g).float() / 4,
                          F.normalize(torch.randn(n - n // 2, dim, generator=g), dim=1)])
    return rows(test), rows(bank), torch.randint(0, 6, (bank,), generator=g)


def test_a_tiny_budget_gives_the_one_block_scores_ties_included():
    test, bank, labels = features(0)
    one_block = knn_scores(test, bank, labels, 6, k=25, chunk=10**6)  # all 150 rows at once, as before for M <= 1024
    assert block_rows(len(bank), memory=1) == knn.MIN_ROWS
    for memory, chunk in ((1, None), (40 * 500 * 4, None), (None, 47), (None, 149)):
        kwargs = {"memory": memory} if memory else {"chunk": chunk}
        assert torch.equal(knn_scores(test, bank, labels, 6, k=25, **kwargs), one_block), kwargs
    # the ties are real: some row's 25th and 26th neighbours are equally similar
    sims = (test @ bank.t()).sort(dim=1, descending=True).values
    assert (sims[:, 24] == sims[:, 25]).any()


def test_the_budget_bounds_the_block_at_any_bank_size():
    assert block_rows(1_281_167) == 2**30 // (1_281_167 * 4) == 209   # ImageNet: 209 rows, 1.0 GiB of similarities
    assert block_rows(50_000) * 50_000 * 4 <= 2**30
    assert block_rows(10**9) == knn.MIN_ROWS                            # never fewer rows than the CPU's products need


def test_a_test_set_smaller_than_a_block_and_an_empty_one():
    test, bank, labels = features(1, test=5)
    assert torch.equal(knn_scores(test, bank, labels, 6, k=9), knn_scores(test, bank, labels, 6, k=9, chunk=5))
    assert knn_scores(test[:0], bank, labels, 6, k=9).shape == (0, 6)


class Sized:
    """A stand-in dataset: a length and a number of classes."""

    def __init__(self, n, classes=1000):
        self.n, self.num_classes = n, classes

    def __len__(self):
        return self.n


def test_eval_features_names_the_flag_that_bounds_what_imagenet_would_cost(monkeypatch):
    """ImageNet with the defaults on a 24 GiB, 2-thread CPU machine: the features of 1.28M x 2 selection views
    and the selection k-means (26 GB at once) exceed its memory, R(f, f') takes days; with 50,000 selection
    images and one restart only the CPU's hours of k-means and retrieval are left to warn about."""
    import eval_features
    monkeypatch.setattr(eval_features, "machine_memory", lambda device: 24 * 2**30)
    monkeypatch.setattr(eval_features.torch, "get_num_threads", lambda: 2)
    run = {"name": "in1k", "train_set": Sized(1_281_167), "test_set": Sized(50_000),
           "selection_set": Sized(1_281_167), "model": type("Net", (), {"part_dims": (2048, 128, 128)}),
           "features": ["backbone", "f_I", "f_G"]}
    args = type("Args", (), {"clusters": None, "selection_clusters": None, "restarts": 5, "kmeans_iters": 50})
    costs = {what: (size, flops) for what, size, flops, _ in eval_features.measure_costs(
        1_281_167, 50_000, 1_281_167, (2048, 128, 128), (2048, 128, 128), 1000, 1000, 5, 50)}
    assert costs["the selection score's k-means of both views"][0] == 5 * 1_281_167 * 1000 * 4       # 25.6 GB
    assert costs["the features of the train, test and selection images"][0] == (1_281_167 * 3 + 50_000) * 2304 * 4
    lines = eval_features.cost_warnings(run, args, torch.device("cpu"))
    assert all(line.startswith("warning: in1k: ") for line in lines)
    memory = [line for line in lines if ", more than this machine's 24 GiB" in line]
    assert len(memory) == 2 and all(line.endswith("bounds it") and "--selection-images" in line for line in memory)
    assert any("R(f, f') over every pair of views take about" in line and "--selection-images" in line for line in lines)
    run["selection_set"], args.restarts = Sized(50_000), 1
    assert not any("GiB" in line or "selection" in line for line in eval_features.cost_warnings(run, args, torch.device("cpu")))
