"""The vectorised, chunked kNN against a plain loop."""
import math

import pytest
import torch
import torch.nn.functional as F

from lib.knn import knn_accuracy, knn_scores


def brute_force_scores(test, train, labels, num_classes, k, sigma):
    out = []
    for q in test.tolist():
        sims = [(sum(a * b for a, b in zip(q, t)), int(y)) for t, y in zip(train.tolist(), labels.tolist())]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, y in sims[:k]:
            votes[y] += math.exp(s / sigma)
        out.append(votes)
    return torch.tensor(out)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_scores_match_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(60, 5, generator=g), dim=1)
    test = F.normalize(torch.randn(13, 5, generator=g), dim=1)
    labels = torch.randint(0, 4, (60,), generator=g)
    fast = knn_scores(test, train, labels, 4, k=9, sigma=0.1, chunk=chunk)
    slow = brute_force_scores(test, train, labels, 4, k=9, sigma=0.1)
    assert torch.allclose(fast, slow, rtol=1e-5)


def test_k_larger_than_bank_uses_every_image():
    train = F.normalize(torch.randn(5, 3), dim=1)
    labels = torch.tensor([0, 1, 1, 2, 2])
    scores = knn_scores(train[:2], train, labels, 3, k=200, sigma=0.5)
    assert torch.allclose(scores, brute_force_scores(train[:2], train, labels, 3, 5, 0.5), rtol=1e-5)


def test_accuracy_top1_top5():
    # Two tight clusters: every test point's neighbours carry its label.
    train = F.normalize(torch.tensor([[1.0, 0.01 * i] for i in range(10)] + [[0.01 * i, 1.0] for i in range(10)]), dim=1)
    labels = torch.tensor([0] * 10 + [1] * 10)
    test = F.normalize(torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.02]]), dim=1)
    top1, top5 = knn_accuracy(test, torch.tensor([0, 1, 1]), train, labels, 2, k=5, sigma=0.1)
    assert top1 == pytest.approx(200 / 3)
    assert top5 == pytest.approx(100.0)  # only two classes: the second guess always covers it
