"""Batch clustering for the cross-level instance-group loss.

Every training step groups the batch's group-head features into K local groups, once per view.
All functions accept [N, D] or [B, N, D] (B independent problems, e.g. the two views, clustered by
one call), stay on x.device and avoid Python loops over samples or clusters, except the inherently
sequential k-means++ seeding, whose steps are vectorised over B and N.

Two k-means flavours:
  * spherical (the paper): maximise the cosine to unit-length centroids, i.e. minimise sum(1 - cos);
  * Euclidean with first-K initialisation (the authors' public code): squared distance, plain means
    that are not re-normalised, an all-zero centroid for an empty cluster.

Precision: everything here computes in float32 (float64 for float64 input), also when called inside
an autocast region, which would otherwise run the assignment and update matrix products in bf16 or
fp16 and move points between groups (lib/precision.py): bf16 / fp16 inputs are promoted, and autocast
is off inside kmeans and spectral_cluster. The returned centroids have that computation dtype.
"""
import functools

import torch
import torch.nn.functional as F

from lib.precision import float32


def _check(k, iters):
    if k <= 0:
        raise ValueError(f"number of clusters must be positive, got {k}")
    if iters < 1:
        raise ValueError(f"number of iterations must be at least 1, got {iters}")


def _prepare(x):
    # [N, D] -> [1, N, D] (remembering to drop the batch dimension on return); promote half precision.
    if x.dim() not in (2, 3):
        raise ValueError(f"expected x of shape [N, D] or [B, N, D], got {tuple(x.shape)}")
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
    if not x.is_floating_point() or x.element_size() < 4:
        x = x.float()
    return x, single


def _finish(labels, centroids, single):
    if single:
        return labels[0], centroids[0]
    return labels, centroids


def _singletons(x, single):
    # k >= N: every sample is its own group, and its own centroid (already unit length in spherical
    # mode, and the mean of one point in Euclidean mode). K_effective = N.
    B, N, _ = x.shape
    labels = torch.arange(N, device=x.device).repeat(B, 1)  # [B, N]
    return _finish(labels, x, single)


def _scores(x, c, spherical):
    # x [B, N, D], c [B, K, D] -> [B, N, K]; larger means closer, so argmax assigns (ties: lowest index).
    if spherical:
        return x @ c.transpose(1, 2)
    # Minus the squared distance summed from coordinate differences ([B, N, K, D] in memory), as the
    # authors' KMeans computes it: a point's distance to an identical centroid is then exactly 0. The
    # expansion |x|^2 - 2 x.c + |c|^2 only gets 0 up to rounding, which can hand a point to a nearly
    # identical neighbour's centroid, e.g. when K >= N seeds every point with itself.
    return -(x.unsqueeze(2) - c.unsqueeze(1)).pow(2).sum(-1)


def _update(x, labels, k, fallback, spherical):
    """Centroids [B, K, D] of x [B, N, D] under labels [B, N], via a one-hot matmul (deterministic on
    CUDA, unlike scatter_add). Gradients reach x whenever x carries them."""
    # F.one_hot would check the labels' range on the host (on the CPU; CUDA leaves it to a device assert)
    onehot = (labels.unsqueeze(-1) == torch.arange(k, device=labels.device)).to(x.dtype)  # [B, N, K]
    sums = onehot.transpose(1, 2) @ x  # [B, K, D]
    counts = onehot.sum(1).unsqueeze(-1)  # [B, K, 1]
    if spherical:
        # An empty cluster keeps `fallback` (its previous centroid): a zero centroid would give every
        # point logit 0 for it, a spurious class in the softmax that follows.
        return torch.where(counts > 0, F.normalize(sums, dim=-1), fallback)
    # Empty clusters have zero sums and so get the all-zero centroid of the authors' code.
    return sums / counts.clamp(min=1)


