"""Datasets (the augmentations are in lib/augment.py).

Every dataset returns (transform(img), target, index): the index addresses the row of the
image in a memory bank. Small datasets are read straight from their published files into
uint8 arrays (`.data`, shape [N,H,W] or [N,H,W,3]); folders of images go through
torchvision's ImageFolder. Subset files (some images of a train split) are in lib/subsets.py.
"""
import gzip
import importlib.util
import json
import os
import pickle
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from lib.correlated import correlated_views


class DatasetError(Exception):
    """A dataset cannot be loaded; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    image_size: int
    mean: tuple
    std: tuple
    default_arch: str


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Pixel mean/std (on the 0..1 scale) of the training images, computed once with numpy:
# digits over the 1,437 images of the stratified train split below (pixels 0..16 scaled to
# 0..255), Fashion-MNIST over the 60,000 images of train-images-idx3-ubyte.gz.
DIGITS_MEAN, DIGITS_STD = (0.3054,), (0.3760,)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)

INFO = {
    "digits": DatasetInfo(1, 8, DIGITS_MEAN, DIGITS_STD, "resnet18_cifar"),
    "fashion-mnist": DatasetInfo(1, 28, FASHION_MEAN, FASHION_STD, "resnet18_cifar"),
    # Tested on the real Fashion-MNIST test set, so normalised like it.
    "fashion-mnist-hc": DatasetInfo(1, 28, FASHION_MEAN, FASHION_STD, "resnet18_cifar"),
    "cifar10": DatasetInfo(3, 32, CIFAR_MEAN, CIFAR_STD, "resnet18_cifar"),
    "cifar100": DatasetInfo(3, 32, CIFAR_MEAN, CIFAR_STD, "resnet18_cifar"),
    # The authors' STL-10 branch of datasets/dataloader.py normalises with 0.5 and 0.5.
    "stl10": DatasetInfo(3, 96, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "resnet18_cifar"),
    # The paper trains Kitchen-HC at 32x32 like CIFAR (supplementary), with the CIFAR pipeline.
    "kitchen-hc": DatasetInfo(3, 32, CIFAR_MEAN, CIFAR_STD, "resnet18_cifar"),
    "imagefolder": DatasetInfo(3, 224, IMAGENET_MEAN, IMAGENET_STD, "resnet18"),
    "imagenet": DatasetInfo(3, 224, IMAGENET_MEAN, IMAGENET_STD, "resnet50"),
    "imagenet100": DatasetInfo(3, 224, IMAGENET_MEAN, IMAGENET_STD, "resnet50"),
    "synthetic": DatasetInfo(3, 32, CIFAR_MEAN, CIFAR_STD, "resnet18_cifar"),
}
DATASET_NAMES = tuple(INFO)
# Read image by image from files; every other dataset is one uint8 array in memory.
FOLDER_DATASETS = ("imagefolder", "imagenet", "imagenet100", "kitchen-hc")
SPLITS = ("pretrain", "train", "test")
# The 100 classes of CMC's ImageNet-100, as the CLD authors ship them: one line of wnids.
IMAGENET100_LIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                                "imagenet100.txt")
# fashion-mnist-hc: 200 base images per class, 10 views each (20,000 images), drawn with seed 0.
HC_BASES, HC_VIEWS, HC_SEED = 200, 10, 0


def dataset_info(name):
    if name not in INFO:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return INFO[name]


def default_root(name):
    # Debian's dataset-fashion-mnist package installs the four .gz files here.
    if name in ("fashion-mnist", "fashion-mnist-hc"):
        return "/usr/share/datasets/fashion-mnist"
    return None


# ----------------------------------------------------------------------------- datasets

class ArrayDataset(torch.utils.data.Dataset):
    """Images held as a uint8 array `data` [N,H,W] (grey) or [N,H,W,3] (RGB)."""

    def __init__(self, data, targets, num_classes, transform=None):
        self.data = data
        self.targets = np.asarray(targets, dtype=np.int64)  # [N], -1 = no label
        self.num_classes = num_classes
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        # A 2-D array becomes an "L" image, [H,W,3] an "RGB" one.
        img = Image.fromarray(np.ascontiguousarray(self.data[index]))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index]), index


class FolderDataset(datasets.ImageFolder):
    """ImageFolder that also returns the index and keeps targets as an int64 array.

    `only`, a list of class folder names, restricts it to those classes (labels in sorted
    name order); the other folders are never scanned.
    """

    def __init__(self, root, transform=None, only=None):
        self.only = only
        super().__init__(root, transform=transform)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        self.num_classes = len(self.classes)

    def find_classes(self, directory):
        if self.only is None:
            return super().find_classes(directory)
        absent = sorted(c for c in self.only if not os.path.isdir(os.path.join(directory, c)))
        if absent:
            raise DatasetError(f"{len(absent)} of the {len(self.only)} classes asked for are not folders of "
                               f"{directory} (first: {absent[0]})")
        names = sorted(self.only)
        return names, {name: i for i, name in enumerate(names)}

    def __getitem__(self, index):
        try:
            img, target = super().__getitem__(index)
        except OSError as e:  # PIL: not an image, or a truncated one
            reason = "not an image format PIL recognises" if isinstance(e, UnidentifiedImageError) else str(e)
            raise DatasetError(f"{self.samples[index][0]} is not a readable image ({reason}); "
                               f"replace or remove it") from None
        return img, int(target), index


class ImageCheck(torch.utils.data.Dataset):
    """Decodes each file fully (a truncated JPEG opens and fails only on load); item i is '' or the reason."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as img:
                img.load()
            return ""
        except UnidentifiedImageError:
            return "not an image format PIL recognises"
        except Exception as e:  # PIL's decoders raise OSError, SyntaxError, ValueError, ... for damaged files
            return str(e) or type(e).__name__


