from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from lib.cluster import _kmeanspp, kmeans, spectral_cluster


def far_blobs(n=300, dim=8, centers=6, seed=0):
    # Blob centres far apart compared with their spread, so the optimum is unambiguous.
    rng = np.random.RandomState(seed)
    means = rng.uniform(-20, 20, size=(centers, dim))
    x, y = make_blobs(n_samples=n, centers=means, cluster_std=0.5, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), y


def sphere_groups(n_per=20, dim=16, groups=4, spread=0.05, seed=0):
    # Tight groups around mutually orthogonal directions on the unit sphere.
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:groups]
    y = torch.arange(groups).repeat_interleave(n_per)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return F.normalize(x[perm], dim=1), y[perm].numpy()


def reference_kmeans(x, k, iters):
    # The authors' algorithm written with plain loops: first-K init (only N seeds when k > N), squared
    # Euclidean, plain means, zero centroid for an empty cluster, ties to the lowest index; every
    # update builds k centroids.
    pts = x.tolist()
    cent = [list(p) for p in pts[:k]]
    for _ in range(iters):
        labels = []
        for p in pts:
            dists = [sum((a - b) ** 2 for a, b in zip(p, c)) for c in cent]
            labels.append(min(range(len(cent)), key=lambda j: (dists[j], j)))
        cent = []
        for j in range(k):
            members = [p for p, l in zip(pts, labels) if l == j]
            if members:
                cent.append([sum(col) / len(members) for col in zip(*members)])
            else:
                cent.append([0.0] * len(pts[0]))
    return torch.tensor(labels), torch.tensor(cent)


def test_euclidean_matches_sklearn():
    x, _ = far_blobs()
    torch.manual_seed(0)
    labels, cent = kmeans(x, 6, iters=30, init="kmeans++", spherical=False)
    ref = KMeans(6, n_init=10, random_state=0).fit(x.numpy().astype(np.float64))
    assert adjusted_rand_score(ref.labels_, labels.numpy()) == 1.0
    inertia = ((x - cent[labels]) ** 2).sum().item()
    assert abs(inertia - ref.inertia_) <= 1e-4 * ref.inertia_


def test_spherical_matches_sklearn_on_sphere():
    x, _ = sphere_groups(groups=5, spread=0.05)
    torch.manual_seed(1)
    labels, cent = kmeans(x, 5, iters=30, init="kmeans++", spherical=True)
    ref = KMeans(5, n_init=10, random_state=0).fit(x.numpy().astype(np.float64))
    assert adjusted_rand_score(ref.labels_, labels.numpy()) == 1.0
    # Same partition, so the Euclidean inertia of our labels (plain means) equals sklearn's.
    means = torch.stack([x[labels == j].mean(0) for j in range(5)])
    inertia = ((x - means[labels]) ** 2).sum().item()
    assert abs(inertia - ref.inertia_) <= 1e-4 * ref.inertia_
    # Spherical objective: sum(1 - cos) to unit centroids equals sum_j (n_j - |sum of group j|).
    assert torch.allclose(cent.norm(dim=1), torch.ones(5), atol=1e-6)
    objective = (1 - (x * cent[labels]).sum(1)).sum()
    ref_y = torch.tensor(ref.labels_)
    expected = sum(((ref_y == j).sum() - x[ref_y == j].sum(0).norm()) for j in range(5))
    assert torch.allclose(objective, expected, rtol=1e-4, atol=1e-5)


