import math

import pytest
import torch
import torch.nn as nn

from lib.models import ARCHS, CLDNet, NormLinear, build_backbone


def test_cifar_resnet18_keeps_resolution_in_stem():
    net = build_backbone("resnet18_cifar")
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    # 32x32 input: the layer-4 map is 4x4 (stride 8 in total), then a global average pool
    feats = {}
    net.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("l4", o))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert feats["l4"].shape[-2:] == (4, 4)


@pytest.mark.parametrize("arch,size,channels,dim", [("resnet18_cifar", 16, 1, 512), ("resnet20", 8, 1, 64),
                                                    ("resnet32", 32, 3, 64), ("resnet18", 64, 3, 512),
                                                    ("resnet50", 64, 3, 2048)])
def test_backbones_output_pooled_features(arch, size, channels, dim):
    net = build_backbone(arch, channels)
    assert net.out_dim == dim
    assert net(torch.randn(2, channels, size, size)).shape == (2, dim)


def test_resnet20_parameter_count():
    # He et al. report 0.27M parameters for ResNet-20 (the projection shortcuts add a few thousand)
    n = sum(p.numel() for p in build_backbone("resnet20").parameters())
    assert 0.26e6 < n < 0.30e6


def test_normlinear_is_cosine():
    layer = NormLinear(4, 3)
    x = torch.randn(5, 4)
    expected = torch.nn.functional.cosine_similarity(x[:, None, :], layer.weight[None, :, :], dim=2)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert layer(x).abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("arch, channels", [("resnet18_cifar", 3), ("resnet18_cifar", 1), ("resnet20", 3)])
def test_cifar_backbones_start_from_pytorch_default_init(arch, channels):
    # PyTorch's default conv init, kept by the authors' CIFAR ResNet18: kaiming_uniform_ with a = sqrt(5),
    # i.e. U(-b, b) with b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)), so b = 1 / sqrt(fan_in)
    # and std b / sqrt(3). torchvision's Kaiming-normal fan-out init has std sqrt(2 / fan_out) (2.45x
    # that for a 3x3 conv between equal widths) and is unbounded.
    torch.manual_seed(0)
    net = build_backbone(arch, channels)
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().double()
            n, fan_in = w.numel(), w[0].numel()
            bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / fan_in)
            std = bound / math.sqrt(3)
            assert w.abs().max() <= bound * (1 + 1e-6), name
            # Standard errors: of a uniform sample's std, relative, sqrt((kurtosis - 1) / 4n) with kurtosis
            # 9/5, i.e. sqrt(0.2 / n); of its mean, std / sqrt(n). Five of them.
            assert abs(w.std().item() / std - 1) < 5 * math.sqrt(0.2 / n), name
            assert abs(w.mean().item()) < 5 * std / math.sqrt(n), name
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name


@pytest.mark.parametrize("channels", [3, 1])
def test_imagenet_backbone_keeps_torchvision_init(channels):
    # Kaiming-normal, fan-out: std sqrt(2 / fan_out), fan_out = out_channels * kh * kw, also for the
    # conv1 that a one-channel input replaces. A normal sample's std has relative standard error 1 / sqrt(2n).
    torch.manual_seed(0)
    net = build_backbone("resnet18", channels)
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().double()
            std = math.sqrt(2 / (w.shape[0] * w[0, 0].numel()))
            assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * w.numel()), name


def test_normlinear_starts_with_unit_length_uniform_units():
    # The authors' NormedLinear: entries U(-1, 1), then every output unit's weight vector scaled to length 1.
    torch.manual_seed(0)
    w = NormLinear(512, 128).weight.detach().double()  # [out, in]: a row per output unit
    assert w.shape == (128, 512)
    assert torch.allclose(w.norm(dim=1), torch.ones(128, dtype=w.dtype), atol=1e-6)
    # Rows of U(-1, 1) draws divided by their (nearly constant) length: entries keep the uniform's
    # kurtosis E u^4 / (E u^2)^2 = (1/5) / (1/3)^2 = 1.8 (normal draws: 3). Standard error of the estimate:
    # sqrt((E z^8 - 1.8^2) / n) with E z^8 = 3^4 / 9 = 9 for z = sqrt(3) u, i.e. 2.4 / sqrt(n).
    kurtosis = (w / w.std()).pow(4).mean().item()
    assert abs(kurtosis - 1.8) < 5 * 2.4 / math.sqrt(w.numel())


@pytest.mark.parametrize("head", ["linear", "normlinear"])
def test_cldnet_two_views_unit_length(head):
    net = CLDNet("resnet20", 1, dim=16, instance_head=head, group_head=head)
    (f1, g1), (f2, g2) = net(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))
    for t in (f1, g1, f2, g2):
        assert t.shape == (4, 16)
        assert torch.allclose(t.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(net.embed(torch.randn(3, 1, 8, 8)).norm(dim=1), torch.ones(3), atol=1e-5)


def test_heads_are_separate_parameters():
    net = CLDNet("resnet20")
    assert net.instance_head.weight.data_ptr() != net.group_head.weight.data_ptr()


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_backbone("vgg")


def test_arch_list_complete():
    for arch in ARCHS:
        build_backbone(arch)
