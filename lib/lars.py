"""LARS (You et al. 2017), the optimiser of BYOL (Grill et al. 2020, §3.3).

Each adapted parameter w takes the step lr * v, where v <- momentum * v + r (g + wd w) and the trust ratio
r = eta * |w| / (|g| + wd |w|) (You et al. Eq. 6 with weight decay; the same form as solo-learn's
solo/utils/lars.py, whose CIFAR BYOL recipe this project's 32 px rows take). clip (solo-learn's
clip_lars_lr) caps the adapted step at the plain one: r <- min(r / lr, 1), a step of min(eta |w| / ..., lr).
Parameters of a group with adapt=False (biases and BatchNorm, see param_groups) take plain SGD with momentum.
"""
import torch


def param_groups(model, weight_decay):
    """Two groups: the weights (adapted and decayed), and the 1-d parameters (biases and BatchNorm scales and
    shifts), excluded from both adaptation and weight decay as in BYOL."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "adapt": False}]


class LARS(torch.optim.Optimizer):
    """A step is skipped on the device when the attribute found_inf (a tensor, set by whoever steps it, as
    GradScaler does with torch's own optimizers) is non-zero: no host read of it."""
    _step_supports_amp_scaling = True

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, clip=False):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, adapt=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        keep = None if found_inf is None else found_inf == 0
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=wd)
                if group["adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                    # A zero weight or gradient norm leaves the step unscaled (ratio 1), as solo-learn does.
                    ratio = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["eta"] * w_norm / (g_norm + wd * w_norm), torch.ones_like(w_norm))
                    if group["clip"]:
                        ratio = (ratio / lr).clamp(max=1)
                    update = update * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)   # m * 0 + update: the first step's update
                buffer = state["momentum_buffer"]
                new_buffer = buffer * group["momentum"] + update
                new_p = p - lr * new_buffer
                buffer.copy_(new_buffer if keep is None else torch.where(keep, new_buffer, buffer))
                p.copy_(new_p if keep is None else torch.where(keep, new_p, p))  # kept only where found_inf is 0
        return loss