def image_files(dataset):
    """The image files a folder dataset reads, or [] for datasets held in memory."""
    return [path for path, _ in getattr(dataset, "samples", [])]


def unreadable_images(paths, workers=0):
    """[(path, reason)] for every file of paths that PIL cannot decode, read by `workers` processes."""
    from lib import signals  # only here: lib.data stays importable without it
    loader = torch.utils.data.DataLoader(ImageCheck(paths), batch_size=64, num_workers=workers, collate_fn=list,
                                         worker_init_fn=signals.ignore_stop_signals)
    reasons = [reason for batch in signals.start_workers(loader) for reason in batch]
    return [(path, reason) for path, reason in zip(paths, reasons) if reason]


def describe_unreadable(bad, total):
    """One line for the files unreadable_images found."""
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (f"{len(bad)} of {total} image files cannot be read: {shown}{more}; replace or remove them "
            "(nothing was trained)")


# What to do when a dataset's files are missing.
HINTS = {
    "fashion-mnist": "install the Debian package dataset-fashion-mnist, or put the four "
                     "*-ubyte.gz files from github.com/zalandoresearch/fashion-mnist in one folder",
    "fashion-mnist-hc": "it is rendered from Fashion-MNIST: install the Debian package "
                        "dataset-fashion-mnist, or put the four *-ubyte.gz files from "
                        "github.com/zalandoresearch/fashion-mnist in one folder",
    "cifar10": "download the python version from www.cs.toronto.edu/~kriz/cifar.html and "
               "extract it so that root/cifar-10-batches-py/ exists",
    "cifar100": "download the python version from www.cs.toronto.edu/~kriz/cifar.html and "
                "extract it so that root/cifar-100-python/ exists",
    "stl10": "download stl10_binary.tar.gz from cs.stanford.edu/~acoates/stl10 and "
             "extract it so that root/stl10_binary/ exists",
    "imagefolder": "point root at a folder holding train/<class>/ and val/<class>/ "
                   "(or test/<class>/)",
    "imagenet": "point root at an ILSVRC-2012 tree holding train/<wnid>/ and val/<wnid>/",
    "imagenet100": "point root at a full ILSVRC-2012 tree holding train/<wnid>/ and val/<wnid>/; "
                   "the 100 classes of data/imagenet100.txt are read from it in place",
    "kitchen-hc": "build root with build_kitchen_hc.py from the GMU Kitchens scenes, or download "
                  "the CLD authors' Kitchen-HC folder (train/<category>/ and test/<category>/)",
}


def missing(name, what, where):
    return DatasetError(f"{name}: {what} not found in {where}; {HINTS[name]}")


# digits: scikit-learn's bundled copy, no files needed. Read straight from its file, as load_digits reads it,
# with the split written out in digits_split.json: importing scikit-learn's datasets and model_selection costs
# about 2 s, which every process of a run would pay (tests/test_data.py checks both against scikit-learn).

DIGITS_SPLIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_split.json")


