"""InfoMin+CLD (--infomin), each part against a hand computation: the jigsaw tiles' geometry, the jigsaw
head, the loss with its jigsaw term, the queue after one enqueue or the authors' two, RandAugment's op
table; then the preset under two processes and resume."""
import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from lib.data import dataset_info
from lib.infomin import InfoMin
from lib.infomin_aug import JigsawCrop, JigsawTiles, rand_augment
from lib.models import CLDNet, JigsawHead, NetworkSpec
from tests.common import torchrun


# ---------------------------------------------------------------- jigsaw tiles

def position_image(side):
    """An RGB image whose pixel (row r, column c) holds (r, c, 0)."""
    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    return Image.fromarray(np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8))


def test_tiles_as_large_as_their_cells_are_the_cells_row_by_row():
    tiles = JigsawCrop(3, 12, 4)(position_image(12))
    for i, tile in enumerate(tiles):
        a = np.asarray(tile)
        assert a.shape == (4, 4, 3)
        assert a[0, 0, 0] == 4 * (i // 3) and a[0, 0, 1] == 4 * (i % 3)       # top-left: row, column of cell i
        assert a[-1, -1, 0] == 4 * (i // 3) + 3 and a[-1, -1, 1] == 4 * (i % 3) + 3


def test_tile_offsets_are_drawn_rows_first_within_each_cell():
    np.random.seed(3)
    tiles = JigsawCrop(3, 255, 64)(position_image(255))
    np.random.seed(3)
    down, across = np.random.randint(0, 85 - 64 + 1, 9), np.random.randint(0, 85 - 64 + 1, 9)
    for i, tile in enumerate(tiles):
        a = np.asarray(tile)
        top, left = 85 * (i // 3) + down[i], 85 * (i % 3) + across[i]
        assert a.shape == (64, 64, 3) and a[0, 0, 0] == top % 256 and a[0, 0, 1] == left % 256
        assert a[63, 0, 0] == (top + 63) % 256 and a[0, 63, 1] == (left + 63) % 256


@pytest.mark.parametrize("size,side,tile", [(224, 255, 64), (32, 36, 9), (8, 9, 2)])
def test_jigsaw_input_scales_with_the_training_size(size, side, tile):
    info = dataset_info("imagefolder")
    transform = JigsawTiles(info, size)
    tiles = transform(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert tiles.shape == (9, 3, tile, tile)
    assert transform.crop.transforms[0].size == (side, side)
    expected = (torch.tensor([10, 200, 30]) / 255 - torch.tensor(info.mean)) / torch.tensor(info.std)
    assert torch.allclose(tiles[:, :, 0, 0], expected.float().expand(9, 3), atol=1e-5)   # normalised, no colour op


# ---------------------------------------------------------------- jigsaw head and loss

def test_jigsaw_head_shuffles_each_images_tiles_then_concatenates():
    torch.manual_seed(0)
    head = JigsawHead(6, 4, "linear", hidden=False, tiles=9)
    h = torch.randn(2 * 9, 6)
    torch.manual_seed(7)
    out = head(h)
    torch.manual_seed(7)
    orders = [torch.randperm(9), torch.randperm(9)]
    expected = []
    for b, order in enumerate(orders):
        tiles = [h[b * 9 + int(t)] @ head.fc1.weight.t() + head.fc1.bias for t in order]
        z = torch.cat(tiles) @ head.fc2.weight.t() + head.fc2.bias
        expected.append(z / z.norm())
    assert torch.allclose(out, torch.stack(expected), atol=1e-6)


def test_network_with_a_jigsaw_head_takes_tiles_and_old_configs_build_without_one():
    net = CLDNet("resnet20", 3, 16, "normlinear", "normlinear", mlp=True, jigsaw_head="normlinear")
    (f1, g1), (fj, none) = net(torch.randn(4, 3, 8, 8), torch.randn(4, 9, 3, 2, 2))
    assert fj.shape == (4, 16) and none is None and torch.allclose(fj.norm(dim=1), torch.ones(4))
    assert isinstance(net.jigsaw_head.fc1[0], nn.Linear) and net.jigsaw_head.fc2.weight.shape == (16, 9 * 16)
    old = dict(arch="resnet20", image_size=8, dim=16, instance_head="linear", group_head="linear", mlp=False)
    assert NetworkSpec.from_config(old, 3).jigsaw_head == "none"
    assert not hasattr(NetworkSpec.from_config(old, 3).build(), "jigsaw_head")


def hand_infonce(q, k, queue, t):
    """mean_i of -log(exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.queue_j / t))), in float64."""
    q, k, queue = q.double(), k.double(), queue.double()
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ row) / t) for row in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def tiny_partner(enqueue_twice, queue=6, beta=0.3):
    torch.manual_seed(0)
    model = CLDNet("resnet20", 1, 4, jigsaw_head="linear")
    partner = InfoMin(model, queue, dim=4, temperature=0.5, beta=beta, enqueue_twice=enqueue_twice)
    partner.ptr.fill_(4)                                                  # two of the three keys wrap around
    return model, partner


@pytest.mark.parametrize("twice", [False, True])
def test_loss_weights_the_jigsaw_term_by_beta_and_second_query_sees_the_authors_queue(twice):
    model, partner = tiny_partner(twice)
    torch.manual_seed(1)
    q1, q2, jig, keys = (F.normalize(torch.randn(3, 4), dim=1) for _ in range(4))
    partner.keys = lambda images: keys
    loss, pending, terms = partner.loss([q1, q2, jig], [None, None, torch.zeros(3, 1, 8, 8)], None)
    queue = partner.queue.clone()
    second = queue.clone()
    if twice:  # the keys written at rows 4, 5, 0: the authors' queue when their second contrast() runs
        second[[4, 5, 0]] = keys
    t, b = 0.5, 0.3
    query = (hand_infonce(q1, keys, queue, t) + hand_infonce(q2, keys, second, t)) / 2
    jigsaw = (hand_infonce(jig, keys, queue, t) + hand_infonce(jig, keys, second, t)) / 2
    assert loss.item() == pytest.approx((1 - b) * query + b * jigsaw, rel=1e-5)
    assert terms.tolist() == pytest.approx([query, jigsaw], rel=1e-5)     # logged as loss_query, loss_jigsaw
    assert torch.equal(partner.queue, queue)                             # loss() changes nothing


@pytest.mark.parametrize("twice", [False, True])
def test_keys_are_enqueued_once_or_the_authors_twice(twice):
    model, partner = tiny_partner(twice)
    before = partner.queue.clone()
    keys = F.normalize(torch.randn(3, 4), dim=1)
    partner.update(model, keys)
    expected = before.clone()
    if twice:   # rows 4, 5, 0 then 1, 2, 3: the queue holds only this step's keys, each twice
        expected[[4, 5, 0, 1, 2, 3]] = torch.cat([keys, keys])
    else:
        expected[[4, 5, 0]] = keys
    assert torch.equal(partner.queue, expected)
    assert partner.ptr.item() == (4 + (6 if twice else 3)) % 6


# ---------------------------------------------------------------- RandAugment: the authors' policy

# datasets/RandAugment.py of the authors (_RAND_TRANSFORMS, LEVEL_TO_ARG), written out: op name -> the
# argument at magnitude m before the random sign (None: the op takes no argument). Their PosterizeTpu
# is timm's Posterize (keep int(4 m / 10) bits).
HAND_TABLE = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda m: m / 10 * 30,
    "Posterize": lambda m: int(m / 10 * 4),
    "Solarize": lambda m: int(m / 10 * 256),
    "SolarizeAdd": lambda m: int(m / 10 * 110),
    "Color": lambda m: m / 10 * 1.8 + 0.1, "Contrast": lambda m: m / 10 * 1.8 + 0.1,
    "Brightness": lambda m: m / 10 * 1.8 + 0.1, "Sharpness": lambda m: m / 10 * 1.8 + 0.1,
    "ShearX": lambda m: m / 10 * 0.3, "ShearY": lambda m: m / 10 * 0.3,
    "TranslateXRel": lambda m: m / 10 * 0.45, "TranslateYRel": lambda m: m / 10 * 0.45,
}
SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


def test_randaugment_draws_the_authors_ops_with_their_magnitudes():
    policy = rand_augment("rand-n2-m10-mstd0.5", 224, dataset_info("imagefolder").mean)
    assert policy.num_layers == 2 and policy.choice_weights is None      # two ops, uniform, with replacement
    assert [op.name for op in policy.ops] == list(HAND_TABLE)
    for op in policy.ops:
        assert (op.prob, op.magnitude, op.magnitude_std) == (0.5, 10, 0.5)
        assert op.kwargs["fillcolor"] == (124, 116, 104)               # ImageNet's mean in 8 bits, as theirs
        for m in (0.0, 2.5, 7.0, 10.0):
            if HAND_TABLE[op.name] is None:
                assert op.level_fn is None
                continue
            random.seed(0)
            sign = -1 if random.random() > 0.5 else 1                   # the draw that negates half the time
            random.seed(0)
            got = op.level_fn(m, op.hparams)[0]
            want = HAND_TABLE[op.name](m) * (sign if op.name in SIGNED else 1)
            assert got == pytest.approx(want), (op.name, m)


@pytest.mark.parametrize("noise,used", [(12.0, 10.0), (-3.0, 0.0), (9.25, 9.25)])
def test_randaugment_magnitude_noise_is_clipped_to_zero_ten(monkeypatch, noise, used):
    policy = rand_augment("rand-n2-m10-mstd0.5", 224, (0.5, 0.5, 0.5))
    rotate = next(op for op in policy.ops if op.name == "Rotate")
    seen = []
    monkeypatch.setattr(random, "random", lambda: 0.0)                 # apply the op, keep the sign
    monkeypatch.setattr(random, "gauss", lambda mu, sigma: seen.append((mu, sigma)) or noise)
    monkeypatch.setattr(rotate, "aug_fn", lambda img, angle, **kwargs: angle)
    assert rotate(Image.new("RGB", (4, 4))) == pytest.approx(used / 10 * 30)
    assert seen == [(10, 0.5)]


def test_randaugment_on_grey_images_fills_with_one_value():
    policy = rand_augment("rand-n2-m10-mstd0.5", 28, (0.2860,))
    assert policy.ops[0].kwargs["fillcolor"] == 73
    img = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    for op in policy.ops:
        op.prob = 1.0
        assert op(img).mode == "L"


def test_only_the_loader_path_builds_the_infomin_recipe():
    from lib.augment import RECIPES
    from lib.batch_augment import covers
    assert not covers(RECIPES["infomin"])
    assert all(covers(RECIPES[name]) for name in ("default", "default-imagenet", "aug-plus"))
    import train_cld
    assert train_cld.parse_args(["--infomin", "--out", "unused"]).data_path == "loader"


# ---------------------------------------------------------------- the preset, two processes, resume

def test_two_process_infomin_keeps_identical_state(tmp_path):
    from lib.data import load_dataset
    from lib.subsets import write_subset
    targets = np.asarray(load_dataset("digits", None, "train").targets)
    write_subset(tmp_path / "subset.json", np.arange(512), targets[:512], len(targets), dataset="digits")
    tiny = ["--dataset", "digits", "--infomin", "--arch", "resnet20", "--queue", "384", "--batch-size", "128",
            "--clusters", "10", "--workers", "0", "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0",
            "--epochs", "2", "--subset", str(tmp_path / "subset.json")]
    r = torchrun("tests/dist_worker.py", *tiny, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "a" / "rank0.pt"), torch.load(tmp_path / "a" / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"])                     # the queues
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    assert any(key.startswith("jigsaw_head.") for key in rank0["model"])
    record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["loss"]) and 0 <= record["knn_top1"] <= 100
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    assert a["network"]["jigsaw_head"] == "normlinear" and a["memory"]["ptr"].item() == (2 * 4 * 128) % 384
