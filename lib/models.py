"""Backbones and the two CLD heads.

CLDNet = backbone f -> (instance head f_I, group head f_G), both outputs L2-normalised.
The paper: "instance and group branches share the same model except for the last fc layer".
BYOL's online projector and predictor form one more instance-head kind (BYOLHead), and C2BIN's
per-scale cluster heads one more group-head kind (ClusterHeads), whose output stays unnormalised.
"""
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision


# ---------------------------------------------------------------- backbones

@torch.no_grad()
def pytorch_default_init(net):
    """Re-draw every conv, BatchNorm and Linear layer of net with PyTorch's own defaults: conv and
    Linear weights kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm
    weight 1, bias 0 (and fresh running statistics). Returns net."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
            m.reset_parameters()
    return net


def resnet18_cifar(in_channels=3):
    """ResNet-18 with the CIFAR stem: 3x3 stride-1 conv, no max-pool, global average pool.
    (An ImageNet stem on 32x32 inputs shrinks the map 4x too early and costs several points.)
    torchvision's layout, but PyTorch's default layer init, as the authors' CIFAR ResNet18
    (models/resnet_cifar.py, which sets no init of its own), instead of torchvision's Kaiming-normal
    fan-out convs, whose std is up to 2.45x larger."""
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.out_dim = 512
    return pytorch_default_init(net)


def resnet_imagenet(depth, in_channels=3):
    """torchvision ResNet-18/50 (ImageNet stem) for 96 px and 224 px inputs; fc removed. Keeps
    torchvision's init (Kaiming-normal fan-out convs), as MoCo's main_moco.py and the authors'
    models/ResNet.py have it."""
    net = getattr(torchvision.models, f"resnet{depth}")()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # like the rest
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # projection shortcut ("option B" of He et al.)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): widths 16/32/64, three stages of n blocks.
    ResNet-20 has 0.27M parameters: the CPU-sized network for quick experiments. Not in the authors'
    code; it keeps PyTorch's default layer init, like their CIFAR ResNet18 (our choice)."""

    def __init__(self, depth=20, in_channels=3):
        super().__init__()
        assert (depth - 2) % 6 == 0, "depth must be 6n+2"
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, c_out in enumerate([16, 32, 64]):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = 64

    def forward(self, x):
        x = self.blocks(self.stem(x))          # [B, 64, H/4, W/4]
        return x.mean(dim=(2, 3))              # global average pool -> [B, 64]


ARCHS = ("resnet18_cifar", "resnet20", "resnet32", "resnet56", "resnet18", "resnet50")


def build_backbone(arch, in_channels=3):
    if arch == "resnet18_cifar":
        return resnet18_cifar(in_channels)
    if arch in ("resnet20", "resnet32", "resnet56"):
        return SmallResNet(int(arch[6:]), in_channels)
    if arch in ("resnet18", "resnet50"):
        return resnet_imagenet(int(arch[6:]), in_channels)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


# ---------------------------------------------------------------- heads

class NormLinear(nn.Module):
    """Bias-free cosine layer: <x/|x|, w_j/|w_j|> for every output unit j.

    Initialised as the authors' NormedLinear: entries U(-1, 1), then every output unit's weight vector
    scaled to unit length. Theirs is stored [in, out] with a unit per column; ours is [out, in] with a
    unit per row, drawn as the same [in, out] matrix and transposed (so one seed gives one draw).
    The forward pass normalises w, but its length still matters: the gradient through the
    normalisation scales as 1/|w|, so each SGD step turns a unit's direction by an angle ~ 1/|w|^2."""

    def __init__(self, d_in, d_out):
        super().__init__()
        w = torch.empty(d_in, d_out).uniform_(-1, 1)                             # [in, out]
        self.weight = nn.Parameter((w / w.norm(dim=0)).t().contiguous())       # [out, in], unit rows

    def forward(self, x):
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


HEADS = ("linear", "normlinear")
INSTANCE_HEADS = HEADS + ("byol",)      # byol: BYOLHead, for the byol partner (lib/byol.py)
GROUP_HEADS = HEADS + ("clusters", "shared")  # clusters: ClusterHeads, for the C2BIN term (lib/c2bin.py);
# shared: no group head, f_G is f_I (the one-branch ablation of the supplementary, Table A.2 "share")
GROUP_INPUTS = ("backbone", "hidden")   # what f_G reads: the backbone feature or BYOL's projector hidden layer


def build_head(kind, d_in, d_out):
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "normlinear":
        return NormLinear(d_in, d_out)
    raise ValueError(f"unknown head {kind!r}; choose one of {', '.join(HEADS)}")


