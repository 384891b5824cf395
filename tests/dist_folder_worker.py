"""Run by tests under torchrun: this process's epoch of the folder device path over a tiny image folder, and
kNN scores split over the processes; writes what it got to OUT/rank<r>.pt.

    torchrun --nproc_per_node 2 tests/dist_folder_worker.py ROOT OUT
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import dist  # noqa: E402
from lib.augment import VIEW_RECIPES, recipe_for  # noqa: E402
from lib.data import dataset_info, load_dataset  # noqa: E402
from lib.folder_device import FolderBatches  # noqa: E402
from lib.knn import knn_scores  # noqa: E402
from lib.sampler import EpochSampler  # noqa: E402

if __name__ == "__main__":
    root, out = sys.argv[1], sys.argv[2]
    rank, world, device = dist.setup()
    dataset = load_dataset("imagefolder", root, "pretrain")
    sampler = EpochSampler(len(dataset), 4, rank, world, seed=3)
    batches = FolderBatches.build(dataset, sampler, [recipe_for("aug-plus", 16), VIEW_RECIPES["byol"][1]], True,
                                  dataset_info("imagenet"), 16, 3, 3, rank, device, workers=1)
    sampler.set_epoch(1)
    steps = list(batches)
    # kNN: 70 test rows (35 per process, blocks of 32), a bank of 300 with many exact ties (dyadic features,
    # whose dot products are exact in any order) and random ones
    g = torch.Generator().manual_seed(0)
    train = torch.cat([torch.randint(-2, 3, (150, 8), generator=g).float() / 4,
                       F.normalize(torch.randn(150, 8, generator=g), dim=1)])
    test = torch.cat([torch.randint(-2, 3, (35, 8), generator=g).float() / 4,
                      F.normalize(torch.randn(35, 8, generator=g), dim=1)])
    labels = torch.randint(0, 5, (300,), generator=g)
    scores = knn_scores(test, train, labels, 5, k=7, chunk=32, across_processes=True)
    torch.save({"indices": [indices for _, indices in steps], "views": [views for views, _ in steps],
                "scores": scores, "test": test, "train": train, "labels": labels},
               os.path.join(out, f"rank{rank}.pt"))
    dist.cleanup()