def test_authors_mode_hand_worked():
    x = torch.tensor([[0, 0], [1, 0], [0, 1], [10, 10], [11, 10], [10, 11]], dtype=torch.float32)
    # Init c0 = (0,0), c1 = (1,0).
    # Iter 1: (0,1) is 1 from c0, 2 from c1 -> 0; (10,10) is 200 vs 181 -> 1; (11,10) 221 vs 200 -> 1;
    #   (10,11) 221 vs 202 -> 1. Labels [0,1,0,1,1,1]; c0 = (0, 0.5), c1 = (32/4, 31/4) = (8, 7.75).
    # Iter 2: (1,0) is 1.25 from c0, 109.06 from c1 -> 0; the far three go to c1.
    #   Labels [0,0,0,1,1,1]; c0 = (1/3, 1/3), c1 = (31/3, 31/3).
    labels, cent = kmeans(x, 2, iters=1, init="first", spherical=False)
    assert labels.tolist() == [0, 1, 0, 1, 1, 1]
    assert torch.allclose(cent, torch.tensor([[0, 0.5], [8, 7.75]]))
    labels, cent = kmeans(x, 2, iters=2, init="first", spherical=False)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.allclose(cent, torch.tensor([[1 / 3, 1 / 3], [31 / 3, 31 / 3]]))


def test_authors_mode_empty_cluster_gets_zero_centroid():
    x = torch.tensor([[2, 2], [2, 2], [3, 2], [8, 8], [9, 8], [8, 9]], dtype=torch.float32)
    # Init c0 = c1 = (2,2), c2 = (3,2).
    # Iter 1: (2,2) ties between c0 and c1 -> lowest index 0; (3,2) -> 2; (8,8): 72, 72, 61 -> 2;
    #   (9,8): 85, 85, 72 -> 2; (8,9): 85, 85, 74 -> 2. Labels [0,0,2,2,2,2]; cluster 1 is empty.
    #   c0 = (2,2), c1 = (0,0), c2 = (28/4, 27/4) = (7, 6.75).
    # Iter 2: (3,2): 1 from c0, 13 from c1, 38.56 from c2 -> 0; the far three stay with c2.
    #   Labels [0,0,0,2,2,2]; c0 = (7/3, 2), c1 = (0,0) still empty, c2 = (25/3, 25/3).
    labels, cent = kmeans(x, 3, iters=1, init="first", spherical=False)
    assert labels.tolist() == [0, 0, 2, 2, 2, 2]
    assert torch.allclose(cent, torch.tensor([[2, 2], [0, 0], [7, 6.75]]))
    labels, cent = kmeans(x, 3, iters=2, init="first", spherical=False)
    assert labels.tolist() == [0, 0, 0, 2, 2, 2]
    assert torch.allclose(cent, torch.tensor([[7 / 3, 2], [0, 0], [25 / 3, 25 / 3]]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("n, k", [(40, 6), (12, 12), (12, 20)])
def test_authors_mode_matches_loop_reference(seed, n, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    x[n // 2] = x[1]  # a repeated row
    labels, cent = kmeans(x, k, iters=5, init="first", spherical=False)
    ref_labels, ref_cent = reference_kmeans(x, k, 5)
    assert torch.equal(labels, ref_labels)
    assert cent.shape == (k, 5)
    assert torch.allclose(cent, ref_cent, atol=1e-5)


def test_authors_mode_k_above_n_hand_worked():
    a, b, c = [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]
    # K = 5 > N = 3: the seeds are the three rows. Each point is 0 from its own seed and at least
    # 0.4 from the others (|a - c|^2 = 0.16 + 0.64 = 0.8, |b - c|^2 = 0.36 + 0.04 = 0.4, |a - b|^2 = 2),
    # so labels [0, 1, 2]; the update builds 5 centroids, the last two empty and so zero.
    labels, cent = kmeans(torch.tensor([a, b, c]), 5, iters=5, init="first", spherical=False)
    assert labels.tolist() == [0, 1, 2]
    assert torch.equal(cent, torch.tensor([a, b, c, [0, 0], [0, 0]]))
    # A repeated row takes its first copy's index, and its own index becomes an empty, zero centroid.
    labels, cent = kmeans(torch.tensor([a, b, a]), 5, iters=5, init="first", spherical=False)
    assert labels.tolist() == [0, 1, 0]
    assert cent.tolist() == [a, b, [0, 0], [0, 0], [0, 0]]
    # An all-zero row after a repeated one: after one iteration its label is its own index 2, as above;
    # in the second it is exactly 0 from the zero centroids 1, 2 and 3, and the tie goes to index 1.
    x = torch.tensor([a, a, [0.0, 0.0]])
    labels, cent = kmeans(x, 4, iters=1, init="first", spherical=False)
    assert labels.tolist() == [0, 0, 2] and cent.tolist() == [a, [0, 0], [0, 0], [0, 0]]
    labels, _ = kmeans(x, 4, iters=2, init="first", spherical=False)
    assert labels.tolist() == [0, 0, 1]


def test_authors_mode_nearly_identical_rows_keep_their_own_seed():
    # Rows 1e-4 apart (squared distance 1e-8, below float32 rounding of |x|^2 = 1): each is exactly 0
    # from its own seed, so K >= N still gives every row its own label, as the authors' distances do.
    x = F.normalize(torch.randn(1, 8, generator=torch.Generator().manual_seed(0)), dim=1).repeat(6, 1)
    x[:, 0] += 1e-4 * torch.arange(6)
    labels, cent = kmeans(x, 8, iters=5, init="first", spherical=False)
    assert labels.tolist() == list(range(6))
    assert torch.equal(cent[:6], x) and not cent[6:].any()


@pytest.mark.parametrize("spherical", [True, False])
def test_batched_equals_separate(spherical):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(3, 50, 8, generator=g), dim=-1)
    labels, cent = kmeans(x, 7, iters=4, init="first", spherical=spherical)
    assert labels.shape == (3, 50) and labels.dtype == torch.long
    assert cent.shape == (3, 7, 8)
    for b in range(3):
        lb, cb = kmeans(x[b], 7, iters=4, init="first", spherical=spherical)
        assert torch.equal(labels[b], lb)
        assert torch.allclose(cent[b], cb, atol=1e-6)


@pytest.mark.parametrize("spherical", [True, False])
def test_centroids_gradcheck(spherical):
    # Two well-separated pairs: eps-sized perturbations cannot change the labels.
    x = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.1], [0.1, 0.9, 0.0]],
                     dtype=torch.float64)
    x = F.normalize(x, dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: kmeans(t, 2, iters=3, spherical=spherical)[1], (x,))


