"""Long-tailed subsets: the exact CIFAR-LT counts, subset files, make_longtail.py and the shot accuracies."""
import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch

import eval_knn
import make_longtail
from lib.checkpoint import save_atomic
from lib.augment import test_transform as eval_transform  # a test_* name would be collected
from lib.data import DatasetError, dataset_info, default_root, load_dataset
from lib.subsets import read_subset, subset_dataset, write_subset
from lib.longtail import class_counts, longtail_counts, longtail_indices, shot_accuracy
from lib.models import build_model
from tests.fixtures import (write_cifar10, write_cifar100, write_fashion_mnist, write_imagefolder,
                            write_imagenet_lt_list)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# int(n_max * (1/ratio) ** (i/(C-1))) of LDAM-DRW's imbalance_cifar.py, written out once.
CIFAR10_LT = {
    100: [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],             # 12,406
    50: [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100],            # 13,996
    10: [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],         # 20,431
}
CIFAR100_LT = {
    100: [500, 477, 455, 434, 415, 396, 378, 361, 344, 328, 314, 299, 286, 273, 260, 248, 237, 226, 216, 206,
          197, 188, 179, 171, 163, 156, 149, 142, 135, 129, 123, 118, 112, 107, 102, 98, 93, 89, 85, 81,
          77, 74, 70, 67, 64, 61, 58, 56, 53, 51, 48, 46, 44, 42, 40, 38, 36, 35, 33, 32,
          30, 29, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 15, 14, 13, 13, 12,
          12, 11, 11, 10, 10, 9, 9, 8, 8, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5],     # 10,847
    50: [500, 480, 462, 444, 426, 410, 394, 379, 364, 350, 336, 323, 311, 299, 287, 276, 265, 255, 245, 235,
         226, 218, 209, 201, 193, 186, 178, 172, 165, 158, 152, 146, 141, 135, 130, 125, 120, 115, 111, 107,
         102, 98, 95, 91, 87, 84, 81, 78, 75, 72, 69, 66, 64, 61, 59, 56, 54, 52, 50, 48,
         46, 44, 43, 41, 39, 38, 36, 35, 34, 32, 31, 30, 29, 27, 26, 25, 24, 23, 22, 22,
         21, 20, 19, 18, 18, 17, 16, 16, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 10],  # 12,608
    10: [500, 488, 477, 466, 455, 445, 434, 424, 415, 405, 396, 387, 378, 369, 361, 352, 344, 336, 328, 321,
         314, 306, 299, 292, 286, 279, 273, 266, 260, 254, 248, 243, 237, 232, 226, 221, 216, 211, 206, 201,
         197, 192, 188, 183, 179, 175, 171, 167, 163, 159, 156, 152, 149, 145, 142, 139, 135, 132, 129, 126,
         123, 121, 118, 115, 112, 110, 107, 105, 102, 100, 98, 95, 93, 91, 89, 87, 85, 83, 81, 79,
         77, 75, 74, 72, 70, 69, 67, 66, 64, 63, 61, 60, 58, 57, 56, 54, 53, 52, 51, 50],  # 19,573
}
TOTALS = {("cifar10", 100): 12406, ("cifar10", 50): 13996, ("cifar10", 10): 20431,
          ("cifar100", 100): 10847, ("cifar100", 50): 12608, ("cifar100", 10): 19573}
FASHION_LT_100 = [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]  # 14,886


def shuffled_balanced_labels(n, num_classes):
    # A stand-in for the real CIFAR train labels: balanced, in a scrambled order.
    return np.random.RandomState(123).permutation(np.arange(n) % num_classes)


def ldam_draw(labels, counts):
    """The selection as LDAM-DRW writes it: the global generator, seeded once."""
    np.random.seed(0)
    parts = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        parts.append(idx[:n])
    return np.concatenate(parts)


