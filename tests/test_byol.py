"""BYOL's partner, LARS, C2BIN's cluster term and BYOL's asymmetric views: each against a hand-worked
example; then both modes end to end (resume, two processes)."""
import contextlib
import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from torchvision import transforms

from torchvision.transforms import functional as TF

from lib import batch_augment as ba
from lib.augment import VIEW_RECIPES, MultiView, RadiusBlur, view_transforms
from lib.byol import BYOLTarget, byol_loss, tau_at
from lib.c2bin import ClusterContrast, column_contrast, entropy_term
from lib.data import cifar100_superclasses, dataset_info, load_dataset
from lib.lars import LARS, param_groups
from lib.models import CLDNet
import eval_clusters
from tests.common import digits_subset, evaluate, states_equal, torchrun, train
from tests.fixtures import cifar100_coarse, write_cifar100
from train_cld import make_cross_level, parse_args, train_step


# ---------------------------------------------------------------- BYOL

def test_byol_loss_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    # cosines 0.6 and 1: (2 - 1.2 + 2 - 2) / 2
    assert byol_loss(p, z).item() == pytest.approx(0.4)


class Tiny(nn.Module):
    """What the partner reads of a model: backbone, projector, instance_head.projection."""

    def __init__(self):
        super().__init__()
        self.backbone, self.projector = nn.Linear(2, 2), nn.Identity()
        self.instance_head = nn.Module()
        self.instance_head.projection = nn.Linear(2, 2)


def test_tau_schedule_by_hand():
    assert tau_at(0, 100, 0.99) == pytest.approx(0.99)
    assert tau_at(50, 100, 0.99) == pytest.approx(0.995)          # 1 - 0.01 (cos(pi/2) + 1) / 2
    assert tau_at(100, 100, 0.99) == pytest.approx(1.0)
    assert tau_at(150, 100, 0.99) == pytest.approx(1.0)           # past the end it stays 1
    target = BYOLTarget(Tiny(), 0.99, 100)
    for k, expected in ((0, 0.99), (25, 1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2), (100, 1.0)):
        target.updates.fill_(k)
        assert target.tau().item() == pytest.approx(expected, abs=1e-12)


def test_target_is_an_ema_of_backbone_and_projection():
    online = Tiny()
    target = BYOLTarget(online, base_tau=0.9, total_steps=2)
    start = copy.deepcopy(target.state_dict())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(online, None)                                   # tau 0.9 at update 0
    expected = 0.9 * start["backbone.weight"] + 0.1 * online.backbone.weight
    assert torch.allclose(target.backbone.weight, expected)
    after_one = target.projection.bias.clone()
    target.update(online, None)                                   # tau 1 - 0.1 (cos(pi/2) + 1)/2 = 0.95
    assert torch.allclose(target.projection.bias, 0.95 * after_one + 0.05 * online.instance_head.projection.bias)
    assert target.updates.item() == 2 and not any(p.requires_grad for p in target.parameters())
    kept = copy.deepcopy(target.state_dict())
    target.update(online, None, applied=torch.tensor(False))      # a skipped step changes nothing
    assert states_equal(target.state_dict(), kept)
    target.update(online, None, applied=torch.tensor(True))
    assert target.updates.item() == 3


