"""MoCo's instance-level partner: a momentum key encoder, a queue of past keys, Shuffle-BN."""
import copy

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F

from lib import dist
from lib.losses import infonce_loss


class MomentumEncoder(nn.Module):
    """Key encoder (an EMA of the online network) plus the FIFO queue of keys that serve as negatives.
    Everything lives in this module's state_dict: encoder weights, queue and pointer."""

    views = 3  # two queries through the online network (CLD runs between them) and one key

    def __init__(self, model, queue_size, dim=128, momentum=0.999, temperature=0.07):
        super().__init__()
        self.momentum, self.temperature = momentum, temperature
        self.encoder = copy.deepcopy(model)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))   # [Q, dim]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def build(cls, model, config, size):
        return cls(model, config["queue"], config["dim"], config["moco_momentum"], config["ins_t"])

    @torch.no_grad()
    def keys(self, images):
        """images [B, C, H, W] -> unit keys [B, dim] from the key encoder's instance head.
        The batch is shuffled across processes first, so BatchNorm statistics never come from the
        same images as the queries' (MoCo's Shuffle-BN); a single process has nothing to shuffle with."""
        shuffled, order = shuffle_across_processes(images)
        keys = self.encoder(shuffled)[0][0]                       # f_I of the only view, [B, dim]
        return unshuffle_across_processes(keys, order)

    def loss(self, queries, views, indices):
        """Mean over the queries of InfoNCE against this step's keys (from the third view) and the queue."""
        keys = self.keys(views[2])                                                       # [B, dim], no gradient
        loss = sum(infonce_loss(q, keys, self.queue, self.temperature) for q in queries) / len(queries)
        return loss, keys

    @torch.no_grad()
    def update(self, model, keys):
        """After the optimizer step: move the key encoder towards the online network, then enqueue
        this step's keys (gathered from every process), so both query losses saw the old queue."""
        for key_param, param in zip(self.encoder.parameters(), model.parameters()):
            key_param.mul_(self.momentum).add_(param.detach(), alpha=1 - self.momentum)
        self.enqueue(keys)

    @torch.no_grad()
    def enqueue(self, keys):
        keys = dist.all_gather(keys.float())                                             # [world * B, dim]
        slots = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        self.queue[slots] = keys                                                         # oldest keys go first
        self.ptr.copy_((self.ptr + len(keys)) % len(self.queue))


@torch.no_grad()
def shuffle_across_processes(x):
    """x [B, ...] on each process -> (a random B-slice of the gathered batch, the permutation).
    Rank 0 draws the permutation from its own RNG stream and broadcasts it; nothing is re-seeded."""
    if not dist.is_distributed():
        return x, None
    gathered = dist.all_gather(x)                                                        # [world * B, ...]
    order = torch.randperm(len(gathered), device=x.device)
    torch.distributed.broadcast(order, src=0)
    mine = order.view(dist.world_size(), -1)[dist.rank()]
    return gathered[mine], order


@torch.no_grad()
def unshuffle_across_processes(x, order):
    """Undo shuffle_across_processes: row i of the result belongs to this process's image i."""
    if order is None:
        return x
    gathered = dist.all_gather(x)                                                        # [world * B, ...]
    back = torch.argsort(order).view(dist.world_size(), -1)[dist.rank()]
    return gathered[back]
