import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lib.correlated import correlated_views, render_view
from lib.augment import MultiView, train_transform
from lib.augment import test_transform as eval_transform  # a test_* name would be collected
from lib.data import DATASET_NAMES, IMAGENET100_LIST, DatasetError, DatasetInfo, dataset_info, default_root, load_dataset
from tests.fixtures import (write_cifar10, write_cifar100, write_fashion_mnist, write_idx,
                            write_imagefolder, write_stl10)


def pixels(dataset, i):
    img, target, index = dataset[i]
    assert index == i and isinstance(target, int)
    return np.asarray(img), target, img


def check_common(dataset, n, num_classes):
    assert len(dataset) == n
    assert dataset.targets.dtype == np.int64 and dataset.targets.shape == (n,)
    assert dataset.num_classes == num_classes


# ----------------------------------------------------------------------------- facts

def test_names_and_info():
    assert DATASET_NAMES == ("digits", "fashion-mnist", "fashion-mnist-hc", "cifar10", "cifar100", "stl10",
                             "kitchen-hc", "imagefolder", "imagenet", "imagenet100", "synthetic")
    sizes = {"digits": 8, "fashion-mnist": 28, "fashion-mnist-hc": 28, "cifar10": 32, "cifar100": 32,
             "stl10": 96, "kitchen-hc": 32, "imagefolder": 224, "imagenet": 224, "imagenet100": 224,
             "synthetic": 32}
    for name in DATASET_NAMES:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo)
        assert info.image_size == sizes[name]
        assert len(info.mean) == len(info.std) == info.channels
    assert dataset_info("imagenet").default_arch == "resnet50"
    assert dataset_info("imagefolder").default_arch == "resnet18"
    assert dataset_info("stl10").default_arch == "resnet18_cifar"
    assert dataset_info("kitchen-hc").default_arch == "resnet18_cifar"
    assert dataset_info("imagenet100").default_arch == "resnet50"
    assert default_root("fashion-mnist") == "/usr/share/datasets/fashion-mnist"
    assert default_root("fashion-mnist-hc") == "/usr/share/datasets/fashion-mnist"
    assert default_root("cifar10") is None


def test_unknown_name():
    with pytest.raises(DatasetError, match="cifar10"):
        dataset_info("mnist")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("mnist", None, "train")
    with pytest.raises(DatasetError, match="split"):
        load_dataset("digits", None, "val")


# ----------------------------------------------------------------------------- loaders

def test_digits():
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    check_common(train, 1437, 10)
    check_common(test, 360, 10)
    assert train.data.shape == (1437, 8, 8) and train.data.dtype == np.uint8
    assert train.data.max() == 255
    assert np.array_equal(load_dataset("digits", None, "pretrain").targets, train.targets)
    assert np.bincount(test.targets).min() >= 35  # stratified: 36 or 37 of each digit
    array, target, img = pixels(train, 5)
    assert img.mode == "L" and img.size == (8, 8) and target == train.targets[5]


