import pytest
import torch

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