@pytest.mark.parametrize("ratio", [100, 50, 10])
@pytest.mark.parametrize("name, table, num_classes", [("cifar10", CIFAR10_LT, 10), ("cifar100", CIFAR100_LT, 100)])
def test_cifar_lt_counts(name, table, num_classes, ratio):
    assert longtail_counts(50000 // num_classes, num_classes, ratio).tolist() == table[ratio]
    assert sum(table[ratio]) == TOTALS[name, ratio]
    labels = shuffled_balanced_labels(50000, num_classes)
    kept = longtail_indices(labels, num_classes, ratio)
    assert len(kept) == TOTALS[name, ratio] and len(np.unique(kept)) == len(kept)
    assert class_counts(labels[kept], num_classes).tolist() == table[ratio]
    if ratio == 100:
        assert np.array_equal(kept, ldam_draw(labels, table[ratio]))


def test_longtail_edge_cases():
    assert longtail_counts(7, 1, 100).tolist() == [7]
    assert longtail_counts(30, 3, 1).tolist() == [30, 30, 30]
    with pytest.raises(ValueError, match="at least 1"):
        longtail_counts(10, 3, 0.5)
    # A class smaller than its share keeps all it has; another seed draws other images.
    labels = np.array([0] * 10 + [1] * 2 + [2] * 10)
    kept = longtail_indices(labels, 3, ratio=2)
    assert class_counts(labels[kept], 3).tolist() == [10, 2, 5]
    assert not np.array_equal(kept, longtail_indices(labels, 3, ratio=2, seed=1))
    assert class_counts(np.array([0, 2, 2, -1]), 4).tolist() == [1, 0, 2, 0]
    with pytest.raises(ValueError, match="out of range"):
        class_counts(np.array([0, 5]), 3)


def test_shot_accuracy():
    train_counts = np.array([500, 101, 100, 20, 19, 5])  # many, many, medium, medium, few, few
    test_labels = np.repeat(np.arange(6), 2)
    correct = np.array([1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0], dtype=bool)
    shots = shot_accuracy(correct, test_labels, train_counts)
    assert shots == pytest.approx({"many": 75.0, "medium": 50.0, "few": 25.0})
    moved = shot_accuracy(correct, test_labels, train_counts, many=19, few=6)
    assert moved == pytest.approx({"many": 62.5, "medium": 50.0, "few": 0.0})
    # per-class mean (OLTR): class 0 with 3 test images weighs as much as class 1 with 1
    assert shot_accuracy([True, True, True, False], [0, 0, 0, 1], [200, 200])["many"] == pytest.approx(50.0)
    none = shot_accuracy([True], [0], [500, 50])
    assert none["many"] == 100.0 and none["medium"] is None and none["few"] is None
    with pytest.raises(ValueError, match="two vectors"):
        shot_accuracy(np.ones((2, 5), dtype=bool), [0, 1], [500, 50])


# ----------------------------------------------------------------------------- subset files

def test_subset_file_round_trip(tmp_path):
    root = write_cifar10(tmp_path / "c10", n_train_per_batch=6, n_test=4)
    train = load_dataset("cifar10", root, "train")
    indices = np.array([29, 3, 7])
    path = str(tmp_path / "sub" / "s.json")
    write_subset(path, indices, train.targets[indices], len(train), dataset="cifar10", ratio=2)
    assert read_subset(path).tolist() == [29, 3, 7] and read_subset(path).dtype == np.int64
    assert not [f for f in os.listdir(tmp_path / "sub") if f != "s.json"]  # no temporary left behind
    sub = subset_dataset(train, path)
    assert len(sub) == 3 and sub.num_classes == 10
    assert sub.targets.dtype == np.int64 and sub.targets.tolist() == train.targets[indices].tolist()
    for position in range(3):
        img, target, index = sub[position]
        assert index == position and target == train.targets[indices[position]]
        assert np.array_equal(np.asarray(img), train.data[indices[position]])
    sub.transform = eval_transform(dataset_info("cifar10"))  # forwarded to the wrapped dataset
    assert train.transform is sub.transform and sub[0][0].shape == (3, 32, 32)
    by_indices = subset_dataset(train, [5, 6])
    assert by_indices[1][2] == 1 and by_indices.targets.tolist() == train.targets[[5, 6]].tolist()


def test_subset_mismatch_and_damage(tmp_path):
    root = write_cifar10(tmp_path / "c10", n_train_per_batch=6, n_test=4)
    train = load_dataset("cifar10", root, "train")
    path = str(tmp_path / "s.json")
    write_subset(path, [0, 1], train.targets[[0, 1]], 99, dataset="cifar100")
    with pytest.raises(DatasetError, match="train split of 99 images .cifar100., this one has 30"):
        subset_dataset(train, path)
    write_subset(path, [0, 1], (train.targets[[0, 1]] + 1) % 10, 30, dataset="cifar100")
    with pytest.raises(DatasetError, match="made from cifar100 and its labels disagree"):
        subset_dataset(train, path)
    with pytest.raises(DatasetError, match="within 0..29"):
        subset_dataset(train, [0, 30])
    damaged = {
        "missing": None,
        "not json": "{indices: [1",
        "foreign": json.dumps({"indices": [1]}),
        "strings": json.dumps({"format": "cld-subset-1", "train_size": 5, "indices": ["1"], "labels": [0]}),
        "uneven": json.dumps({"format": "cld-subset-1", "train_size": 5, "indices": [1, 2], "labels": [0]}),
        "range": json.dumps({"format": "cld-subset-1", "train_size": 5, "indices": [5], "labels": [0]}),
        "twice": json.dumps({"format": "cld-subset-1", "train_size": 5, "indices": [1, 1], "labels": [0, 0]}),
    }
    messages = []
    for name, text in damaged.items():
        bad = tmp_path / f"{name}.json"
        if text is not None:
            bad.write_text(text)
        with pytest.raises(DatasetError) as error:
            read_subset(str(bad))
        messages.append(str(error.value))
    assert "does not exist" in messages[0] and "not readable JSON" in messages[1]
    assert "not written by make_longtail.py" in messages[2] and "not a list of integers" in messages[3]
    assert "as many labels as indices" in messages[4]
    assert "within 0..4" in messages[5] and "distinct" in messages[6]
    assert all("\n" not in m for m in messages)


# ----------------------------------------------------------------------------- make_longtail.py

def make(capsys, *argv):
    make_longtail.main(make_longtail.parse_args([str(a) for a in argv]))
    return capsys.readouterr().out


def test_make_longtail_cifar(tmp_path, capsys):
    root = write_cifar10(tmp_path / "c10", n_train_per_batch=100, n_test=10)  # 50 per class
    out = make(capsys, "--dataset", "cifar10", "--data", root, "--ratio", 10, "--out", tmp_path / "lt.json")
    expected = [int(50 * 0.1 ** (i / 9)) for i in range(10)]  # 50 ... 5
    assert "total 199 of 500 training images in 10 classes (largest 50, smallest 5)" in out
    assert [int(line.split()[-1]) for line in out.splitlines()[:10]] == expected == [50, 38, 29, 23, 17, 13, 10, 8, 6, 5]
    train = load_dataset("cifar10", root, "train")
    sub = subset_dataset(train, str(tmp_path / "lt.json"))
    assert class_counts(sub.targets, 10).tolist() == expected
    record = json.loads((tmp_path / "lt.json").read_text())
    assert record["dataset"] == "cifar10" and record["ratio"] == 10 and record["seed"] == 0
    assert len(load_dataset("cifar10", root, "test")) == 10  # the test set is untouched
    root100 = write_cifar100(tmp_path / "c100", n_train=1000, n_test=100)  # 10 per class
    out = make(capsys, "--dataset", "cifar100", "--data", root100, "--out", tmp_path / "lt100.json")
    assert "largest 10, smallest 1" in out


def test_make_longtail_fashion_and_folder(tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=10)  # 20 per class
    out = make(capsys, "--dataset", "fashion-mnist", "--data", root, "--out", tmp_path / "fm.json")
    assert [int(line.split()[-1]) for line in out.splitlines()[:10]] == [int(20 * 0.01 ** (i / 9)) for i in range(10)]
    folder = write_imagefolder(tmp_path / "folder", classes=["b", "a", "c"], n_per_class=6, size=8)
    out = make(capsys, "--dataset", "imagefolder", "--data", folder, "--ratio", 4, "--out", tmp_path / "f.json")
    assert out.splitlines()[:3] == ["    0  a       6", "    1  b       3", "    2  c       1"]
    assert "total 10 of 18" in out


def test_make_longtail_imagenet_lt(tmp_path, capsys):
    wnids = ["n01440764", "n01443537", "n01484850"]
    root = write_imagefolder(tmp_path / "imagenet", classes=wnids, n_per_class=4, size=8)
    entries = [("train/n01484850/img_3.png", 2), ("train/n01440764/img_0.png", 0), ("train/n01440764/img_2.png", 0),
               ("train/n01443537/img_1.png", 1)]
    lists = tmp_path / "lists"
    lists.mkdir()
    write_imagenet_lt_list(lists / "ImageNet_LT_train.txt", entries)
    out = make(capsys, "--dataset", "imagenet-lt", "--data", root, "--lists", lists, "--out", tmp_path / "lt.json")
    assert "total 4 of 12 training images in 3 classes (largest 2, smallest 1)" in out
    assert "    0  n01440764       2" in out
    train = load_dataset("imagenet", root, "train")
    sub = subset_dataset(train, str(tmp_path / "lt.json"))
    assert sub.targets.tolist() == [2, 0, 0, 1]  # list order
    files = [os.path.relpath(train.samples[i][0], root).replace(os.sep, "/") for i in sub.indices]
    assert files == [rel for rel, _ in entries]
    assert json.loads((tmp_path / "lt.json").read_text())["dataset"] == "imagenet-lt"

    def fails(entries, match):
        write_imagenet_lt_list(lists / "ImageNet_LT_train.txt", entries)
        with pytest.raises(DatasetError, match=match):
            make(capsys, "--dataset", "imagenet-lt", "--data", root, "--lists", lists, "--out", tmp_path / "bad.json")

    fails([("train/n01440764/img_9.png", 0)], "line 1: train/n01440764/img_9.png is not an image of")
    fails([("train/n01440764/img_0.png", 0), ("train/n01443537/img_0.png", 2)], "line 2: label 2, but n01443537 is class 1")
    fails([("train/n01440764/img_0.png", "zero")], "line 1 is 'train/n01440764/img_0.png zero'")
    fails([("train/n01440764/img_0.png", 0)] * 2, "lists an image twice")
    fails([], "lists no images")
    with pytest.raises(DatasetError, match="ImageNet_LT_train.txt not found"):
        make(capsys, "--dataset", "imagenet-lt", "--data", root, "--lists", tmp_path, "--out", tmp_path / "bad.json")
    assert not os.path.exists(tmp_path / "bad.json")


def run_script(monkeypatch, script, argv):
    """Run a script's __main__ block in this process (no second torch import); returns its exit."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    return stop.value.code


def test_make_longtail_errors_are_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "x.json"
    code = run_script(monkeypatch, "make_longtail.py", ["--dataset", "cifar10", "--data", tmp_path / "nowhere", "--out", out])
    assert code.startswith("error: cifar10: data folder") and "\n" not in code
    code = run_script(monkeypatch, "make_longtail.py", ["--dataset", "cifar10", "--data", tmp_path, "--out", out])
    assert code.startswith("error: cifar10: data_batch_1 not found") and "\n" not in code
    code = run_script(monkeypatch, "make_longtail.py", ["--dataset", "imagenet-lt", "--data", tmp_path, "--out", out])
    assert code == 2 and "error: --dataset imagenet-lt needs --lists" in capsys.readouterr().err
    assert run_script(monkeypatch, "make_longtail.py", ["--dataset", "digits", "--out", out]) == 2
    assert not os.path.exists(out)


def test_fashion_mnist_real_longtail(tmp_path, capsys):
    if not os.path.isfile(os.path.join(default_root("fashion-mnist"), "train-labels-idx1-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    assert longtail_counts(6000, 10, 100).tolist() == FASHION_LT_100 and sum(FASHION_LT_100) == 14886
    out = make(capsys, "--dataset", "fashion-mnist", "--out", tmp_path / "fm.json")
    assert [int(line.split()[-1]) for line in out.splitlines()[:10]] == FASHION_LT_100
    assert "total 14886 of 60000 training images" in out


# ----------------------------------------------------------------------------- eval_knn.py on a subset run

def test_eval_knn_reports_shots_for_a_subset_run(tmp_path, capsys):
    root = write_cifar10(tmp_path / "c10", n_train_per_batch=20, n_test=20)
    train = load_dataset("cifar10", root, "train")
    keep = longtail_indices(train.targets, 10, ratio=10)  # 10 ... 1 per class
    subset = str(tmp_path / "lt.json")
    write_subset(subset, keep, train.targets[keep], len(train), dataset="cifar10", ratio=10)
    config = {"dataset": "cifar10", "data": root, "arch": "resnet20", "dim": 16, "instance_head": "linear",
              "group_head": "linear", "mlp": False, "ins_t": 0.1, "image_size": 32, "subset": subset}
    torch.manual_seed(0)
    model = build_model(config, 3)
    save_atomic({"config": config, "model": model.state_dict(), "epoch": 1}, str(tmp_path / "last.pth"))
    argv = ["--ckpt", str(tmp_path / "last.pth"), "--workers", "0", "--k", "5", "--many", "5", "--few", "2"]
    eval_knn.main(eval_knn.parse_args(argv))
    result = json.loads(capsys.readouterr().out)
    assert result["train_images"] == len(keep) == 36 and result["subset"] == subset
    assert {"many", "medium", "few"} <= result.keys() and result["many_above"] == 5
    groups = [result[g] for g in ("many", "medium", "few")]
    assert all(0 <= g <= 100 for g in groups)  # 10,7 / 5,4,3,2,2 / 1,1,1 training images
    config["subset"] = None  # a full-data run: no shot figures, the whole train split as the bank
    save_atomic({"config": config, "model": model.state_dict(), "epoch": 1}, str(tmp_path / "last.pth"))
    eval_knn.main(eval_knn.parse_args(argv))
    result = json.loads(capsys.readouterr().out)
    assert "many" not in result and result["train_images"] == 100