def load_digits_arrays(split):
    sklearn = importlib.util.find_spec("sklearn")  # where it is installed; nothing of it is imported
    if sklearn is None:
        raise DatasetError("digits: scikit-learn is not installed; pip install -r requirements.txt")
    path = os.path.join(sklearn.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")  # [1797, 65]: 64 pixels 0..16, then the label
    images = np.round(table[:, :-1].reshape(-1, 8, 8) * 255 / 16).astype(np.uint8)  # 0..16 -> 0..255
    labels = table[:, -1].astype(np.int64)
    # No official split: a fixed stratified 80/20 split (scikit-learn's train_test_split, random_state=0)
    # keeps the class balance in both parts.
    with open(DIGITS_SPLIT) as f:
        keep = np.asarray(json.load(f)["test" if split == "test" else "train"])
    return images[keep], labels[keep]


# synthetic: random pixels, for measuring speed without any dataset on disk.

def synthetic_arrays(split, size=32):
    n = 512 if split == "test" else 5120
    rng = np.random.RandomState(1 if split == "test" else 0)
    return rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8), rng.randint(0, 10, n)


# fashion-mnist: idx files, big-endian header (magic, sizes), then raw uint8.

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path, magic):
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip: not a gzip file, or cut short
        raise DatasetError(f"fashion-mnist: {path} cannot be read ({e}); the file is truncated or "
                           f"corrupt, download it again") from None
    ndim = 3 if magic == 2051 else 1  # images [N,rows,cols], labels [N]
    header = np.frombuffer(raw[:4 * (ndim + 1)], dtype=">u4") if len(raw) >= 4 * (ndim + 1) else [0]
    if header[0] != magic:
        raise DatasetError(f"fashion-mnist: {path} has magic number {header[0]}, expected {magic}; "
                           f"the file is corrupt or not an idx file, download it again")
    shape = tuple(int(n) for n in header[1:])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 * (ndim + 1))
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"fashion-mnist: {path} holds {body.size} bytes of data, its header "
                           f"promises {int(np.prod(shape))}; the file is truncated, "
                           f"download it again")
    return body.reshape(shape)


def find_idx(root, stem):
    for name in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise missing("fashion-mnist", stem + ".gz", root)


def load_fashion_arrays(root, split):
    image_file, label_file = FASHION_FILES["test" if split == "test" else "train"]
    images = read_idx(find_idx(root, image_file), 2051)  # [N,28,28]
    labels = read_idx(find_idx(root, label_file), 2049)  # [N]
    if len(images) != len(labels):
        raise DatasetError(f"fashion-mnist: {len(images)} images but {len(labels)} labels in "
                           f"{root}; the files come from different releases, download them again")
    return images, labels


def load_fashion_hc(root, split):
    """fashion-mnist-hc: training on views of a few base images, testing on the real test set."""
    images, labels = load_fashion_arrays(root, split)
    if split == "test":
        return ArrayDataset(images, labels, 10)
    try:
        views, view_labels, bases = correlated_views(images, labels, 10, HC_BASES, HC_VIEWS, HC_SEED)
    except ValueError as e:  # a class smaller than HC_BASES
        raise DatasetError(f"fashion-mnist-hc: the training files in {root} are too small ({e}); "
                           f"{HINTS['fashion-mnist-hc']}") from None
    dataset = ArrayDataset(views, view_labels, 10)  # [20000,28,28]
    dataset.bases = bases  # [20000] the train-split index each view was rendered from
    return dataset


# cifar: Python-2 pickles; under encoding="bytes" their keys are bytes.

CIFAR_LAYOUT = {  # folder, training files, test file, label key
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels"),
}


try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct


class RefusedGlobal(pickle.UnpicklingError):
    pass


class CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals a CIFAR batch file holds: numpy's array reconstruction and dtype, and
    (for files re-pickled by Python 3 at protocol 2) codecs.encode, which turns a str into bytes.
    Dicts, lists, ints, bytes and strings need no global. Anything else could run code: refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise RefusedGlobal(f"it refers to {module}.{name}, which a CIFAR batch never holds")
        if name == "_reconstruct":  # Python-2 files name numpy 1's module; numpy 2 moved it
            return _reconstruct
        return super().find_class(module, name)


