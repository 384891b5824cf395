"""C2BIN's cluster term, as we read its abstract ("Learning representations by contrasting clusters while
bootstrapping instances"): the batch's soft cluster assignments of two views are contrasted column by
column, at several scales at once; BYOL (lib/byol.py) bootstraps the instances beside it.

Only the abstract is available, so everything below the sentence "contrasting batch-wise cluster
assignment features ... a multi-scale clustering technique" is our reading: per scale, Contrastive
Clustering's cluster-level loss (Li et al. 2021) on the K_s columns of the assignment matrices,
plus its entropy term against collapse; losses averaged over the scales.
"""
import math

import torch
import torch.nn.functional as F

from lib.precision import float32

# Classes-worth of clusters per dataset for the default scales K = C, 2C, 4C. CIFAR-100 counts its 20
# superclasses, on which clustering is conventionally reported (e.g. by Contrastive Clustering).
CLASSES = {"cifar100": 20, "imagenet": 1000, "imagenet100": 100}


def default_scales(dataset, classes=None):
    c = classes or CLASSES.get(dataset, 10)
    return (c, 2 * c, 4 * c)


def column_contrast(p1, p2, temperature):
    """NT-Xent over the 2K columns of two assignment matrices p1, p2 [B, K] (rows: images, columns:
    clusters): column i of p1 and column i of p2 are positives, the other 2K - 2 columns of both views
    negatives, cosine similarity / temperature; the mean over all 2K columns."""
    k = p1.shape[1]
    columns = F.normalize(torch.cat([p1.t(), p2.t()]), dim=1)            # [2K, B]
    logits = columns @ columns.t() / temperature                          # [2K, 2K]
    self_mask = torch.eye(2 * k, dtype=torch.bool, device=p1.device)
    logits = logits.masked_fill(self_mask, float("-inf"))                 # a column is not its own negative
    positives = (torch.arange(2 * k, device=p1.device) + k) % (2 * k)     # k..2k-1, then 0..k-1; made on the device
    return F.cross_entropy(logits, positives)


def entropy_term(p):
    """log K - H(mean over the batch of p): 0 when the batch spreads evenly over the K clusters, log K when
    every image falls into one. p: [B, K] -> scalar."""
    mean = p.mean(dim=0)
    return math.log(p.shape[1]) + (mean * torch.log(mean.clamp_min(1e-12))).sum()


@float32
def c2bin_terms(logits1, logits2, scales, temperature):
    """(loss, agreement, terms [2]). logits1, logits2: [B, sum K_s], the cluster heads' output for the two
    views. Per scale: column contrast plus the entropy term of each view; the mean over scales. agreement:
    how often both views of an image fall into the same cluster of the smallest-K head. terms: the two parts
    of the loss, contrast and entropy (each the mean over scales; they add up to loss). In float32 also
    inside the step's autocast region (its column similarities would otherwise be bf16 / fp16)."""
    contrast, entropy = [], []
    for l1, l2 in zip(logits1.split(scales, dim=1), logits2.split(scales, dim=1)):
        p1, p2 = l1.softmax(dim=1), l2.softmax(dim=1)
        contrast.append(column_contrast(p1, p2, temperature))
        entropy.append(entropy_term(p1) + entropy_term(p2))
    terms = torch.stack([sum(contrast) / len(contrast), sum(entropy) / len(entropy)])
    smallest = scales.index(min(scales))
    l1, l2 = logits1.split(scales, dim=1)[smallest], logits2.split(scales, dim=1)[smallest]
    agreement = (l1.argmax(dim=1) == l2.argmax(dim=1)).float().mean()
    return terms.sum(), agreement, terms


class ClusterContrast:
    """C2BIN's term of a training step, with the call of lib/losses.py CrossLevel plus its own terms:
    (g1, g2, step) -> (loss, agreement, gradient scale, [contrast, entropy]); g1, g2 are the cluster heads'
    logits of this process's share of the batch, whose columns it contrasts. lam = 0 skips the term."""

    terms = ("loss_contrast", "loss_entropy")   # logged beside loss_cld, their sum

    def __init__(self, scales, temperature=1.0, lam=1.0):
        self.scales, self.temperature, self.lam = tuple(scales), temperature, lam

    def __call__(self, g1, g2, step):
        if self.lam == 0:
            zero = torch.zeros((), device=g1.device)
            return zero, zero, 1, torch.zeros(2, device=g1.device)
        loss, agreement, terms = c2bin_terms(g1, g2, list(self.scales), self.temperature)
        return loss, agreement, 1, terms