def test_step_gives_the_target_no_gradient_and_moves_it_after_the_optimizer():
    torch.manual_seed(0)
    args = parse_args(["--byol", "--out", "unused", "--clusters", "2", "--lam", "1", "--byol-hidden", "16",
                       "--byol-dim", "8", "--dim", "8"])
    model = CLDNet("resnet20", 1, dim=8, instance_head="byol", group_head="normlinear", byol_hidden=16, byol_dim=8)
    target = BYOLTarget(model, base_tau=0.9, total_steps=10)
    views = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    # the loss the step must compute: each view's prediction against the other view's target projection
    (q1, _), (q2, _) = copy.deepcopy(model)(*views)
    before = copy.deepcopy(target)
    expected = byol_loss(q1, before.project(views[1])) + byol_loss(q2, before.project(views[0]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics, applied, _ = train_step(model, model, target, make_cross_level(args), views, torch.arange(4), 0,
                                     optimizer, torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext())
    assert applied and torch.allclose(metrics[1], expected, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    # xi <- 0.9 xi + 0.1 theta, theta after the optimizer step
    assert torch.allclose(target.backbone.stem[0].weight,
                          0.9 * before.backbone.stem[0].weight + 0.1 * model.backbone.stem[0].weight)
    assert torch.allclose(target.projection[0].weight,
                          0.9 * before.projection[0].weight + 0.1 * model.instance_head.projection[0].weight)


# ---------------------------------------------------------------- LARS

def lars_problem():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))       # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))              # 1-d: plain SGD, no weight decay
    w.grad, b.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])   # |g| = 1
    return w, b


def test_lars_step_by_hand():
    w, b = lars_problem()
    model = nn.Module()
    model.w, model.b = w, b
    groups = param_groups(model, 0.1)
    assert groups[0]["params"] == [w] and groups[1]["params"] == [b] and groups[1]["weight_decay"] == 0
    optimizer = LARS(groups, lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.01)
    optimizer.step()
    # ratio = 0.01 * 5 / (1 + 0.1 * 5) = 1/30; update = (g + 0.1 w) / 30 = [0.3, 1.4] / 30; w -= 0.5 update
    assert torch.allclose(w, torch.tensor([[3 - 0.5 * 0.3 / 30, 4 - 0.5 * 1.4 / 30]]))
    assert torch.allclose(b, torch.tensor([0.0]))      # 1 - 0.5 * 2
    # second step, same gradients: momentum 0.9 on the first update
    w1 = [3 - 0.5 * 0.3 / 30, 4 - 0.5 * 1.4 / 30]
    ratio = 0.01 * math.hypot(*w1) / (1 + 0.1 * math.hypot(*w1))
    buf = [0.9 * 0.3 / 30 + ratio * (0.1 * w1[0]), 0.9 * 1.4 / 30 + ratio * (1 + 0.1 * w1[1])]
    optimizer.step()
    assert torch.allclose(w, torch.tensor([[w1[0] - 0.5 * buf[0], w1[1] - 0.5 * buf[1]]]))
    assert torch.allclose(b, torch.tensor([0.0 - 0.5 * (0.9 * 2 + 2)]))


def test_lars_clip_caps_the_step_at_the_plain_one():
    w, _ = lars_problem()
    optimizer = LARS([w], lr=0.01, momentum=0.9, weight_decay=0.1, eta=0.01, clip=True)
    optimizer.step()
    # ratio / lr = (1/30) / 0.01 > 1: clipped to 1, the plain SGD step 0.01 (g + 0.1 w)
    assert torch.allclose(w, torch.tensor([[3 - 0.01 * 0.3, 4 - 0.01 * 1.4]]))


# ---------------------------------------------------------------- C2BIN

P1 = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])           # 4 images, 3 clusters


def cross_entropy_rows(similarities, positives, temperature):
    """The mean over rows of -log softmax at the positive, self excluded (None), written out."""
    total = 0.0
    for row, positive in zip(similarities, positives):
        logits = [s / temperature for s in row if s is not None]
        pos = row[positive] / temperature
        total += math.log(sum(math.exp(x) for x in logits)) - pos
    return total / len(similarities)


