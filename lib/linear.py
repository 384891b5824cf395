"""Supervised evaluation of a pretrained backbone: the classifier, its augmentation, the labelled
subset for semi-supervised fine-tuning, the frozen-backbone check and the torchvision export."""
import numpy as np
import torch
import torch.nn as nn
from torchvision import transforms


class BackboneChanged(Exception):
    """A weight or BatchNorm buffer of a backbone that should have stayed frozen moved."""


class ExportError(Exception):
    """The backbone cannot be written as a torchvision ResNet."""


def linear_head(d_in, num_classes):
    """MoCo's linear classifier (main_lincls.py): weights N(0, 0.01), bias 0."""
    fc = nn.Linear(d_in, num_classes)
    nn.init.normal_(fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(fc.bias)
    return fc


def probe_transform(info, size):
    """Training augmentation for a classifier on a pretrained backbone: PIL image -> [C, size, size].

    Above 96 px, MoCo's main_lincls.py (the CLD authors ship the same file): RandomResizedCrop(size)
    at torchvision's default scale (0.08, 1) and a flip. At 96 px and below (digits, Fashion-MNIST,
    CIFAR, Kitchen-HC crops, STL-10) a supervised CIFAR recipe, LDAM-DRW's cifar_train.py: pad by
    4 px, crop back to 32 at random, flip; at other sizes the padding is an eighth of the side
    (12 px at 96, our choice). A 0.08-scale crop of a 32 px image is a 9 px patch blown up 3.5x,
    a view the frozen features never meet at test time.
    """
    if size > 96:
        crop = [transforms.RandomResizedCrop(size)]
    else:
        # The stored images may be larger than the training resolution (Fashion-MNIST at 16 px).
        crop = [transforms.Resize((size, size)), transforms.RandomCrop(size, padding=max(1, size // 8))]
    return transforms.Compose(crop + [transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      transforms.Normalize(info.mean, info.std)])


def balanced_subset(labels, fraction, seed):
    """Indices of a class-balanced labelled subset, sorted: floor(fraction * n_c) images of every
    class c (at least one), drawn by a generator that only `seed` drives, so every process of a run
    and every run with the same seed pick the same images. Negative labels (unlabelled) are skipped."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    picked = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        n = max(1, int(fraction * len(members) + 1e-9))  # the epsilon keeps 0.29 * 100 at 29
        picked.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def snapshot(module):
    """Copies of every parameter and buffer, BatchNorm running statistics included."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def check_unchanged(module, before):
    """Raise BackboneChanged naming the first entry of module's state that differs from `before`."""
    now = module.state_dict()
    for name, value in before.items():
        if name not in now or not torch.equal(now[name], value):
            raise BackboneChanged(f"backbone weight {name} changed during linear evaluation")


# This project's backbones that are torchvision ResNets, and the torchvision model each loads into.
TORCHVISION_MODELS = {"resnet18": "resnet18", "resnet50": "resnet50", "resnet18_cifar": "resnet18"}


def torchvision_state(backbone, arch, in_channels):
    """(state dict, torchvision model name, how to load it) for a backbone of architecture `arch`.

    The keys are torchvision's ResNet keys without fc, so torchvision.models.<name>() loads the dict
    with strict key matching apart from fc.weight and fc.bias; the instructions are empty when nothing
    else has to change.
    """
    if arch not in TORCHVISION_MODELS:
        raise ExportError(f"--export writes torchvision ResNet weights and {arch} is the small CIFAR ResNet of "
                          f"lib/models.py, which torchvision has no model for; pretrain with --arch resnet18_cifar, "
                          f"resnet18 or resnet50 to export a backbone")
    state = {name: value.detach().cpu().clone() for name, value in backbone.state_dict().items()}
    steps = []
    if arch == "resnet18_cifar":
        steps.append(f"model.conv1 = nn.Conv2d({in_channels}, 64, 3, 1, 1, bias=False); model.maxpool = nn.Identity()")
    elif in_channels != 3:
        steps.append(f"model.conv1 = nn.Conv2d({in_channels}, 64, 7, 2, 3, bias=False)")
    how = ("before load_state_dict(state, strict=False) set " + "; ".join(steps)) if steps else ""
    return state, TORCHVISION_MODELS[arch], how