def unpickle(path, key):
    try:
        with open(path, "rb") as f:
            batch = CifarUnpickler(f, encoding="bytes").load()
    except RefusedGlobal as e:
        raise DatasetError(f"{path} was not loaded: {e}; a CIFAR file from www.cs.toronto.edu/~kriz/cifar.html "
                           f"holds only arrays, lists and strings, download it again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise DatasetError(f"{path} is truncated or corrupt ({type(e).__name__}); download it again") from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; download it again")

    def pick(key):  # real files have bytes keys; a file pickled by Python 3 may have str keys
        if key.encode() in batch:
            return batch[key.encode()]
        if key in batch:
            return batch[key]
        raise DatasetError(f"{path} has no {key!r} entry; it is not a CIFAR batch, download it again")

    data = np.asarray(pick("data"), dtype=np.uint8)  # [N,3072]: 1024 R, then G, then B
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path} holds data of shape {data.shape}, expected [N,3072]; "
                           f"the file is corrupt, download it again")
    labels = np.asarray(pick(key))
    if labels.shape != (len(data),):
        raise DatasetError(f"{path} holds {len(data)} images but labels of shape {labels.shape}; "
                           f"the file is corrupt, download it again")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_arrays(name, root, split, key=None):
    """(images [N,32,32,3], labels [N]); key: another label entry, e.g. CIFAR-100's "coarse_labels"."""
    folder, train_files, test_file, default_key = CIFAR_LAYOUT[name]
    key = key or default_key
    # Accept both the parent folder and the extracted folder itself.
    if os.path.basename(os.path.normpath(root)) != folder:
        root = os.path.join(root, folder)
    parts = []
    for file in [test_file] if split == "test" else train_files:
        path = os.path.join(root, file)
        if not os.path.isfile(path):
            raise missing(name, file, root)
        parts.append(unpickle(path, key))
    images = np.concatenate([p[0] for p in parts])  # [N,32,32,3]
    labels = np.concatenate([p[1] for p in parts])  # [N]
    return images, labels


# stl10: each image is 3 channel planes of 96x96 bytes, each plane stored column by column.

STL_SIDE = 96
STL_BYTES = 3 * STL_SIDE * STL_SIDE  # 27,648


def stl_path(root, file):
    # Accept both the parent folder and stl10_binary/ itself.
    if os.path.basename(os.path.normpath(root)) != "stl10_binary":
        root = os.path.join(root, "stl10_binary")
    path = os.path.join(root, file)
    if not os.path.isfile(path):
        raise missing("stl10", file, root)
    return path


def stl_count(path):
    size = os.path.getsize(path)
    if size % STL_BYTES or size == 0:
        raise DatasetError(f"stl10: {path} is {size} bytes, not a positive multiple of {STL_BYTES} "
                           f"(one 96x96x3 image); the file is truncated, download it again")
    return size // STL_BYTES


def stl_images(raw):
    # [N,27648] bytes -> [N,C,W,H] (column-major planes) -> [N,H,W,C]
    return raw.reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 3, 2, 1)


class StlImages:
    """Several STL-10 image files seen as one uint8 array [N,96,96,3] without reading them.

    The files are memory-mapped on first access; pickling (DataLoader workers) sends only
    the paths, since pickling a memmap would copy the whole 2.7 GB unlabeled file.
    """

    def __init__(self, paths):
        self.paths = list(paths)
        self.counts = [stl_count(p) for p in self.paths]
        self.starts = np.cumsum([0] + self.counts)  # file k holds rows starts[k]..starts[k+1]-1
        self.shape = (int(self.starts[-1]), STL_SIDE, STL_SIDE, 3)
        self.dtype = np.dtype(np.uint8)
        self.maps = None

    def __getstate__(self):
        return {**self.__dict__, "maps": None}

    def __len__(self):
        return self.shape[0]

    def open(self):
        if self.maps is None:
            self.maps = [stl_images(np.memmap(p, dtype=np.uint8, mode="r")) for p in self.paths]
        return self.maps

    def __getitem__(self, index):
        maps = self.open()
        if np.ndim(index) == 0 and not isinstance(index, slice):
            index = int(index) + (len(self) if index < 0 else 0)
            k = int(np.searchsorted(self.starts, index, side="right")) - 1
            return np.asarray(maps[k][index - self.starts[k]])  # [96,96,3]
        rows = np.arange(len(self))[index]
        out = np.empty((len(rows), STL_SIDE, STL_SIDE, 3), dtype=np.uint8)
        for i, row in enumerate(rows):
            out[i] = self[row]
        return out  # [len(rows),96,96,3]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self[:], dtype=dtype)


