"""Both losses against examples worked out by hand."""
import math

import pytest
import torch

from lib.cluster import grouping
from lib.losses import cld_loss, cld_terms, npid_loss
from lib.memory import MemoryBank


def ce(logits, target):
    """Cross-entropy of one row of logits, by hand."""
    return -logits[target] + math.log(sum(math.exp(z) for z in logits))


def test_npid_loss_full_softmax_by_hand():
    memory = MemoryBank(3, dim=2)
    memory.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    f = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    t = 0.5
    # f0 . V = (0.6, 0.8, -0.6), target row 0; f1 . V = (1, 0, -1), target row 2
    expected = (ce([1.2, 1.6, -1.2], 0) + ce([2.0, 0.0, -2.0], 2)) / 2
    assert npid_loss(f, torch.tensor([0, 2]), memory, t).item() == pytest.approx(expected, rel=1e-6)


# Four images, two 2-D group features each, K = 2, spherical k-means seeded with the first two rows.
#
# View 1: a=(1,0) b=(.8,.6) c=(0,1) d=(.6,.8). Seeds a, b. c: cos(a)=0 < cos(b)=.6 -> group 1;
#   d: .6 < .96 -> group 1. Groups {a}, {b,c,d}; M1 = [(1,0), normalise(1.4, 2.4) = (.50387, .86377)].
#   Re-assigning b: cos(M1_0)=.8 < cos(M1_1)=.92136, so nothing moves: G1 = [0, 1, 1, 1].
# View 2: a'=(0,1) b'=(1,0) c'=(.8,.6) d'=(.6,.8). Seeds a', b'. c': .6 < .8 -> 1; d': .8 > .6 -> 0.
#   M2 = [normalise(.6, 1.8) = (.31623, .94868), normalise(1.8, .6) = (.94868, .31623)], stable: G2 = [0, 1, 1, 0].
G1_VIEW = [[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]
G2_VIEW = [[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.6, 0.8]]
M1 = [(1.0, 0.0), (1.4 / math.hypot(1.4, 2.4), 2.4 / math.hypot(1.4, 2.4))]
M2 = [(0.6 / math.hypot(0.6, 1.8), 1.8 / math.hypot(0.6, 1.8)), (1.8 / math.hypot(0.6, 1.8), 0.6 / math.hypot(0.6, 1.8))]
G1, G2 = [0, 1, 1, 1], [0, 1, 1, 0]


def hand_cld(t):
    dot = lambda u, v: u[0] * v[0] + u[1] * v[1]
    # view-1 features against view-2 centroids must find view 2's groups, and the other way round
    forward = [ce([dot(g, m) / t for m in M2], G2[i]) for i, g in enumerate(G1_VIEW)]
    backward = [ce([dot(g, m) / t for m in M1], G1[i]) for i, g in enumerate(G2_VIEW)]
    return (sum(forward) + sum(backward)) / 8


@pytest.mark.parametrize("t", [0.2, 0.5, 1.0])
def test_cld_loss_four_samples_by_hand(t):
    loss = cld_loss(torch.tensor(G1_VIEW), torch.tensor(G2_VIEW), grouping(2, iters=5), t)
    assert loss.item() == pytest.approx(hand_cld(t), rel=1e-5)


def test_group_accuracy_by_hand():
    # argmax of view 1 vs M2: a->1 (want 0), b->1 (1 ok), c->0 (want 1), d->0 (0 ok);
    # view 2 vs M1: a'->1 (want 0), b'->0 (want 1), c'->1 ok, d'->1 ok. 4 of 8.
    _, acc = cld_terms(torch.tensor(G1_VIEW), torch.tensor(G2_VIEW), grouping(2), 0.2)
    assert acc.item() == pytest.approx(0.5)


@pytest.mark.parametrize("spherical", [True, False])
def test_cld_gradient_equals_finite_differences(spherical):
    # The labels are piecewise constant, so away from ties the loss is smooth in the features and its
    # autograd gradient (through both views' centroids) must match central differences in float64.
    torch.manual_seed(0)
    g1 = torch.nn.functional.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1).requires_grad_()
    g2 = torch.nn.functional.normalize(torch.randn(12, 5, dtype=torch.float64), dim=1).requires_grad_()
    group = grouping(3, spherical=spherical)
    assert torch.autograd.gradcheck(lambda a, b: cld_loss(a, b, group, 0.2), (g1, g2), eps=1e-6, atol=1e-7)


