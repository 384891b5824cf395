"""Weighted kNN evaluation (NPID's protocol): cosine neighbours vote with weight exp(cos / sigma).

The features may come from a network under autocast; the similarities, the top-k and the votes are
computed in float32 whatever autocast region this is called from (lib/precision.py): in bf16 a row's
200 neighbours share a few dozen distinct similarity values, and ties would decide the vote.
"""
import torch
from torch.utils.data import DataLoader, Subset

from lib import dist, signals
from lib.precision import float32


@torch.no_grad()
def extract_features(embed, dataset, device, batch_size=256, workers=0):
    """embed(images) -> [B, dim] for every item of dataset, in dataset order: [N, dim] on every rank.
    Under torch.distributed each rank embeds every world-th item and the pieces are gathered."""
    rank, world = dist.rank(), dist.world_size()
    shard = Subset(dataset, range(rank, len(dataset), world))
    # A private generator: evaluating must not draw from the training run's global RNG.
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, generator=torch.Generator().manual_seed(0),
                        worker_init_fn=signals.ignore_stop_signals)  # a stop signal is the training loop's to act on
    parts = [embed(images.to(device, non_blocking=True)).float() for images, _, _ in signals.start_workers(loader)]
    mine = torch.cat(parts) if parts else torch.empty(0, 0, device=device)
    gathered = dist.all_gather_uneven(mine)              # rank 0's items, then rank 1's, ...
    order = torch.cat([torch.arange(r, len(dataset), world) for r in range(world)])
    out = torch.empty_like(gathered)
    out[order.to(gathered.device)] = gathered
    return out


@torch.no_grad()
@float32
def knn_scores(test_features, train_features, train_labels, num_classes, k=200, sigma=0.1, chunk=1024):
    """Class scores [M, C] for test_features [M, dim] from a bank train_features [N, dim] (both unit length).

    The similarity matrix is built chunk rows at a time, so a million-image bank never needs an
    M x N matrix in memory: peak is chunk x N.
    """
    k = min(k, train_features.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        sim = test_features[start:start + chunk] @ train_features.t()      # [m, N] cosine
        top_sim, top_idx = sim.topk(k, dim=1)                               # [m, k]
        weights = (top_sim / sigma).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)               # [m, C]
        scores.append(votes)
    return torch.cat(scores)


def knn_ranked(test_features, train_features, train_labels, num_classes, k=200, sigma=0.1):
    """The min(5, C) most voted classes of each test image, best first: [M, min(5, C)]."""
    scores = knn_scores(test_features, train_features, train_labels, num_classes, k, sigma)
    return scores.topk(min(5, num_classes), dim=1).indices


def topk_accuracy(ranked, test_labels):
    """(top1, top5) in percent from ranked classes [M, 5] and labels [M]."""
    hits = ranked == test_labels[:, None]
    top1 = hits[:, 0].float().mean().item() * 100
    top5 = hits.any(dim=1).float().mean().item() * 100
    return top1, top5


def knn_accuracy(test_features, test_labels, train_features, train_labels, num_classes, k=200, sigma=0.1):
    """(top1, top5) in percent."""
    ranked = knn_ranked(test_features, train_features, train_labels, num_classes, k, sigma)
    return topk_accuracy(ranked, test_labels)


def knn_predict(embed, train_set, test_set, device, k=200, sigma=0.1, batch_size=256, workers=0):
    """Embed the labelled train set (the bank) and the test set, both with their own (test) transform;
    returns the ranked classes [M, min(5, C)] of every test image and the test labels [M]."""
    train_features = extract_features(embed, train_set, device, batch_size, workers)
    test_features = extract_features(embed, test_set, device, batch_size, workers)
    train_labels = torch.as_tensor(train_set.targets, device=device)
    test_labels = torch.as_tensor(test_set.targets, device=device)
    ranked = knn_ranked(test_features, train_features, train_labels, train_set.num_classes, k, sigma)
    return ranked, test_labels


def knn_eval(embed, train_set, test_set, device, k=200, sigma=0.1, batch_size=256, workers=0):
    """kNN (top1, top5) in percent of test_set against the bank train_set (see knn_predict)."""
    return topk_accuracy(*knn_predict(embed, train_set, test_set, device, k, sigma, batch_size, workers))
