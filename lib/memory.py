"""NPID's memory bank: one unit-length 128-d prototype per training image."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lib import dist


class MemoryBank(nn.Module):
    """V [N, dim], a buffer so that it lives in the module's state_dict (and so in checkpoints)."""

    def __init__(self, size, dim=128, momentum=0.5):
        super().__init__()
        self.momentum = momentum
        # Random unit rows; every rank draws the same ones because every rank seeds identically.
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))

    def logits(self, features, temperature):
        """features [B, dim] -> [B, N]: similarity to every prototype, the full-softmax NPID logits."""
        return features @ self.bank.t().to(features.dtype) / temperature

    @torch.no_grad()
    def update(self, indices, *views):
        """V[i] <- normalise(m V[i] + (1 - m) f(x_i)), once per view in order.

        Called after the optimizer step, outside autograd. Indices and features are gathered from
        every process first, so all processes apply the same update and hold identical banks.
        indices: [B] long; each view: [B, dim]. Indices within one global batch must be distinct.
        """
        indices = dist.all_gather(indices)                     # [world * B]
        for features in views:
            features = dist.all_gather(features.float())       # [world * B, dim]
            mixed = self.momentum * self.bank[indices] + (1 - self.momentum) * features
            self.bank[indices] = F.normalize(mixed, dim=1)