def byol_mlp(d_in, hidden, d_out):
    """BYOL's MLP (Grill et al. 2020, §3.3): Linear, BatchNorm, ReLU, Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, d_out))


class BYOLHead(nn.Module):
    """BYOL's online projector g (d_in -> hidden -> dim) and predictor q (dim -> hidden -> dim).
    The target network copies backbone and projection only (lib/byol.py)."""

    def __init__(self, d_in, hidden=4096, dim=256):
        super().__init__()
        self.projection = byol_mlp(d_in, hidden, dim)
        self.prediction = byol_mlp(dim, hidden, dim)

    def forward(self, h):
        """h [B, d_in] -> (prediction q(g(h)) [B, dim], the projector's hidden layer after ReLU [B, hidden])."""
        hidden = self.projection[:3](h)
        return self.prediction(self.projection[3](hidden)), hidden


class ClusterHeads(nn.Module):
    """C2BIN's cluster heads, one per scale K_s: an MLP whose softmax is the assignment over K_s clusters.
    The MLP is Contrastive Clustering's cluster projector (Li et al. 2021: Linear, ReLU, Linear); the C2BIN
    abstract does not describe its heads (our choice). Output: the scales' logits side by side [B, sum K_s]."""

    def __init__(self, d_in, scales):
        super().__init__()
        self.scales = tuple(scales)
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(inplace=True), nn.Linear(d_in, k))
                                   for k in self.scales)

    def forward(self, h):
        return torch.cat([head(h) for head in self.heads], dim=1)

    @torch.no_grad()
    def assign(self, h):
        """The cluster of each image at inference: the argmax of the smallest-K head. h [B, d_in] -> [B]."""
        return self.heads[self.scales.index(min(self.scales))](h).argmax(dim=1)


class JigsawHead(nn.Module):
    """InfoMin's jigsaw head (PIRL's; the authors' infomin/utils.py JigsawHead): every tile's backbone
    feature through fc1, the tiles of each image put in a random order, concatenated, then fc2 and
    L2 normalisation. fc1 has its own hidden Linear + ReLU when `hidden` (their 'mlp'/'normmlp'
    heads); `kind` is the kind of fc1's last layer and of fc2 (their NormLinear for 'normmlp')."""

    def __init__(self, d_in, dim, kind, hidden, tiles=9):
        super().__init__()
        last = build_head(kind, d_in, dim)
        self.fc1 = nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), last) if hidden else last
        self.fc2 = build_head(kind, dim * tiles, dim)
        self.tiles = tiles

    def forward(self, h):
        """h [B * tiles, d_in], the tiles of each image in a row -> [B, dim], unit length."""
        x = self.fc1(h)                                                       # [B * T, dim]
        n = len(x) // self.tiles
        # One permutation per image, drawn in turn from torch's CPU generator (as the authors' head), then
        # copied to the GPU from pinned memory without the host waiting for the GPU's queue.
        order = torch.stack([torch.randperm(self.tiles, device="cpu") for _ in range(n)])    # [B, T]
        if x.is_cuda:
            order = order.pin_memory().to(x.device, non_blocking=True)
        x = x.view(n, self.tiles, -1)[torch.arange(n, device=x.device)[:, None], order]   # [B, T, dim]
        return F.normalize(self.fc2(x.reshape(n, -1)), dim=1)


