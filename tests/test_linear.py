"""eval_linear.py and lib/linear.py on the bundled digits: linear probe, fine-tuning, export, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import eval_linear
from lib.checkpoint import CheckpointError
from lib.data import dataset_info, load_dataset
from lib.subsets import write_subset
from lib.linear import BackboneChanged, ExportError, balanced_subset, check_unchanged, snapshot
from lib.longtail import longtail_indices
from lib.models import CLDNet, build_model
from tests.common import as_main, train

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_linear")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# On a CPU shared with other jobs, two threads per process make tiny tensor ops crawl: one is many times faster.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=ONE_THREAD)


def last_stderr_line(result):
    """A failure the user can act on: non-zero exit, no traceback, the message on the last stderr line."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def trained(tmp_path_factory):
    """Six epochs of NPID+CLD with a ResNet-20 on digits."""
    out = tmp_path_factory.mktemp("run")
    train("--dataset", "digits", "--arch", "resnet20", "--batch-size", 128, "--clusters", 10, "--workers", 0,
          "--epochs", 6, "--lr", 0.01, "--warmup-epochs", 0, "--knn-every", 0, "--out", out)
    return out / "last.pth"


# The config entries eval_linear.py reads, for networks on 32 px RGB images.
SYNTHETIC = {"dataset": "synthetic", "data": None, "image_size": 32, "dim": 128, "instance_head": "linear",
             "group_head": "linear"}


def fake_checkpoint(path, arch, config=SYNTHETIC):
    """A checkpoint as train_cld.py writes it, holding freshly initialised weights (seed 0) of `arch`."""
    config = {**config, "arch": arch}
    torch.manual_seed(0)
    model = build_model(config, dataset_info(config["dataset"]).channels)
    torch.save({"config": config, "model": model.state_dict(), "epoch": 0}, path)
    return model


def probe(capsys, *argv):
    """eval_linear.py in this process -> the JSON line it prints."""
    eval_linear.main(eval_linear.parse_args([str(a) for a in argv]))
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ---------------------------------------------------------------- linear probe

def test_probe_of_trained_network_beats_untrained_one(trained, tmp_path, capsys):
    fake_checkpoint(tmp_path / "untrained.pth", "resnet20", torch.load(trained, weights_only=False)["config"])
    before = probe(capsys, "--ckpt", tmp_path / "untrained.pth", "--cached-features", "--workers", 0)
    after = probe(capsys, "--ckpt", trained, "--cached-features", "--workers", 0)
    assert after["top1"] > before["top1"] + 4, (after, before)
    # the MoCo protocol is the default
    assert (after["mode"], after["epochs"], after["lr"], after["batch"]) == ("linear-cached", 100, 30.0, 256)
    assert after["wd"] == 0.0 and after["gamma"] == 0.1
    assert after["milestones"] == [60, 80] and after["train_images"] == 1437 and after["test_images"] == 360


def test_cached_and_standard_paths_agree(trained, capsys):
    """Fed the same test-transform images in the same order, the two paths train the same classifier;
    the features differ only by float rounding, so top-1 must agree within 1 point (3 of 360 images)."""
    short = ["--ckpt", trained, "--workers", 0, "--epochs", 3, "--milestones", 2]
    cached = probe(capsys, *short, "--cached-features")
    standard = probe(capsys, *short, "--no-aug")
    assert standard["mode"] == "linear" and standard["augmentation"].startswith("none")
    assert abs(cached["top1"] - standard["top1"]) <= 1.0, (cached, standard)
    augmented = probe(capsys, "--ckpt", trained, "--workers", 0, "--epochs", 1)  # and passes the frozen-backbone check
    assert augmented["augmentation"] == "padded random crop + flip" and augmented["top1"] > 20


def test_run_on_a_long_tailed_subset_reports_many_medium_few(trained, tmp_path, capsys):
    labels = load_dataset("digits", None, "train").targets
    keep = longtail_indices(labels, 10, ratio=10)                    # 143, 110, ..., 18, 14 images per class
    write_subset(tmp_path / "lt.json", keep, labels[keep], len(labels), dataset="digits")
    ckpt = torch.load(trained, weights_only=False)
    ckpt["config"]["subset"] = str(tmp_path / "lt.json")
    torch.save(ckpt, tmp_path / "lt.pth")
    result = probe(capsys, "--ckpt", tmp_path / "lt.pth", "--cached-features", "--workers", 0)
    assert result["train_images"] == len(keep) and result["subset"] == str(tmp_path / "lt.json")
    assert all(0 <= result[group] <= 100 for group in ("many", "medium", "few"))


def test_tampered_backbone_weight_is_caught():
    backbone = CLDNet("resnet20", 1).backbone.eval()
    frozen = snapshot(backbone)
    check_unchanged(backbone, frozen)
    with torch.no_grad():
        backbone.blocks[0].conv1.weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(BackboneChanged, match=r"backbone weight blocks\.0\.conv1\.weight changed during linear eval"):
        check_unchanged(backbone, frozen)
    # BatchNorm buffers count too: one forward pass in train mode moves the running statistics
    backbone = CLDNet("resnet20", 1).backbone
    frozen = snapshot(backbone)
    backbone.train()(torch.randn(4, 1, 8, 8))
    with pytest.raises(BackboneChanged, match="running_mean"):
        check_unchanged(backbone, frozen)