def _seed_distance(x, c, spherical):
    # x [B, N, D], one seed per problem c [B, D] -> [B, N]. For unit vectors 1 - cos = |x - c|^2 / 2,
    # so both modes do D^2 sampling in their own geometry.
    # Elementwise products rather than a matrix-vector bmm, which is much slower on CPU.
    if spherical:
        return 1 - (x * c.unsqueeze(1)).sum(-1)
    return (x - c.unsqueeze(1)).pow(2).sum(-1)


def _draw(w):
    """One index per row of the weights w [B, N] (>= 0, each row with a positive entry), with probability
    proportional to its weight -> [B]. torch.multinomial(w, 1) draws exactly this (its one-sample path, an
    exponential race: the argmax of w / E, E ~ Exp(1)), the same numbers from the same generator state;
    written out because multinomial first checks its input on the host, which waits for the GPU."""
    return (w / torch.empty_like(w).exponential_(1)).argmax(1)


def _kmeanspp(x, k, spherical):
    """Indices [B, K] of k-means++ seeds of x [B, N, D] (k < N): the first uniformly, each next one
    with probability proportional to its distance to the nearest seed so far. Draws from torch's
    global generator, so runs repeat under torch.manual_seed. Seeds are always distinct points."""
    B, N, _ = x.shape
    rows = torch.arange(B, device=x.device)
    chosen = torch.zeros(B, N, dtype=torch.bool, device=x.device)
    idx = _draw(torch.ones(B, N, device=x.device))  # [B]
    picks = [idx]
    chosen[rows, idx] = True
    nearest = _seed_distance(x, x[rows, idx], spherical)  # [B, N]
    for _ in range(1, k):
        # Chosen points get exactly zero weight (rounding can leave 1 - cos slightly positive).
        w = nearest.clamp(min=0).masked_fill(chosen, 0)
        # With fewer distinct points than seeds every weight is zero: draw any unchosen point instead,
        # which also keeps _draw away from an all-zero row.
        w = torch.where(w.sum(1, keepdim=True) > 0, w, (~chosen).to(w.dtype))
        idx = _draw(w)
        picks.append(idx)
        chosen[rows, idx] = True
        nearest = torch.minimum(nearest, _seed_distance(x, x[rows, idx], spherical))
    return torch.stack(picks, 1)


def _gather_rows(x, idx):
    # x [B, N, D], idx [B, K] -> x[b, idx[b, j]] as [B, K, D]
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@float32
def kmeans(x, k, iters=5, init="first", spherical=True):
    """Batched k-means.

    x: [N, D] or [B, N, D] (B independent problems, e.g. the two views). Returns (labels, centroids):
    labels long [N] / [B, N]; centroids [K, D] / [B, K, D] in float32 (float64 for float64 input).

    spherical=True: assign by maximum cosine, centroid = L2-normalised sum of its members; x must
    already be unit length (it is not renormalised). spherical=False: squared Euclidean distance,
    centroid = plain mean, an empty cluster gets a zero centroid; with init="first" this is the
    authors' code. init: "first" (the first K rows) or "kmeans++" (D^2 seeding, global RNG).

    Each of the `iters` iterations assigns, then updates, so the returned centroids are the update
    from the returned labels. The iterations run without autograd; the final update is recomputed from
    x with autograd, so gradients flow into x exactly as through a mean taken with grad (the labels are
    discrete anyway). A spherical empty cluster keeps its previous, detached centroid.

    k >= N, the authors' mode (spherical=False, init="first"): runs their iterations unchanged. Their
    seeds x[:K] are only the N rows, so the first assignment scores N seeds; every point is at distance
    exactly 0 from its own seed and takes its own index (a repeated row takes its first copy's). The
    update then builds K centroids: the points themselves, and an all-zero row for every index no
    point chose (the K - N beyond the batch, plus any repeated row's). For distinct nonzero rows the
    later iterations change nothing: labels arange(N), centroids [K, D] = x with K - N zero rows
    appended, each of which enters the CLD softmax as a logit of exactly 0.
    k >= N, any other mode: every image is its own group (the paper's spherical k-means cannot form
    more non-empty groups than there are points, and k-means++ cannot seed more distinct points):
    labels = arange(N), centroids = x (N rows), so K_effective = N. k <= 0 raises ValueError.
    """
    _check(k, iters)
    if init not in ("first", "kmeans++"):
        raise ValueError(f"unknown init {init!r}, expected 'first' or 'kmeans++'")
    x, single = _prepare(x)
    authors = not spherical and init == "first"
    if k >= x.shape[1] and not authors:
        return _singletons(x, single)
    with torch.no_grad():
        xd = x.detach()
        if init == "first":
            cent = xd[:, :k].clone()  # [B, min(K, N), D]; the first update makes it [B, K, D]
        else:
            cent = _gather_rows(xd, _kmeanspp(xd, k, spherical))
        for step in range(iters):
            labels = _scores(xd, cent, spherical).argmax(-1)  # [B, N]
            if step < iters - 1:  # the last update is the one taken with grad below
                cent = _update(xd, labels, k, cent, spherical)
    cent = _update(x, labels, k, cent, spherical)
    return _finish(labels, cent, single)