def test_digits_are_scikit_learns_images_and_split():
    """load_digits_arrays reads scikit-learn's file itself and the split from lib/digits_split.json, to spare
    each process scikit-learn's import: both must be exactly what load_digits and train_test_split give."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from lib.data import load_digits_arrays
    digits = load_digits()
    train, test = train_test_split(np.arange(len(digits.target)), test_size=0.2, stratify=digits.target,
                                   random_state=0)
    for split, keep in (("train", train), ("test", test)):
        images, labels = load_digits_arrays(split)
        assert np.array_equal(images, np.round(digits.images[keep] * 255 / 16).astype(np.uint8))
        assert np.array_equal(labels, digits.target[keep]) and labels.dtype == digits.target.dtype


def test_fashion_mnist_fixture(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=30, n_test=20)
    for split, n in (("pretrain", 30), ("train", 30), ("test", 20)):
        dataset = load_dataset("fashion-mnist", root, split)
        check_common(dataset, n, 10)
        assert dataset.data.shape == (n, 28, 28) and dataset.data.dtype == np.uint8
        for i in (0, n - 1):
            array, target, img = pixels(dataset, i)
            assert img.mode == "L" and img.size == (28, 28)
            assert array[0, 0] == 20 * target and array[27, 0] == 20 * target + 27


def test_fashion_mnist_uncompressed(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=12, n_test=8, gz=False)
    assert len(load_dataset("fashion-mnist", root, "test")) == 8


def test_fashion_mnist_real():
    root = default_root("fashion-mnist")
    if not os.path.isfile(os.path.join(root, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    train = load_dataset("fashion-mnist", None, "train")
    test = load_dataset("fashion-mnist", None, "test")
    check_common(train, 60000, 10)
    check_common(test, 10000, 10)
    assert np.bincount(train.targets).tolist() == [6000] * 10
    pixels01 = train.data / np.float32(255)
    info = dataset_info("fashion-mnist")
    assert abs(pixels01.mean() - info.mean[0]) < 1e-3
    assert abs(pixels01.std() - info.std[0]) < 1e-3


def test_fashion_mnist_bad_files(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=10, n_test=10)
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"), np.zeros((10, 28, 28)), 2049)
    with pytest.raises(DatasetError, match="magic number 2049, expected 2051"):
        load_dataset("fashion-mnist", root, "test")
    write_idx(os.path.join(root, "t10k-images-idx3-ubyte.gz"), np.zeros((9, 28, 28)), 2051)
    with pytest.raises(DatasetError, match="9 images but 10 labels"):
        load_dataset("fashion-mnist", root, "test")
    os.remove(os.path.join(root, "train-labels-idx1-ubyte.gz"))
    expected = "train-labels-idx1-ubyte.gz not found.*dataset-fashion-mnist"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("fashion-mnist", root, "train")


def test_idx_truncated(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=10, n_test=10, gz=False)
    path = os.path.join(root, "train-images-idx3-ubyte")
    with open(path, "r+b") as f:
        f.truncate(16 + 28 * 28 * 5)
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion-mnist", root, "train")


@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar10(tmp_path, str_keys):
    root = write_cifar10(tmp_path, n_train_per_batch=6, n_test=7, str_keys=str_keys)
    # Both the parent folder and cifar-10-batches-py/ itself are accepted.
    for where in (root, os.path.join(root, "cifar-10-batches-py")):
        train = load_dataset("cifar10", where, "train")
        check_common(train, 30, 10)
        assert train.data.shape == (30, 32, 32, 3) and train.data.dtype == np.uint8
    test = load_dataset("cifar10", root, "test")
    check_common(test, 7, 10)
    assert len(load_dataset("cifar10", root, "pretrain")) == 30
    for dataset in (train, test):
        for i in range(len(dataset)):
            array, target, img = pixels(dataset, i)
            assert img.mode == "RGB" and img.size == (32, 32)
            assert (array[..., 0] == 2 * target).all()
            assert array[5, 0, 1] == 40 and array[0, 5, 1] == 0  # green grows down the rows


def test_cifar100(tmp_path):
    root = write_cifar100(tmp_path, n_train=150, n_test=40)
    train = load_dataset("cifar100", root, "train")
    test = load_dataset("cifar100", os.path.join(root, "cifar-100-python"), "test")
    check_common(train, 150, 100)
    check_common(test, 40, 100)
    assert train.targets.max() == 99
    array, target, _ = pixels(train, 3)
    assert (array[..., 0] == 2 * target).all()


def test_stl10(tmp_path):
    root = write_stl10(tmp_path, n_train=12, n_unlabeled=9, n_test=10)
    train = load_dataset("stl10", root, "train")
    test = load_dataset("stl10", root, "test")
    pretrain = load_dataset("stl10", root, "pretrain")
    check_common(train, 12, 10)
    check_common(test, 10, 10)
    check_common(pretrain, 21, 10)
    assert train.data.shape == (12, 96, 96, 3) and pretrain.data.shape == (21, 96, 96, 3)
    assert set(train.targets.tolist()) == set(range(10))  # labels 1..10 became 0..9
    assert np.array_equal(pretrain.targets[:12], train.targets)
    assert (pretrain.targets[12:] == -1).all()
    for dataset in (train, test, pretrain):
        for i in range(len(dataset)):
            array, target, img = pixels(dataset, i)
            assert img.mode == "RGB" and img.size == (96, 96)
            assert (array[..., 0] == (250 if target == -1 else 20 * target)).all()
            # Row r is brighter than row r+1, every column alike: H and W are not swapped.
            assert (np.diff(array[..., 1].astype(int), axis=0) == -2).all()
            assert (np.diff(array[..., 1].astype(int), axis=1) == 0).all()
    # The concatenation reads like one array, also by index arrays and after pickling.
    assert np.array_equal(pretrain.data[[3, 15]], np.stack([train.data[3], pretrain.data[15]]))
    assert np.array_equal(np.asarray(pretrain.data)[:12], train.data)
    copy = pickle.loads(pickle.dumps(pretrain))
    assert np.array_equal(copy[20][0], pretrain[20][0]) and copy.targets[20] == -1


def test_stl10_truncated(tmp_path):
    root = write_stl10(tmp_path, n_train=4, n_unlabeled=3, n_test=4)
    path = os.path.join(root, "stl10_binary", "unlabeled_X.bin")
    with open(path, "r+b") as f:
        f.truncate(27648 * 2 + 100)
    assert len(load_dataset("stl10", root, "train")) == 4
    with pytest.raises(DatasetError, match="not a positive multiple of 27648.*truncated"):
        load_dataset("stl10", root, "pretrain")
    os.remove(os.path.join(root, "stl10_binary", "test_y.bin"))
    with pytest.raises(DatasetError, match="test_y.bin not found.*stl10_binary"):
        load_dataset("stl10", root, "test")


@pytest.mark.parametrize("name", ["imagefolder", "imagenet"])
def test_imagefolder(tmp_path, name):
    root = write_imagefolder(tmp_path / "folder", classes=["b", "a", "c"], n_per_class=3,
                             size=(20, 12))
    train = load_dataset(name, root, "train")
    test = load_dataset(name, root, "test")
    check_common(train, 9, 3)
    check_common(test, 9, 3)
    assert train.classes == ["a", "b", "c"]
    for i in range(len(train)):
        array, target, img = pixels(train, i)
        assert img.mode == "RGB" and img.size == (20, 12)
        assert (array[..., 0] == 40 * target).all()
    train.transform = eval_transform(dataset_info(name), image_size=16)
    assert train[0][0].shape == (3, 16, 16)


def test_imagefolder_prefers_val(tmp_path):
    root = write_imagefolder(tmp_path, classes=2, n_per_class=2, size=8, splits=("train", "test"))
    assert len(load_dataset("imagefolder", root, "test")) == 4  # test/ when there is no val/
    write_imagefolder(tmp_path, classes=2, n_per_class=5, size=8, splits=("val",))
    assert len(load_dataset("imagefolder", root, "test")) == 10


def test_missing_data(tmp_path):
    with pytest.raises(DatasetError, match="no data folder given.*cifar-10-batches-py"):
        load_dataset("cifar10", None, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("stl10", str(tmp_path / "nowhere"), "train")
    with pytest.raises(DatasetError, match="data_batch_1 not found"):
        load_dataset("cifar10", str(tmp_path), "train")
    with pytest.raises(DatasetError, match="train/ not found"):
        load_dataset("imagenet", str(tmp_path), "train")
    os.makedirs(tmp_path / "train" / "empty_class")
    with pytest.raises(DatasetError, match="no readable images"):
        load_dataset("imagefolder", str(tmp_path), "train")
    for name in DATASET_NAMES:  # every message is a single line
        if name not in ("digits", "synthetic"):  # these two need no files
            with pytest.raises(DatasetError) as error:
                load_dataset(name, str(tmp_path / "nowhere"), "train")
            assert "\n" not in str(error.value)


def imagenet100_wnids():
    with open(IMAGENET100_LIST) as f:
        return f.read().split()


def test_imagenet100_list():
    wnids = imagenet100_wnids()
    with open(IMAGENET100_LIST) as f:
        assert len(f.read().strip().splitlines()) == 1  # one line, as the authors ship it
    assert len(wnids) == len(set(wnids)) == 100
    assert all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in wnids)
    assert wnids[:2] == ["n02869837", "n01749939"] and wnids[-1] == "n02090622"


def test_imagenet100_reads_its_classes_in_place(tmp_path):
    wnids = imagenet100_wnids()
    others = ["n01440764", "n15075141"]  # ImageNet classes outside the 100
    root = write_imagefolder(tmp_path / "imagenet", classes=wnids + others, n_per_class=1, size=4)
    full = load_dataset("imagenet", root, "train")
    train, test = load_dataset("imagenet100", root, "train"), load_dataset("imagenet100", root, "test")
    check_common(full, 102, 102)
    check_common(train, 100, 100)
    check_common(test, 100, 100)
    assert train.classes == test.classes == sorted(wnids)  # labels follow sorted wnid order
    assert all(os.path.dirname(path).endswith(train.classes[y]) for path, y in train.samples)
    assert not any(o in path for path, _ in train.samples for o in others)
    assert test.root.endswith("val")
    os.rename(os.path.join(root, "val", wnids[5]), os.path.join(root, "val", "moved"))
    with pytest.raises(DatasetError, match=f"imagenet100: 1 of the 100 classes .* {wnids[5]}"):
        load_dataset("imagenet100", root, "test")


def test_render_view():
    img = np.zeros((28, 28), dtype=np.uint8)
    img[10, 6] = 200
    assert np.array_equal(render_view(img, 1.0, 0.0, 0.0, 1.0), img)
    assert np.argwhere(render_view(img, 1.0, 2.0, 1.0, 1.0)).tolist() == [[11, 8]]  # 2 right, 1 down
    assert render_view(img, 1.0, 0.0, 0.0, 1.2)[10, 6] == 240 and render_view(img, 1.0, 0.0, 0.0, 1.5).max() == 255
    rows, cols = np.nonzero(render_view(img, 2.0, 0.0, 0.0, 1.0))  # 2x about (14, 14): spans rows 6..8, cols -2..0
    assert rows.min() >= 5 and rows.max() <= 8 and cols.max() == 0  # bilinear: half a pixel of blur
    centre = np.zeros((28, 28), dtype=np.uint8)
    centre[13:15, 13:15] = 100
    assert render_view(centre, 1.15, 0.0, 0.0, 1.0)[13:15, 13:15].min() > 0


def test_correlated_views():
    # Sources: a 4x4 bright square at a random place; a view must keep it near where it was.
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(3), 6)                                  # [18]
    images = np.zeros((18, 28, 28), dtype=np.uint8)
    corners = rng.randint(6, 18, size=(18, 2))
    for image, (r, c) in zip(images, corners):
        image[r:r + 4, c:c + 4] = 150
    views, view_labels, bases = correlated_views(images, labels, 3, bases_per_class=2, views_per_base=4, seed=5)
    assert views.shape == (24, 28, 28) and views.dtype == np.uint8
    assert np.array_equal(view_labels, labels[bases]) and view_labels.dtype == np.int64
    assert (np.bincount(view_labels) == 8).all()
    assert [len(set(bases[i:i + 4])) for i in range(0, 24, 4)] == [1] * 6  # a base's views are consecutive
    assert len(set(bases.tolist())) == 6
    assert len({v.tobytes() for v in views}) == 24  # every view differs

    def centroid(image):
        rows, cols = np.nonzero(image)
        weights = image[rows, cols].astype(float)
        return np.array([np.average(rows, weights=weights), np.average(cols, weights=weights)])

    # at most 3 px of shift plus 20% zoom of a point 8 px from the centre, each axis
    moved = [np.abs(centroid(v) - centroid(images[b])).max() for v, b in zip(views, bases)]
    assert max(moved) < 3 + 0.2 * 8 + 0.5
    again = correlated_views(images, labels, 3, bases_per_class=2, views_per_base=4, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((views, view_labels, bases), again))
    other = correlated_views(images, labels, 3, bases_per_class=2, views_per_base=4, seed=6)[0]
    assert not np.array_equal(views, other)
    with pytest.raises(ValueError, match="fewer than the 7 bases"):
        correlated_views(images, labels, 3, bases_per_class=7)


def test_fashion_mnist_hc_needs_enough_images(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=30, n_test=20)
    assert len(load_dataset("fashion-mnist-hc", root, "test")) == 20  # the real test set, untouched
    with pytest.raises(DatasetError, match="fashion-mnist-hc: the training files in .* are too small"):
        load_dataset("fashion-mnist-hc", root, "train")


def test_fashion_mnist_hc_real():
    root = default_root("fashion-mnist")
    if not os.path.isfile(os.path.join(root, "t10k-labels-idx1-ubyte.gz")):
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    train = load_dataset("fashion-mnist-hc", None, "pretrain")
    check_common(train, 20000, 10)
    assert np.bincount(train.targets).tolist() == [2000] * 10
    assert len(np.unique(train.bases)) == 2000 and (np.bincount(train.bases)[train.bases] == 10).all()
    source = load_dataset("fashion-mnist", None, "train")
    assert np.array_equal(source.targets[train.bases], train.targets)
    check_common(load_dataset("fashion-mnist-hc", None, "test"), 10000, 10)
    array, target, img = pixels(train, 0)
    assert img.mode == "L" and img.size == (28, 28)


# ----------------------------------------------------------------------------- transforms

def sample_image(channels, size):
    rng = np.random.RandomState(1)
    shape = (size, size) if channels == 1 else (size, size, 3)
    return Image.fromarray(rng.randint(0, 256, size=shape).astype(np.uint8))


@pytest.mark.parametrize("name", ["digits", "fashion-mnist", "cifar10", "stl10"])
@pytest.mark.parametrize("recipe", ["default", "aug-plus"])
@pytest.mark.parametrize("erasing", [False, True])
def test_multiview(name, recipe, erasing):
    info = dataset_info(name)
    img = sample_image(info.channels, info.image_size)
    views = MultiView(train_transform(info, recipe, erasing), 3)(img)
    assert len(views) == 3
    for view in views:
        assert view.shape == (info.channels, info.image_size, info.image_size)
        assert view.dtype == torch.float32
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])


def test_multiview_large_and_resized():
    info = dataset_info("imagenet")
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (150, 200, 3)).astype(np.uint8))
    views = MultiView(train_transform(info, "aug-plus", erasing=True), 2)(img)
    assert [v.shape for v in views] == [(3, 224, 224)] * 2
    small = train_transform(dataset_info("cifar10"), image_size=16)(sample_image(3, 32))
    assert small.shape == (3, 16, 16)


def test_grey_stays_grey():
    from torchvision import transforms
    colour = transforms.Compose([transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
                                 transforms.RandomGrayscale(p=1.0)])
    for _ in range(5):
        assert colour(sample_image(1, 28)).mode == "L"


def test_test_transform():
    for name in ("digits", "fashion-mnist", "cifar10", "stl10"):
        info = dataset_info(name)
        img = sample_image(info.channels, info.image_size)
        out = eval_transform(info)(img)
        # Array datasets are already at size: only ToTensor and Normalize.
        plain = torch.from_numpy(np.array(img)).float().div(255).reshape(*out.shape[1:], -1)
        mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
        plain = (plain.permute(2, 0, 1) - mean) / std
        assert torch.allclose(out, plain, atol=1e-6)
        assert torch.equal(out, eval_transform(info)(img))
    folder = dataset_info("imagefolder")
    wide = Image.new("RGB", (300, 200))
    assert eval_transform(folder)(wide).shape == (3, 224, 224)
    assert eval_transform(folder, image_size=32)(wide).shape == (3, 32, 32)
    upsized = eval_transform(dataset_info("cifar10"), image_size=64)(sample_image(3, 32))
    assert upsized.shape == (3, 64, 64)


def test_dataloader_batches(tmp_path):
    root = write_cifar10(tmp_path, n_train_per_batch=4, n_test=4)
    info = dataset_info("cifar10")
    dataset = load_dataset("cifar10", root, "pretrain", MultiView(train_transform(info), 2))
    views, targets, index = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert len(views) == 2 and views[0].shape == (8, 3, 32, 32)
    assert torch.equal(index, torch.arange(8))
    assert torch.equal(targets, torch.from_numpy(dataset.targets[:8]))
