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
    Under torch.distributed each rank embeds every world-th item and the pieces are gathered. A dataset of
    image files (lib/folder_device.py FileBytes with a to_device) is read as bytes by the workers and
    decoded and transformed on the device."""
    rank, world = dist.rank(), dist.world_size()
    shard = Subset(dataset, range(rank, len(dataset), world))
    to_device = getattr(dataset, "to_device", None)
    # A private generator: evaluating must not draw from the training run's global RNG.
    loader = DataLoader(shard, batch_size=batch_size, num_workers=workers, generator=torch.Generator().manual_seed(0),
                        collate_fn=getattr(dataset, "collate", None),
                        pin_memory=to_device is not None and device.type == "cuda",
                        worker_init_fn=signals.ignore_stop_signals)  # a stop signal is the training loop's to act on
    to_device = to_device or (lambda images, device: images.to(device, non_blocking=True))
    parts = [embed(to_device(images, device)).float() for images, _, _ in signals.start_workers(loader)]
    mine = torch.cat(parts) if parts else torch.empty(0, 0, device=device)
    gathered = dist.all_gather_uneven(mine)              # rank 0's items, then rank 1's, ...
    order = torch.cat([torch.arange(r, len(dataset), world) for r in range(world)])
    out = torch.empty_like(gathered)
    out[order.to(gathered.device)] = gathered
    return out


# knn_scores' default budget for the memory it adds to its inputs and output: our choice, small beside a
# network on any GPU and beside a training run in a machine's RAM, whatever the bank's size.
MEMORY = 2**30
# Per similarity in a block: its float32 value. Beside the block, topk works on one row at a time (on the
# CPU 16 bytes per bank image per thread: 20 MB at ImageNet's size; experiments/benchmark.py's knn-imagenet
# part measures the whole, docs/imagenet-device-path.md).
BYTES_PER_SIMILARITY = 4
# Never fewer test rows per block: the CPU's matrix product sums a block of 1 to 3 rows in another order
# than a larger one (the last bit of a similarity, and with it a tie at the k-th neighbour, would differ).
MIN_ROWS = 32


def block_rows(bank_size, memory=MEMORY):
    """Test rows per similarity block [rows, bank_size] that fit in `memory` bytes, at least MIN_ROWS."""
    return max(MIN_ROWS, memory // (max(1, bank_size) * BYTES_PER_SIMILARITY))


def process_share(m):
    """This process's test rows under torch.distributed: (first, end) of a contiguous share of m rows."""
    rank, world = dist.rank(), dist.world_size()
    return rank * m // world, (rank + 1) * m // world


@torch.no_grad()
@float32
def knn_scores(test_features, train_features, train_labels, num_classes, k=200, sigma=0.1, chunk=None,
               memory=MEMORY, across_processes=False):
    """Class scores [M, C] for test_features [M, dim] from a bank train_features [N, dim] (both unit length).

    The similarities are built one block of test rows at a time: chunk rows (default: block_rows(N, memory),
    so that a block holds about `memory` bytes, a million-image bank included; one block is alive at a time). Every
    block has exactly min(chunk, M) rows, the last one overlapping its neighbour, so that every matrix
    product has one shape and a test image's similarities, neighbours and ties are the same whichever block
    or process scores it. across_processes: every process calls this with the same features; each scores
    its contiguous share of the test rows and every process gets all M rows (all_gather_uneven).
    """
    m, n = test_features.shape[0], train_features.shape[0]
    k = min(k, n)
    rows = max(1, min(m, chunk or block_rows(n, memory)))
    first, end = process_share(m) if across_processes else (0, m)
    scores = [torch.zeros(0, num_classes, device=test_features.device)]
    for start in range(first, end, rows):
        window = max(0, min(start, m - rows))                                   # a full block holding start..
        stop = min(start + rows, end)
        sim = test_features[window:window + rows] @ train_features.t()          # [rows, N] cosine
        top_sim, top_idx = sim[start - window:stop - window].topk(k, dim=1)     # [m', k] of the rows to score
        del sim  # before the next block is built: two blocks alive at once would double the peak
        weights = (top_sim / sigma).exp()
        votes = torch.zeros(top_sim.shape[0], num_classes, device=top_sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)                   # [m', C]
        scores.append(votes)
    scores = torch.cat(scores)
    return dist.all_gather_uneven(scores) if across_processes else scores


def knn_ranked(test_features, train_features, train_labels, num_classes, k=200, sigma=0.1, across_processes=False):
    """The min(5, C) most voted classes of each test image, best first: [M, min(5, C)]."""
    scores = knn_scores(test_features, train_features, train_labels, num_classes, k, sigma,
                        across_processes=across_processes)
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
    # Every process holds every feature; each scores its share of the test images.
    ranked = knn_ranked(test_features, train_features, train_labels, train_set.num_classes, k, sigma,
                        across_processes=True)
    return ranked, test_labels


def knn_eval(embed, train_set, test_set, device, k=200, sigma=0.1, batch_size=256, workers=0):
    """kNN (top1, top5) in percent of test_set against the bank train_set (see knn_predict)."""
    return topk_accuracy(*knn_predict(embed, train_set, test_set, device, k, sigma, batch_size, workers))
