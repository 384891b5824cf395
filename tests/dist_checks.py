"""Run by tests under torchrun: Shuffle-BN's inverse and clustering over the gathered batch."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib import dist  # noqa: E402
from lib.cluster import grouping  # noqa: E402
from lib.losses import cld_terms  # noqa: E402
from lib.moco import shuffle_across_processes, unshuffle_across_processes  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    rank, world, _ = dist.setup()
    torch.manual_seed(0)                                   # every process draws the same full batch
    images = torch.randn(world * 4, 3, 2, 2)
    mine = images.view(world, 4, 3, 2, 2)[rank]
    shuffled, order = shuffle_across_processes(mine)
    restored = unshuffle_across_processes(shuffled, order)

    g1 = F.normalize(torch.randn(world * 8, 16), dim=1)
    g2 = F.normalize(torch.randn(world * 8, 16), dim=1)
    own1 = g1[rank * 8:(rank + 1) * 8].clone().requires_grad_()
    own2 = g2[rank * 8:(rank + 1) * 8].clone().requires_grad_()
    loss, accuracy = cld_terms(dist.all_gather_with_grad(own1), dist.all_gather_with_grad(own2), grouping(5), 0.2)
    loss.backward()
    torch.save({"mine": mine, "shuffled": shuffled, "restored": restored, "order": order, "loss": loss.detach(),
                "accuracy": accuracy, "grad1": own1.grad, "grad2": own2.grad, "g1": g1, "g2": g2},
               os.path.join(out, f"checks{rank}.pt"))
    dist.cleanup()
