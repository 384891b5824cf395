"""Feature-quality measures of the paper's analysis (Table 3, Fig. 6, Fig. 7) and clustering quality.

Pure functions: labels or features in, numbers out. Label arrays are any integer sequences (numpy,
torch, lists); features are torch tensors [N, D] with unit-length rows (cosine = dot product).

  * nmi(a, b): I(a; b) / sqrt(H(a) H(b)), the paper's normalisation (Table 3);
  * ari(a, b): adjusted Rand index; hungarian_accuracy(pred, true): accuracy after the best one-to-one
    matching of clusters to classes (C2BIN's clustering quality);
  * retrieval_top1: R(f, Y), the top-1 retrieval accuracy; cross_view_retrieval: R(f, f');
  * selection_score: NMI(f, f') * R(f, f') of Fig. 7; spearman: the rank agreement of two scores;
  * pair_similarities: positive / negative cosine similarities and their differences (Fig. 6).
The feature measures compute in float32 whatever autocast region they are called from (lib/precision.py).
"""
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from lib.cluster import kmeans
from lib.knn import block_rows
from lib.precision import float32


# ---------------------------------------------------------------- clustering quality

def _labels(x):
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x).astype(np.int64).ravel()


def contingency(a, b):
    """Counts [len(unique a), len(unique b)]: how many items have label a_i = row and b_i = column."""
    a, b = _labels(a), _labels(b)
    if a.shape != b.shape:
        raise ValueError(f"label arrays differ in length: {a.shape[0]} and {b.shape[0]}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max(initial=-1) + 1, bi.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)
    return table


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a, b):
    """I(a; b) / sqrt(H(a) H(b)) in [0, 1] (natural logarithms; the base cancels).

    Degenerate labellings follow scikit-learn: two single-cluster labellings agree perfectly (1.0);
    one single cluster against a real partition carries no information about it (0.0)."""
    table = contingency(a, b)
    n = table.sum()
    h_a, h_b = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_a == 0 or h_b == 0:
        return 1.0 if h_a == h_b else 0.0
    nz = table > 0
    joint = table[nz] / n
    outer = np.outer(table.sum(1), table.sum(0))[nz] / n ** 2
    mutual = float((joint * np.log(joint / outer)).sum())
    return min(1.0, max(0.0, mutual / math.sqrt(h_a * h_b)))


def ari(a, b):
    """Adjusted Rand index (Hubert and Arabie): 1 for identical partitions, about 0 for random ones."""
    table = contingency(a, b)
    pairs = lambda x: (x * (x - 1) // 2).sum()  # noqa: E731  (number of pairs within each cell)
    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), pairs(np.array([table.sum()]))
    if total == 0:
        return 1.0
    expected = rows * cols / total
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one cluster each, or all singletons)
        return 1.0
    return float((index - expected) / (maximum - expected))


def hungarian_accuracy(pred, true):
    """Fraction of items whose cluster, mapped one-to-one onto classes to maximise the matches, is their class.
    With more clusters than classes the unmatched clusters count as wrong (and vice versa)."""
    table = contingency(pred, true)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def clustering_quality(pred, true):
    """The three numbers C2BIN reports, as fractions."""
    return {"nmi": nmi(pred, true), "ari": ari(pred, true), "acc": hungarian_accuracy(pred, true)}


# ---------------------------------------------------------------- k-means with restarts

@torch.no_grad()
@float32
def kmeans_labels(x, k, restarts=5, iters=50, seed=0):
    """Spherical k-means labels [N] of unit-length x [N, D]: the best of `restarts` k-means++ runs by the
    objective sum(cos(x_i, centroid of i)). The restarts run as one batched problem of the project's
    k-means, seeded from `seed` without touching the caller's random state."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        labels, cent = kmeans(x.float().expand(restarts, -1, -1), k, iters, init="kmeans++", spherical=True)
    fit = (x.float().unsqueeze(0) * cent.gather(1, labels.unsqueeze(-1).expand(-1, -1, x.shape[1]))).sum((1, 2))
    return labels[fit.argmax()]


# ---------------------------------------------------------------- retrieval

@torch.no_grad()
@float32
def nearest(queries, bank, k=1, chunk=None):
    """(similarities, indices), each [M, k]: the k most cosine-similar rows of bank [N, D] for each of
    queries [M, D], best first. Built chunk query rows at a time (peak memory chunk x N; default: the rows
    lib/knn.py's memory budget allows, about 1 GiB at any bank size)."""
    chunk = chunk or block_rows(bank.shape[0])
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        s, i = (queries[start:start + chunk] @ bank.t()).topk(min(k, bank.shape[0]), dim=1)
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def retrieval_top1(queries, query_labels, bank, bank_labels, chunk=None):
    """R(f, Y): fraction of queries whose nearest bank item (cosine) has the query's label."""
    _, idx = nearest(queries, bank, 1, chunk)
    bank_labels = torch.as_tensor(bank_labels, device=idx.device)
    query_labels = torch.as_tensor(query_labels, device=idx.device)
    return (bank_labels[idx[:, 0]] == query_labels).float().mean().item()


@torch.no_grad()
@float32
def cross_view_retrieval(f, f2, chunk=None):
    """R(f, f'): fraction of images i whose nearest neighbour (cosine) of f_i among all rows of f' is f'_i.

    A tie counts as a miss: f'_i must be strictly closer than every other f'_j. Otherwise a collapsed
    network, whose features are all equal, would retrieve every image perfectly. Built chunk rows at a time
    (default: lib/knn.py's memory budget, about 1 GiB)."""
    chunk = chunk or block_rows(f2.shape[0])
    hits = 0
    for start in range(0, f.shape[0], chunk):
        sim = f[start:start + chunk] @ f2.t()                              # [m, N]
        rows = torch.arange(sim.shape[0], device=sim.device)
        own = sim[rows, start + rows].clone()
        sim[rows, start + rows] = -math.inf
        hits += (own > sim.max(dim=1).values).sum().item()
    return hits / f.shape[0]


def selection_score(f, f2, k, restarts=5, iters=50, seed=0):
    """Fig. 7's unsupervised score for features f, f2 [N, D] of two augmentations of the same N images:
    NMI between the k-means labels of f and of f2, R(f, f2), and their product (all in [0, 1])."""
    labels = kmeans_labels(f, k, restarts, iters, seed)
    labels2 = kmeans_labels(f2, k, restarts, iters, seed + 1)
    agreement, retrieval = nmi(labels, labels2), cross_view_retrieval(f, f2)
    return {"nmi": agreement, "r": retrieval, "score": agreement * retrieval}


# ---------------------------------------------------------------- Fig. 6

@torch.no_grad()
@float32
def pair_similarities(f, f2):
    """A_ij = cos(f_i, f2_j) for two views of N images. Returns numpy arrays: positives A_ii [N],
    negatives A_ij (j != i) [N(N-1)] and differences A_ii - A_ij (j != i) [N(N-1)]."""
    a = (f @ f2.t()).float()
    positive = a.diagonal()
    off = ~torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    negative = a[off]
    difference = (positive.unsqueeze(1) - a)[off]
    return positive.cpu().numpy(), negative.cpu().numpy(), difference.cpu().numpy()


# ---------------------------------------------------------------- ranking

def _ranks(x):
    # Average ranks (1-based) with ties sharing the mean of the ranks they span.
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    return ranks


def spearman(a, b):
    """Spearman's rank correlation of two equally long score lists; nan when it is undefined (fewer than
    two items, or one list constant)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"score lists differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a) - (len(a) + 1) / 2, _ranks(b) - (len(b) + 1) / 2
    denom = math.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan
