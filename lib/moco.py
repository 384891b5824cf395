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
    def update(self, model, keys, applied=None):
        """After the optimizer step: move the key encoder towards the online network, then enqueue
        this step's keys (gathered from every process), so both query losses saw the old queue.
        Where applied is a False tensor, encoder, queue and pointer stay as they are."""
        applied = torch.ones((), dtype=torch.bool, device=keys.device) if applied is None else applied
        # A skipped step moves with momentum 1: k * 1 + p * 0 == k, p being the finite weights of a good state.
        momentum = torch.where(applied, self.momentum, 1.0)
        key_params = list(self.encoder.parameters())
        torch._foreach_mul_(key_params, momentum)
        torch._foreach_add_(key_params, torch._foreach_mul([p.detach() for p in model.parameters()], 1 - momentum))
        self.enqueue(keys, applied)

    @torch.no_grad()
    def enqueue(self, keys, applied=None):
        """Write keys [B, dim] (gathered) into the oldest slots; nothing where applied is a False tensor."""
        keys = dist.all_gather(keys.float())                                             # [world * B, dim]
        slots = (self.ptr + torch.arange(len(keys), device=keys.device)) % len(self.queue)
        if applied is not None:
            keys = torch.where(applied, keys, self.queue[slots])
        self.queue[slots] = keys                                                         # oldest keys go first
        moved = len(keys) if applied is None else len(keys) * applied.long()
        self.ptr.copy_((self.ptr + moved) % len(self.queue))


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
