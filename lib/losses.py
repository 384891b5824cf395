"""The two training losses: NPID's instance discrimination and CLD's cross-level discrimination."""
import torch
import torch.nn.functional as F

from lib.cluster import kmeans, spectral_cluster


def npid_loss(features, indices, memory, temperature):
    """Full-softmax instance discrimination: each f_I(x_i) must pick its own row of the bank.
    features [B, dim], indices [B] -> scalar."""
    return F.cross_entropy(memory.logits(features, temperature), indices)


def cross_level_logits(g1, g2, k, temperature, iters=5, method="kmeans", **kmeans_options):
    """Cluster each view's group features, then score every instance against the *other* view's centroids.

    g1, g2: [N, dim] unit-length f_G of the two views (row i of both is the same image).
    Returns logits [2, N, K] (view 1 vs view-2 centroids, view 2 vs view-1 centroids) and the
    targets [2, N]: the group that the instance's other view fell into.
    """
    views = torch.stack([g1, g2])                                   # [2, N, dim]
    if method == "kmeans":
        labels, centroids = kmeans(views, k, iters=iters, **kmeans_options)   # [2, N], [2, K, dim]
    elif method == "spectral":
        labels, centroids = spectral_cluster(views, k, iters=iters, **kmeans_options)
    else:
        raise ValueError(f"unknown clustering method {method!r}; choose kmeans or spectral")
    centroids = centroids.to(views.dtype)
    logits = views @ centroids.flip(0).transpose(1, 2) / temperature   # [2, N, K]
    return logits, labels.flip(0)


def cld_terms(g1, g2, k, temperature, iters=5, **options):
    """(loss, group accuracy). Accuracy = how often an instance's nearest other-view centroid is
    the group its other view fell into, averaged over both directions; the authors' CIFAR scripts log
    the view-1 direction only (logits[0] here)."""
    logits, targets = cross_level_logits(g1, g2, k, temperature, iters, **options)
    # The mean over the batch of each direction, then of the two: the same value as one mean over all
    # 2N rows, but summed in the order of the authors' training scripts, so it matches them to the bit.
    loss = (F.cross_entropy(logits[0], targets[0]) + F.cross_entropy(logits[1], targets[1])) / 2
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, accuracy


def cld_loss(g1, g2, k, temperature, iters=5, **kmeans_options):
    """The symmetric cross-view loss of CLD (paper Eq. 3, second term, without lambda)."""
    return cld_terms(g1, g2, k, temperature, iters, **kmeans_options)[0]
