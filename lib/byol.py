"""BYOL's instance-level partner (Grill et al. 2020): a target network that is an exponential moving
average of the online backbone and projector, and the regression of the online prediction of one view
onto the target projection of the other. No negatives, no bank, no queue.

The online projector and predictor are the model's byol instance head (lib/models.py BYOLHead), so the
optimizer and DistributedDataParallel see them; the queries this partner receives are the unit-length
predictions q(g(f(v))) of the two views.
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def byol_loss(predictions, targets):
    """2 - 2 cos(p, z), the mean over the batch (BYOL §3.1). predictions, targets: [B, dim] unit rows."""
    return (2 - 2 * (predictions * targets.to(predictions.dtype)).sum(dim=1)).mean()


def tau_at(step, total_steps, base_tau):
    """The target decay at step k of K: 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (BYOL §3.3), rising from
    tau_base at k = 0 to 1 at k = K."""
    k = min(step, total_steps)
    return 1 - (1 - base_tau) * (math.cos(math.pi * k / max(1, total_steps)) + 1) / 2


def online_parts(model):
    """The online modules the target averages: backbone, the (optional) shared MLP and BYOL's projection."""
    return [model.backbone, model.projector, model.instance_head.projection]


class BYOLTarget(nn.Module):
    """The target network and the number of updates it has taken (the position on the tau schedule); both
    live in the state_dict, so a resumed run continues the same schedule."""

    views = 2

    def __init__(self, model, base_tau=0.99, total_steps=1):
        super().__init__()
        if not hasattr(model.instance_head, "projection"):
            raise ValueError("the byol partner needs the byol instance head (--instance-head byol)")
        self.base_tau, self.total_steps = base_tau, total_steps
        self.backbone, self.projector, self.projection = (copy.deepcopy(m) for m in online_parts(model))
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def build(cls, model, config, size):
        # The tau schedule runs over the whole training: epochs x steps per epoch (full global batches only).
        return cls(model, config["byol_tau"], config["epochs"] * (size // config["batch_size"]))

    @torch.no_grad()
    def project(self, images):
        """images [B, C, H, W] -> unit target projections [B, dim]. The target is in training mode like the
        online network: its BatchNorm normalises with the batch's statistics, as in BYOL."""
        return F.normalize(self.projection(self.projector(self.backbone(images))), dim=1)

    def loss(self, queries, views, indices):
        """The symmetrised loss: prediction of view 1 against the target projection of view 2, plus the
        other way round (BYOL §3.1: L + L~)."""
        z1, z2 = self.project(views[0]), self.project(views[1])
        return byol_loss(queries[0], z2) + byol_loss(queries[1], z1), None

    def tau(self):
        """tau_at of the current position, as a tensor on the target's device: no host round trip per step."""
        k = self.updates.clamp(max=self.total_steps).double()
        return 1 - (1 - self.base_tau) * (torch.cos(math.pi * k / max(1, self.total_steps)) + 1) / 2

    @torch.no_grad()
    def update(self, model, pending, applied=None):
        """After the optimizer step: xi <- tau xi + (1 - tau) theta, with tau of this update's position.
        applied: None, or a bool tensor [] that is False when the step was skipped; then tau is 1 and the
        position stays, decided on the device without the host reading the flag."""
        tau = self.tau()
        if applied is not None:
            tau = torch.where(applied, tau, torch.ones_like(tau))
        online = [p for m in online_parts(model) for p in m.parameters()]
        target = [p for m in (self.backbone, self.projector, self.projection) for p in m.parameters()]
        for t, o in zip(target, online):
            t.mul_(tau.to(t.dtype)).add_(o.detach() * (1 - tau).to(t.dtype))
        self.updates += 1 if applied is None else applied.long()
