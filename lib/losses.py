"""The training losses: NPID's instance discrimination, MoCo's InfoNCE and CLD's cross-level discrimination."""
import torch
import torch.nn.functional as F

from lib import dist
from lib.precision import float32


def npid_loss(features, indices, memory, temperature):
    """Full-softmax instance discrimination: each f_I(x_i) must pick its own row of the bank.
    features [B, dim], indices [B] -> scalar."""
    return F.cross_entropy(memory.logits(features, temperature), indices)


def infonce_loss(queries, keys, queue, temperature):
    """MoCo's InfoNCE with the positive in column 0: CE([q.k, q.queue^T] / T, 0).
    queries, keys [B, dim]; queue [Q, dim] of negatives -> scalar."""
    positive = (queries * keys.to(queries.dtype)).sum(dim=1, keepdim=True)          # [B, 1]
    negative = queries @ queue.t().to(queries.dtype)                                 # [B, Q]
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(queries), dtype=torch.long, device=queries.device))


def cross_level_logits(g1, g2, group, temperature, cross=True):
    """Cluster each view's group features, then score every instance against the *other* view's centroids.

    g1, g2: [N, dim] unit-length f_G of the two views (row i of both is the same image); group: the
    clusterer, [2, N, dim] -> (labels [2, N], centroids [2, K, dim]) (lib.cluster.grouping).
    Returns logits [2, N, K] (view 1 vs view-2 centroids, view 2 vs view-1 centroids) and the
    targets [2, N]: the group that the instance's other view fell into. cross=False is the ablation
    without cross-augmentation comparison (supplementary Table A.2): each view against its own view's
    centroids, the target its own group.
    """
    views = torch.stack([g1, g2])                                   # [2, N, dim]
    labels, centroids = group(views)                                # [2, N], [2, K, dim]
    centroids = centroids.to(views.dtype)
    if not cross:
        return views @ centroids.transpose(1, 2) / temperature, labels
    logits = views @ centroids.flip(0).transpose(1, 2) / temperature   # [2, N, K]
    return logits, labels.flip(0)


@float32
def cld_terms(g1, g2, group, temperature, cross=True):
    """(loss, group accuracy). Accuracy = how often an instance's nearest other-view centroid is
    the group its other view fell into, averaged over both directions; the authors' CIFAR scripts log
    the view-1 direction only (logits[0] here). Grouping, logits and loss are float32 also inside the
    step's autocast region (g1, g2 promoted; gradients flow back through the promotion)."""
    logits, targets = cross_level_logits(g1, g2, group, temperature, cross)
    # The mean over the batch of each direction, then of the two: the same value as one mean over all
    # 2N rows, but summed in the order of the authors' training scripts, so it matches them to the bit.
    loss = (F.cross_entropy(logits[0], targets[0]) + F.cross_entropy(logits[1], targets[1])) / 2
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return loss, accuracy


def cld_loss(g1, g2, group, temperature):
    """The symmetric cross-view loss of CLD (paper Eq. 3, second term, without lambda)."""
    return cld_terms(g1, g2, group, temperature)[0]


class CrossLevel:
    """CLD's term of a training step (paper Eq. 3, second term), fixed once from a run's settings.

    Called with the group features of the two views of this process's share of the batch, it returns
    (loss, group accuracy, gradient scale). Like the authors, each process clusters its own share; with
    gather=True every process clusters the batch gathered from all processes instead, with the same
    random seed, and each keeps the gradient through its own rows only: DDP then averages over
    processes, and the gradient scale (the world size) undoes that average. lam = 0 skips the term;
    cross=False compares each view with its own view's groups (the ablation of supplementary Table A.2).
    """

    def __init__(self, group, temperature, lam, gather=False, seed=0, cross=True):
        self.group, self.temperature, self.lam, self.gather, self.seed = group, temperature, lam, gather, seed
        self.cross = cross

    def __call__(self, g1, g2, step):
        if self.lam == 0:
            zero = torch.zeros((), device=g1.device)
            return zero, zero, 1
        world = dist.world_size()
        if not self.gather or world == 1:
            return (*cld_terms(g1, g2, self.group, self.temperature, self.cross), 1)
        g1, g2 = dist.all_gather_with_grad(g1), dist.all_gather_with_grad(g2)   # [world * B, dim]
        with torch.random.fork_rng(devices=[g1.device] if g1.device.type == "cuda" else []):
            torch.manual_seed(self.seed * 1_000_003 + step)
            loss, accuracy = cld_terms(g1, g2, self.group, self.temperature, self.cross)
        return loss, accuracy, world