def test_column_contrast_by_hand():
    # identical views: every column matches its twin with cosine 1 and is orthogonal to the other four
    same = [[None, 0, 0, 1, 0, 0], [0, None, 0, 0, 1, 0], [0, 0, None, 0, 0, 1],
            [1, 0, 0, None, 0, 0], [0, 1, 0, 0, None, 0], [0, 0, 1, 0, 0, None]]
    assert column_contrast(P1, P1, 1.0).item() == pytest.approx(math.log(math.e + 4) - 1)
    assert column_contrast(P1, P1, 1.0).item() == pytest.approx(cross_entropy_rows(same, [3, 4, 5, 0, 1, 2], 1.0))
    # view 2 splits image 0 between clusters 0 and 1: columns b0 = [.5, 1, 0, 0], b1 = [.5, 0, 1, 0], b2 = e3
    p2 = torch.tensor([[0.5, 0.5, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    a0b0, a0b1, a1b1, b0b1 = 1.5 / math.sqrt(2 * 1.25), 0.5 / math.sqrt(2 * 1.25), 1 / math.sqrt(1.25), 0.25 / 1.25
    sims = [[None, 0, 0, a0b0, a0b1, 0],          # a0 = [1, 1, 0, 0] / sqrt 2
            [0, None, 0, 0, a1b1, 0],             # a1 = e2
            [0, 0, None, 0, 0, 1],                # a2 = e3
            [a0b0, 0, 0, None, b0b1, 0],
            [a0b1, a1b1, 0, b0b1, None, 0],
            [0, 0, 1, 0, 0, None]]
    assert column_contrast(P1, p2, 0.5).item() == pytest.approx(cross_entropy_rows(sims, [3, 4, 5, 0, 1, 2], 0.5),
                                                                abs=1e-6)


def test_entropy_term_by_hand():
    # mean assignment [0.5, 0.25, 0.25]: H = 1.5 ln 2
    assert entropy_term(P1).item() == pytest.approx(math.log(3) - 1.5 * math.log(2))
    assert entropy_term(torch.full((4, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-7)   # even spread
    assert entropy_term(torch.tensor([[1.0, 0, 0]] * 4)).item() == pytest.approx(math.log(3))  # collapse


def test_c2bin_term_averages_the_scales():
    torch.manual_seed(0)
    l1, l2 = torch.randn(6, 5), torch.randn(6, 5)          # scales (2, 3) side by side
    term = ClusterContrast((2, 3), temperature=0.5)
    loss, agreement, scale, terms = term(l1, l2, 0)

    def one(a, b):
        p, q = a.softmax(1), b.softmax(1)
        return torch.stack([column_contrast(p, q, 0.5), entropy_term(p) + entropy_term(q)])
    parts = (one(l1[:, :2], l2[:, :2]) + one(l1[:, 2:], l2[:, 2:])) / 2     # [contrast, entropy], scales averaged
    assert torch.allclose(terms, parts) and torch.allclose(loss, parts.sum())
    assert agreement == (l1[:, :2].argmax(1) == l2[:, :2].argmax(1)).float().mean() and scale == 1
    assert ClusterContrast((2, 3), lam=0)(l1, l2, 0)[0] == 0


# ---------------------------------------------------------------- data

def test_byol_views_are_asymmetric():
    first, second = view_transforms(dataset_info("cifar10"), "byol")

    def ops(t, kind):
        return [op for op in t.transforms if isinstance(op, kind)]
    blur = [op for op in ops(first, transforms.RandomApply) if isinstance(op.transforms[0], RadiusBlur)]
    assert blur[0].p == 1.0 and not ops(first, transforms.RandomSolarize)
    blur = [op for op in ops(second, transforms.RandomApply) if isinstance(op.transforms[0], RadiusBlur)]
    assert blur[0].p == 0.1
    solarize = ops(second, transforms.RandomSolarize)[0]
    assert solarize.p == 0.2 and solarize.threshold == 128
    # MultiView hands view i to transform i
    views = MultiView([lambda img: "first", lambda img: "second"], 3)(None)
    assert views == ["first", "second", "first"]


def test_device_solarize_is_torchvisions_and_only_in_the_second_byol_view():
    x = torch.rand(6, 3, 5, 5)
    on = torch.tensor([True, False, True, True, False, True])
    out = ba.solarize(x, on)
    for k in range(6):
        torch.testing.assert_close(out[k], TF.solarize(x[k], 128 / 255) if on[k] else x[k], atol=0, rtol=0)
    first, second = (ba.BatchAugment(r, False, (0.5,) * 3, (0.5,) * 3, 8) for r in VIEW_RECIPES["byol"])
    g = torch.Generator().manual_seed(0)
    assert "solarize_on" not in first.draw(10, 8, 8, g, "cpu")
    assert abs(second.draw(4000, 8, 8, g, "cpu")["solarize_on"].float().mean().item() - 0.2) < 0.02
    assert first.draw(4000, 8, 8, g, "cpu")["blur_on"].all()


def test_cifar100_superclasses_come_from_the_pickle(tmp_path):
    root = write_cifar100(tmp_path, n_train=100, n_test=40)
    fine = load_dataset("cifar100", root, "test").targets
    assert np.array_equal(cifar100_superclasses(root, "test"), cifar100_coarse(fine))


# ---------------------------------------------------------------- end to end

TINY = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "128", "--workers", "0", "--byol-hidden", "32",
        "--byol-dim", "16", "--dim", "16", "--lr", "0.05", "--warmup-epochs", "0", "--knn-every", "0"]
MODES = {"byol-cld": ["--byol", "--clusters", "10"], "c2bin": ["--c2bin", "--c2bin-scales", "4", "8"]}


@pytest.mark.parametrize("mode", list(MODES))
def test_resume_under_the_gpu_defaults_is_exact(mode, tmp_path, capsys):
    """bf16 autocast, the host reading the device every 20 steps, the kNN monitor: what a GPU runs by default.
    On 260 digits (two steps an epoch): bf16 is emulated, and slow, on CPUs without AMX."""
    subset = digits_subset(tmp_path / "digits_260.json", 26)
    argv = [*TINY, *MODES[mode], "--epochs", "2", "--subset", subset, "--precision", "bf16", "--sync-every", "20",
            "--knn-every", "1"]
    train(*argv, "--save-every", 1, "--out", tmp_path / "a")
    train(*argv, "--resume", tmp_path / "a" / "epoch_1.pth", "--out", tmp_path / "b")
    a, b = (torch.load(tmp_path / x / "last.pth", weights_only=True) for x in "ab")
    for key in ("model", "memory", "optimizer", "epoch", "step"):
        assert states_equal(a[key], b[key]), key
    assert a["memory"]["updates"].item() == 2 * (260 // 128)          # one target update per step
    assert a["optimizer"]["param_groups"][0]["eta"] == 0.02           # the 32 px row's LARS
    last = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_steps"] == 0 and 0 < last["knn_top1"] <= 100 and math.isfinite(last["loss"])
    if mode == "c2bin":
        assert last["loss_cld"] == pytest.approx(last["loss_contrast"] + last["loss_entropy"], rel=1e-5)
        result = evaluate(eval_clusters, "--ckpt", tmp_path / "a" / "last.pth", "--workers", 0, "--precision", "bf16",
                          capsys=capsys)
        assert result["head"]["k"] == 4 and 0 <= result["head"]["nmi"] <= 100 and result["kmeans"]["k"] == 10


def test_two_processes_keep_identical_online_and_target_networks(tmp_path):
    """C2BIN: BYOL's target network and the cluster heads."""
    out = tmp_path / "run"
    r = torchrun("tests/dist_worker.py", *TINY, *MODES["c2bin"], "--epochs", "1", "--batch-size", "64", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert states_equal(rank0["model"], rank1["model"])
    # the target's weights; its BatchNorm running statistics are each process's own and never used (the
    # target always normalises with batch statistics)
    weights = [{k: v for k, v in r["memory"].items() if "running_" not in k and "num_batches" not in k}
               for r in (rank0, rank1)]
    assert states_equal(*weights) and len(weights[0]) > 10
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["loss_cld"] > 0 and 0 <= record["knn_top1"] <= 100