def test_gradient_equals_manual_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, requires_grad=True)
    w = torch.randn(5, 4, generator=g)
    labels, cent = kmeans(x, 5, iters=3, spherical=False)
    (cent * w).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    manual = torch.stack([x2[labels == j].mean(0) if (labels == j).any() else torch.zeros(4)
                          for j in range(5)])
    (manual * w).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)


def test_half_precision_input_gives_float32():
    x = F.normalize(torch.randn(20, 8), dim=1).to(torch.bfloat16)
    labels, cent = kmeans(x, 4)
    assert cent.dtype == torch.float32 and labels.shape == (20,)


@pytest.mark.parametrize("fn", [kmeans, spectral_cluster, partial(kmeans, init="kmeans++", spherical=False)])
def test_k_at_least_n_gives_singletons(fn):
    # Every mode but the authors' (Euclidean, first-K init; tested above).
    x = F.normalize(torch.randn(2, 6, 4), dim=-1)
    for k in (6, 10):
        labels, cent = fn(x, k)
        assert torch.equal(labels, torch.arange(6).repeat(2, 1))
        assert torch.equal(cent, x)
    labels, cent = fn(x[0], 9)
    assert torch.equal(labels, torch.arange(6)) and torch.equal(cent, x[0])


@pytest.mark.parametrize("fn", [kmeans, spectral_cluster])
def test_nonpositive_k_raises(fn):
    x = torch.randn(5, 3)
    for k in (0, -2):
        with pytest.raises(ValueError, match="number of clusters must be positive"):
            fn(x, k)