def test_linear_evaluation_fails_when_the_backbone_moves(trained, monkeypatch):
    real_train = eval_linear.train

    def train_then_tamper(args, net, backbone, *rest):
        real_train(args, net, backbone, *rest)
        backbone.stem[1].running_var.mul_(1.001)

    monkeypatch.setattr(eval_linear, "train", train_then_tamper)
    args = eval_linear.parse_args(["--ckpt", str(trained), "--cached-features", "--workers", "0", "--epochs", "1"])
    with pytest.raises(BackboneChanged, match="backbone weight stem.1.running_var changed"):
        eval_linear.main(args)


# ---------------------------------------------------------------- semi-supervised fine-tuning

def test_label_subset_is_class_balanced_and_deterministic():
    labels = load_dataset("digits", None, "train").targets
    per_class = np.bincount(labels)                                  # 143..146 training images per class
    for fraction in (0.01, 0.1, 1.0):
        keep = balanced_subset(labels, fraction, seed=0)
        assert np.array_equal(np.bincount(labels[keep], minlength=10), np.maximum(1, (fraction * per_class).astype(int)))
        assert len(np.unique(keep)) == len(keep)
        assert np.array_equal(keep, balanced_subset(labels, fraction, seed=0))
    assert not np.array_equal(balanced_subset(labels, 0.1, seed=0), balanced_subset(labels, 0.1, seed=1))


def test_finetune_on_ten_percent_of_the_labels(trained, capsys):
    result = probe(capsys, "--ckpt", trained, "--workers", 0, "--label-fraction", 0.1, "--epochs", 3)
    labels = load_dataset("digits", None, "train").targets
    assert result["mode"] == "finetune" and result["label_fraction"] == 0.1
    assert result["train_images"] == len(balanced_subset(labels, 0.1, 0))
    assert result["lr"] == 0.01 and result["head_lr"] == pytest.approx(1.0) and result["wd"] == 1e-4
    assert result["milestones"] == [12, 16] and result["gamma"] == 0.2 and 0 <= result["top1"] <= 100


@pytest.mark.parametrize("fraction", ["0", "-0.1", "1.5"])
def test_label_fraction_outside_zero_one(fraction, capsys):
    with pytest.raises(SystemExit) as stop:
        eval_linear.parse_args(["--ckpt", "x.pth", "--label-fraction", fraction])
    assert stop.value.code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(f"error: --label-fraction must be in (0, 1], got {float(fraction)}")


# ---------------------------------------------------------------- export

def test_export_loads_into_torchvision_resnet50(tmp_path, capsys):
    model = fake_checkpoint(tmp_path / "r50.pth", "resnet50")
    result = probe(capsys, "--ckpt", tmp_path / "r50.pth", "--export", tmp_path / "backbone.pth", "--export-only")
    assert result["torchvision_model"] == "resnet50" and "top1" not in result
    state = torch.load(tmp_path / "backbone.pth")                     # plain tensors: loads with weights_only
    net = torchvision.models.resnet50()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    assert torch.equal(net.layer4[2].bn3.running_var, model.backbone.layer4[2].bn3.running_var)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_export_of_the_cifar_stem_says_how_to_load_it(tmp_path, capsys):
    fake_checkpoint(tmp_path / "r18c.pth", "resnet18_cifar")
    result = probe(capsys, "--ckpt", tmp_path / "r18c.pth", "--export", tmp_path / "backbone.pth", "--export-only")
    assert "nn.Conv2d(3, 64, 3, 1, 1, bias=False)" in result["export_loading"]
    net = torchvision.models.resnet18()
    net.conv1, net.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    missing, unexpected = net.load_state_dict(torch.load(tmp_path / "backbone.pth"), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_small_resnet_export_is_refused(trained, tmp_path):
    args = eval_linear.parse_args(["--ckpt", str(trained), "--export", str(tmp_path / "b.pth"), "--export-only"])
    with pytest.raises(ExportError, match="torchvision ResNet weights and resnet20 is the small CIFAR ResNet"):
        eval_linear.main(args)
    assert not (tmp_path / "b.pth").exists()


# ---------------------------------------------------------------- bad input

def test_checkpoint_from_another_architecture(trained, tmp_path):
    ckpt = torch.load(trained, weights_only=False)
    ckpt["network"]["arch"] = ckpt["config"]["arch"] = "resnet32"  # claims another network than its weights are
    torch.save(ckpt, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"checkpoint .*other\.pth does not fit this model"):
        eval_linear.main(eval_linear.parse_args(["--ckpt", str(tmp_path / "other.pth"), "--cached-features"]))


def test_missing_dataset_is_one_clear_line(trained, tmp_path, capsys):
    code, _, err = as_main(capsys, "eval_linear.py", "--ckpt", trained, "--dataset", "fashion-mnist",
                           "--data", tmp_path / "nowhere")
    assert code != 0 and len(err.splitlines()) == 1, err
    assert err.startswith("error: fashion-mnist") and "dataset-fashion-mnist" in err
