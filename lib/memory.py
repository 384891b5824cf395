"""NPID's instance-level partner: a memory bank of one unit-length 128-d prototype per training image.

Every partner (this one, lib/moco.py, ...) has the same face, which is all train_cld.py knows of it:
  views                          how many augmented views of each image a step needs;
  build(model, config, size)     the partner for a run's config (a dict) and its training set size;
  loss(queries, views, indices)  the instance loss of the online f_I of the first two views, computed
                                 inside the step's autocast, and what update() will need;
  update(model, pending, applied)  after the optimizer step, outside autograd: bank rows, EMA, queue;
                                 applied is a bool tensor [] on the step's device, False when every
                                 process skipped the step (a non-finite value): then nothing may change.
                                 It is never read on the host (no sync per step): the update is computed
                                 and kept or dropped with torch.where. None: always applied;
  state_dict() / load_state_dict()  everything the checkpoint must hold (an nn.Module's).
Optional (lib/infomin.py): online_views, the indices of the views the online network sees (default
(0, 1)), whose f_I all reach loss(); extra_input, (dataset info, size) -> a transform of each image
whose output the loader appends to the views; terms, the names of the partner's own parts of its loss,
which loss() then returns third, as a tensor [len(terms)], and metrics.jsonl logs beside loss_ins.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import dist
from lib.losses import npid_loss


class MemoryBank(nn.Module):
    """V [N, dim], a buffer so that it lives in the module's state_dict (and so in checkpoints)."""

    views = 2

    def __init__(self, size, dim=128, momentum=0.5, temperature=0.1):
        super().__init__()
        self.momentum, self.temperature = momentum, temperature
        # Random unit rows; every rank draws the same ones because every rank seeds identically.
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))

    @classmethod
    def build(cls, model, config, size):
        return cls(size, config["dim"], config["bank_momentum"], config["ins_t"])

    def logits(self, features, temperature):
        """features [B, dim] -> [B, N]: similarity to every prototype, the full-softmax NPID logits."""
        return features @ self.bank.t().to(features.dtype) / temperature

    def loss(self, queries, views, indices):
        """Mean over the views of the full-softmax NPID loss; update() then writes the same features."""
        loss = sum(npid_loss(q, indices, self, self.temperature) for q in queries) / len(queries)
        return loss, (indices, [q.detach() for q in queries])

    def update(self, model, pending, applied=None):
        indices, features = pending
        self.write(indices, *features, applied=applied)

    @torch.no_grad()
    def write(self, indices, *views, applied=None):
        """V[i] <- normalise(m V[i] + (1 - m) f(x_i)), once per view in order; where applied is a False
        tensor, V[i] stays.

        Indices and features are gathered from every process first, so all processes apply the same
        update and hold identical banks. indices: [B] long; each view: [B, dim]. Indices within one
        global batch must be distinct.
        """
        indices = dist.all_gather(indices)                     # [world * B]
        for features in views:
            features = dist.all_gather(features.float())       # [world * B, dim]
            old = self.bank[indices]
            new = F.normalize(self.momentum * old + (1 - self.momentum) * features, dim=1)
            self.bank[indices] = new if applied is None else torch.where(applied, new, old)