def read_stl(path):
    raw = np.fromfile(path, dtype=np.uint8, count=stl_count(path) * STL_BYTES)
    return np.ascontiguousarray(stl_images(raw))  # [N,96,96,3]


def read_stl_labels(path, n):
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # 1..10 -> 0..9
    if len(labels) != n:
        raise DatasetError(f"stl10: {path} has {len(labels)} labels for {n} images; "
                           f"the files are truncated, download stl10_binary again")
    return labels


def load_stl_arrays(root, split):
    prefix = "test" if split == "test" else "train"
    x_path = stl_path(root, f"{prefix}_X.bin")
    labels = read_stl_labels(stl_path(root, f"{prefix}_y.bin"), stl_count(x_path))
    if split != "pretrain":
        return read_stl(x_path), labels  # [N,96,96,3]; 5k train / 8k test fit in memory
    unlabeled = StlImages([x_path, stl_path(root, "unlabeled_X.bin")])
    targets = np.concatenate([labels, np.full(len(unlabeled) - len(labels), -1)])
    return unlabeled, targets


def imagenet100_classes():
    try:
        with open(IMAGENET100_LIST) as f:
            wnids = f.read().split()
    except OSError:
        raise DatasetError(f"imagenet100: the class list {IMAGENET100_LIST} is missing; restore "
                           f"data/imagenet100.txt from the repository") from None
    if len(set(wnids)) != 100:
        raise DatasetError(f"imagenet100: {IMAGENET100_LIST} holds {len(set(wnids))} distinct classes, "
                           f"not 100; restore it from the repository")
    return wnids


def load_folder(name, root, split):
    # The test split is val/ when present (ImageNet layout), else test/ (Kitchen-HC release);
    # kitchen-hc prefers test/, which the authors' datasets/dataloader.py evaluates on, should a val/ be there too.
    subdirs = ["train"] if split != "test" else ["test", "val"] if name == "kitchen-hc" else ["val", "test"]
    only = imagenet100_classes() if name == "imagenet100" else None
    for sub in subdirs:
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            try:
                return FolderDataset(path, only=only)
            except FileNotFoundError as e:  # ImageFolder's message for empty class folders
                raise DatasetError(f"{name}: {path} holds no readable images ({e}); "
                                   f"put images in {path}/<class>/") from None
            except DatasetError as e:  # classes of the list missing from the tree
                raise DatasetError(f"{name}: {e}; {HINTS[name]}") from None
    raise missing(name, " or ".join(s + "/" for s in subdirs), root)


def cifar100_superclasses(root, split):
    """The 20 superclass labels [N] of CIFAR-100's train or test split, in image order (the pickle's
    coarse_labels): what clustering on CIFAR-100 is conventionally scored against."""
    return load_cifar_arrays("cifar100", root, split, "coarse_labels")[1]


def load_dataset(name, root, split, transform=None):
    """The dataset `name` for split "pretrain", "train" or "test"; items are (img, target, index).

    pretrain is what self-supervised training iterates over: the train split, plus the
    100k unlabeled images for stl10.
    """
    dataset_info(name)  # rejects an unknown name
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name == "digits":
        images, labels = load_digits_arrays(split)
        return ArrayDataset(images, labels, 10, transform)
    if name == "synthetic":
        images, labels = synthetic_arrays(split)
        return ArrayDataset(images, labels, 10, transform)
    root = root if root is not None else default_root(name)
    if root is None:
        raise DatasetError(f"{name}: no data folder given; {HINTS[name]}, "
                           f"and pass that folder as root")
    if not os.path.isdir(root):
        raise DatasetError(f"{name}: data folder {root} does not exist; {HINTS[name]}")
    if name in FOLDER_DATASETS:
        dataset = load_folder(name, root, split)
        dataset.transform = transform
        return dataset
    if name == "fashion-mnist":
        images, labels = load_fashion_arrays(root, split)
        return ArrayDataset(images, labels, 10, transform)
    if name == "fashion-mnist-hc":
        dataset = load_fashion_hc(root, split)
        dataset.transform = transform
        return dataset
    if name == "stl10":
        images, labels = load_stl_arrays(root, split)
        return ArrayDataset(images, labels, 10, transform)
    images, labels = load_cifar_arrays(name, root, split)
    return ArrayDataset(images, labels, 100 if name == "cifar100" else 10, transform)