def test_spherical_empty_cluster_keeps_previous_centroid():
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(12, 5, generator=g), dim=1)
    x[1] = x[0]  # the first two initial centroids coincide, so cluster 1 loses every tie
    labels, cent = kmeans(x, 3, iters=1, init="first", spherical=True)
    assert not (labels == 1).any()
    assert torch.equal(cent[1], x[1])  # kept, not zeroed
    for j in (0, 2):  # the others are normalised means of their members
        assert torch.allclose(cent[j], F.normalize(x[labels == j].sum(0), dim=0), atol=1e-6)
    # Kept rather than zeroed, the centroid can win its points back once cluster 0 has moved away.
    labels, _ = kmeans(x, 3, iters=2, init="first", spherical=True)
    assert labels[0] == labels[1] == 1


def test_labels_and_centroids_consistent():
    x, _ = sphere_groups(groups=3, spread=0.6, seed=3)
    labels, cent = kmeans(x, 5, iters=3, spherical=True)
    for j in range(5):
        if (labels == j).any():
            assert torch.allclose(cent[j], F.normalize(x[labels == j].sum(0), dim=0), atol=1e-6)


def test_kmeanspp_reproducible_and_distinct():
    x = torch.randn(2, 40, 6)
    torch.manual_seed(5)
    a = _kmeanspp(x, 10, spherical=False)
    torch.manual_seed(5)
    b = _kmeanspp(x, 10, spherical=False)
    assert torch.equal(a, b) and a.shape == (2, 10)
    assert all(len(set(row.tolist())) == 10 for row in a)
    # Only 3 distinct points but 6 seeds: the seeds are still distinct rows.
    dup = F.normalize(torch.randn(3, 4), dim=1).repeat(4, 1).unsqueeze(0)  # [1, 12, 4]
    seeds = _kmeanspp(dup, 6, spherical=True)
    assert len(set(seeds[0].tolist())) == 6
    # The first three seeds cover the three distinct points (D^2 gives repeats zero weight).
    assert len({i % 3 for i in seeds[0, :3].tolist()}) == 3
    torch.manual_seed(7)
    l1, c1 = kmeans(x, 10, init="kmeans++")
    torch.manual_seed(7)
    l2, c2 = kmeans(x, 10, init="kmeans++")
    assert torch.equal(l1, l2) and torch.equal(c1, c2)


@pytest.mark.parametrize("affinity", ["relu", "abs"])
def test_spectral_recovers_groups(affinity):
    x, y = sphere_groups(n_per=25, groups=2, spread=0.1, seed=2)
    torch.manual_seed(0)
    labels, cent = spectral_cluster(x, 2, affinity=affinity)
    assert adjusted_rand_score(y, labels.numpy()) == 1.0
    for j in range(2):
        assert torch.allclose(cent[j], F.normalize(x[labels == j].sum(0), dim=0), atol=1e-6)


def test_spectral_batched_and_differentiable():
    x1, y1 = sphere_groups(n_per=15, groups=3, seed=4)
    x2, y2 = sphere_groups(n_per=15, groups=3, seed=5)
    x = torch.stack([x1, x2]).requires_grad_()
    torch.manual_seed(0)
    labels, cent = spectral_cluster(x, 3, iters=5)
    assert labels.shape == (2, 45) and cent.shape == (2, 3, 16)
    assert adjusted_rand_score(y1, labels[0].numpy()) == 1.0
    assert adjusted_rand_score(y2, labels[1].numpy()) == 1.0
    # Centroids are the normalised sums of their members, taken with autograd: the gradient of
    # sum(centroid j) w.r.t. member i is (I - c c^T) 1 / |s_j|, and zero for the other view's points.
    cent.sum().backward()
    for b in range(2):
        for j in range(3):
            members = labels[b] == j
            s = x.detach()[b][members].sum(0)
            c = F.normalize(s, dim=0)
            expected = (torch.ones(16) - c * c.sum()) / s.norm()
            assert torch.allclose(x.grad[b][members], expected.expand(int(members.sum()), 16), atol=1e-5)
    with pytest.raises(ValueError):
        spectral_cluster(x.detach(), 3, affinity="gauss")