class CLDNet(nn.Module):
    """backbone -> [shared hidden layer] -> (f_I, f_G), each [B, dim] and unit length.

    mlp=True adds MoCo v2's hidden Linear(d, d) + ReLU, shared by both heads: with NormLinear heads
    this is the authors' "NormMLP" for ImageNet MoCo v2+CLD.
    jigsaw_head (a head kind, or "none") adds InfoMin's JigsawHead, on the backbone directly as in the
    authors' RGBTriHeads; a view of shape [B, T, C, h, w] (T jigsaw tiles per image) goes through it.
    """

    def __init__(self, arch, in_channels=3, dim=128, instance_head="linear", group_head="linear", mlp=False,
                 byol_hidden=4096, byol_dim=256, cluster_scales=(), group_input="backbone", jigsaw_head="none"):
        super().__init__()
        if group_input not in GROUP_INPUTS:
            raise ValueError(f"unknown group input {group_input!r}; choose one of {', '.join(GROUP_INPUTS)}")
        if group_input == "hidden" and instance_head != "byol":
            raise ValueError("group input 'hidden' (the projector's hidden layer) needs the byol instance head")
        self.backbone = build_backbone(arch, in_channels)
        width = self.backbone.out_dim
        self.projector = nn.Sequential(nn.Linear(width, width), nn.ReLU()) if mlp else nn.Identity()
        if instance_head == "byol":
            self.instance_head = BYOLHead(width, byol_hidden, byol_dim)
        else:
            self.instance_head = build_head(instance_head, width, dim)
        self.group_input = group_input
        group_width = byol_hidden if group_input == "hidden" else width
        if group_head == "clusters":
            self.group_head = ClusterHeads(group_width, cluster_scales)
        elif group_head == "shared":
            if instance_head == "byol":
                raise ValueError("group head 'shared' takes f_I as f_G, which the byol instance head does not have")
            self.group_head = None
        else:
            self.group_head = build_head(group_head, group_width, dim)
        # widths of parts(x): backbone feature, f_I, f_G
        self.part_dims = (width, byol_dim if instance_head == "byol" else dim,
                          sum(cluster_scales) if group_head == "clusters" else dim)
        if jigsaw_head != "none":
            self.jigsaw_head = JigsawHead(width, dim, jigsaw_head, hidden=mlp)

    def forward(self, *views):
        """Each view [B, C, H, W] -> a list of (f_I, f_G) pairs, each [B, dim]; a jigsaw view
        [B, T, C, h, w] -> (f_J [B, dim], None).
        One call for all views keeps DistributedDataParallel to one forward per step, while every
        view still gets its own BatchNorm statistics, as in the authors' code."""
        out = []
        for x in views:
            if x.dim() == 5:  # all tiles through the backbone as one batch, as the authors do
                if not hasattr(self, "jigsaw_head"):
                    raise ValueError("a jigsaw input needs a network built with a jigsaw head")
                out.append((self.jigsaw_head(self.backbone(x.flatten(0, 1))), None))
            else:
                out.append(self.parts(x)[1:])
        return out

    def parts(self, x):
        """x [B, C, H, W] -> (backbone feature [B, out_dim], unit f_I, f_G): f_G is unit length too, except
        the cluster heads' logits. With the byol head f_I is the prediction, and f_G may read its hidden layer."""
        h = self.backbone(x)                                               # [B, out_dim]
        p = self.projector(h)
        if isinstance(self.instance_head, BYOLHead):
            f_i, hidden = self.instance_head(p)
        else:
            f_i, hidden = self.instance_head(p), None
        f_i = F.normalize(f_i, dim=1)
        if self.group_head is None:  # shared: one branch, f_G = f_I
            return h, f_i, f_i
        g = self.group_head(hidden if self.group_input == "hidden" else p)
        if not isinstance(self.group_head, ClusterHeads):
            g = F.normalize(g, dim=1)
        return h, f_i, g

    def embed(self, x):
        """The evaluation feature: normalised f_I (the paper's kNN protocol, after NPID); with the byol head
        the normalised backbone feature, the representation BYOL evaluates (Grill et al. 2020, §3.1)."""
        if isinstance(self.instance_head, BYOLHead):
            return F.normalize(self.backbone(x), dim=1)
        return F.normalize(self.instance_head(self.projector(self.backbone(x))), dim=1)


@dataclass(frozen=True)
class NetworkSpec:
    """What rebuilds a run's network: checkpoints store it as plain values (asdict), the evaluation
    scripts build from it, and --resume compares it with the run's own."""
    arch: str
    in_channels: int
    image_size: int
    dim: int = 128
    instance_head: str = "linear"
    group_head: str = "linear"
    mlp: bool = False
    byol_hidden: int = 4096            # the byol head's hidden width
    byol_dim: int = 256                # and its projection width
    cluster_scales: tuple = ()         # K_s of the clusters group head
    group_input: str = "backbone"
    jigsaw_head: str = "none"          # InfoMin's jigsaw head, of this kind ("none": no jigsaw branch)

    def __post_init__(self):
        object.__setattr__(self, "cluster_scales", tuple(self.cluster_scales))  # a JSON list in a config

    @classmethod
    def from_config(cls, config, in_channels):
        """From a run's settings (train_cld.py's args as a dict, or a checkpoint's config)."""
        return cls(config["arch"], in_channels, config["image_size"], config["dim"], config["instance_head"],
                   config["group_head"], bool(config.get("mlp", False)), config.get("byol_hidden", 4096),
                   config.get("byol_dim", 256), tuple(config.get("c2bin_scales") or ()),
                   config.get("group_input", "backbone"), config.get("jigsaw_head", "none"))

    def build(self):
        return CLDNet(self.arch, self.in_channels, self.dim, self.instance_head, self.group_head, self.mlp,
                      self.byol_hidden, self.byol_dim, self.cluster_scales, self.group_input, self.jigsaw_head)

    def differences(self, other):
        """[(field, self's value, other's value)] where the two disagree."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


def build_model(config, in_channels):
    """The network a run trained, from its config (a checkpoint's "config" entry or train_cld.py's args)."""
    return NetworkSpec.from_config(config, in_channels).build()