def test_cld_with_k_at_least_batch_is_cross_view_instance_contrast():
    # Every image is its own group: the loss becomes CE(g1 g2^T / t, i) both ways.
    g1 = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    g2 = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    target = torch.arange(6)
    expected = (torch.nn.functional.cross_entropy(g1 @ g2.t() / 0.3, target)
                + torch.nn.functional.cross_entropy(g2 @ g1.t() / 0.3, target)) / 2
    assert cld_loss(g1, g2, grouping(10), 0.3).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("t", [0.4, 1.0])
def test_cld_authors_mode_k_above_batch_by_hand(t):
    # Three images, K = 5, the authors' k-means (Euclidean, first-K seeds). Each view's points are
    # distinct, so each is its own group (labels 0, 1, 2) and the centroids are the three points
    # followed by two zero rows: every instance also scores two logits of exactly 0.
    # View 1: a=(1,0) b=(0,1) c=(.6,.8); view 2: a'=(.8,.6) b'=(0,1) c'=(-1,0).
    # View 1 against M' = [a', b', c', 0, 0]: a -> (.8, 0, -1), b -> (.6, 1, 0), c -> (.96, .8, -.6).
    # View 2 against M = [a, b, c, 0, 0]: a' -> (.8, .6, .96), b' -> (0, 1, .8), c' -> (-1, 0, -.6).
    g1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    g2 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    forward = [[0.8, 0.0, -1.0], [0.6, 1.0, 0.0], [0.96, 0.8, -0.6]]
    backward = [[0.8, 0.6, 0.96], [0.0, 1.0, 0.8], [-1.0, 0.0, -0.6]]
    rows = [[z / t for z in r] + [0.0, 0.0] for r in forward + backward]
    expected = sum(ce(r, i % 3) for i, r in enumerate(rows)) / 6
    loss = cld_loss(g1, g2, grouping(5, spherical=False, init="first"), t)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Without the zero logits (three singleton groups, as the spherical mode gives) the value differs.
    no_zeros = sum(ce([z / t for z in r], i % 3) for i, r in enumerate(forward + backward)) / 6
    assert abs(expected - no_zeros) > 0.05
    assert cld_loss(g1, g2, grouping(5), t).item() == pytest.approx(no_zeros, rel=1e-6)


def test_spectral_method_through_cld_by_hand():
    # Two tight groups per view that any affinity separates: {0, 1, 2} around (1, 0, 0) and {3, 4, 5}
    # around (0, 1, 0). View 2 moves image 2 into the second group. Expected loss from the groups'
    # normalised sums, written out without the clusterer.
    n = torch.nn.functional.normalize
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    jitter = torch.tensor([[0, 0.05, 0.02], [0, -0.04, 0.03], [0.02, 0, -0.05]])
    g1 = n(torch.stack([a + jitter[0], a + jitter[1], a + jitter[2], b + jitter[0], b + jitter[1], b + jitter[2]]), dim=1)
    g2 = n(torch.stack([a + jitter[1], a + jitter[2], b + jitter[0], b + jitter[2], b + jitter[0], b + jitter[1]]), dim=1)
    groups1, groups2 = [[0, 1, 2], [3, 4, 5]], [[0, 1], [2, 3, 4, 5]]
    m1 = torch.stack([n(g1[idx].sum(0), dim=0) for idx in groups1])
    m2 = torch.stack([n(g2[idx].sum(0), dim=0) for idx in groups2])
    y1 = torch.tensor([0, 0, 0, 1, 1, 1])
    y2 = torch.tensor([0, 0, 1, 1, 1, 1])
    ce = torch.nn.functional.cross_entropy
    expected = (ce(g1 @ m2.t() / 0.2, y2) + ce(g2 @ m1.t() / 0.2, y1)) / 2
    for affinity in ("relu", "abs"):
        torch.manual_seed(0)
        loss = cld_loss(g1, g2, grouping(2, method="spectral", affinity=affinity), 0.2)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
