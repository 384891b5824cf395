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