@float32
def spectral_cluster(x, k, iters=5, affinity="relu"):
    """Spectral clustering of the batch (CLD supplementary §3). x: [N, D] or [B, N, D], unit-length rows.
    Returns (labels, centroids) like kmeans(spherical=True): centroids are the normalised means of x
    (in the original feature space, with autograd) over the spectral labels, so the CLD loss can use them.

    W = x x^T with negatives clamped to 0 (affinity="relu", our default) or replaced by |cos|
    (affinity="abs", the affinity of the authors' spectral_clustering.py, which also zeroes the diagonal).
    Both keep the diagonal (self-affinity 1): it makes every degree at least 1.
    Embedding: eigenvectors of the k smallest eigenvalues of L = D^-1/2 (D - W) D^-1/2, rows
    L2-normalised, then spherical k-means with k-means++ seeding (global RNG). On CUDA, torch.linalg.eigh
    waits for the GPU (the solver reports its convergence to the host): one host sync per step.
    """
    _check(k, iters)
    if affinity not in ("relu", "abs"):
        raise ValueError(f"unknown affinity {affinity!r}, expected 'relu' or 'abs'")
    x, single = _prepare(x)
    if k >= x.shape[1]:
        return _singletons(x, single)
    with torch.no_grad():
        xd = x.detach()
        w = xd @ xd.transpose(1, 2)  # [B, N, N] cosine affinity
        w = w.clamp(min=0) if affinity == "relu" else w.abs()
        inv_sqrt = w.sum(-1).rsqrt()  # [B, N], finite thanks to the diagonal
        a = inv_sqrt.unsqueeze(-1) * w * inv_sqrt.unsqueeze(1)  # D^-1/2 W D^-1/2 = I - L
        # L's k smallest eigenvalues are a's k largest; eigh sorts them ascending.
        _, vecs = torch.linalg.eigh(a)  # [B, N, N]
        emb = F.normalize(vecs[..., -k:], dim=-1)  # [B, N, k]
        labels, emb_cent = kmeans(emb, k, iters, init="kmeans++", spherical=True)
        # An empty group has no mean in feature space: it takes the (detached) feature of the point
        # nearest to its centroid in the embedding instead.
        rep = (emb @ emb_cent.transpose(1, 2)).argmax(1)  # [B, K]
        fallback = _gather_rows(xd, rep)
    cent = _update(x, labels, k, fallback, spherical=True)
    return _finish(labels, cent, single)


def grouping(k, method="kmeans", iters=5, spherical=True, init="first", affinity="relu"):
    """The clusterer CLD calls on every batch, fixed once from a run's settings:
    x [B, N, D] -> (labels [B, N], centroids [B, K, D]). method "kmeans" or "spectral" (supplementary §3)."""
    _check(k, iters)
    if method == "kmeans":
        return functools.partial(kmeans, k=k, iters=iters, init=init, spherical=spherical)
    if method == "spectral":
        return functools.partial(spectral_cluster, k=k, iters=iters, affinity=affinity)
    raise ValueError(f"unknown clustering method {method!r}; choose kmeans or spectral")
