"""The learning rate of every step: the authors' CIFAR schedule (lib/lr_scheduler.py of their code)."""
import math


def lr_at(step, steps_per_epoch, peak_lr, epochs, warmup_epochs=5, min_lr=1e-6):
    """Linear warm-up from peak/100 over warmup_epochs, then a per-iteration cosine down to min_lr."""
    warmup = warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak_lr / 100 + (peak_lr - peak_lr / 100) * step / warmup
    progress = (step - warmup) / max(1, epochs * steps_per_epoch - warmup)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))
