"""Tiny datasets written in the exact on-disk formats of the real ones.

The pixels encode the label and the geometry so that tests can check both:
- CIFAR: red = 2 * label, green = 8 * row (darker at the top), blue = noise.
- STL-10: red = 20 * label (250 for unlabeled images), green = 255 - 2 * row (row r is
  brighter than row r + 1), blue = noise.
- Fashion-MNIST: pixel = 20 * label + row.
- image folders: red = 40 * class index, green = row, blue = noise.
- GMU Kitchens frames: red = column, green = row, blue = 10 * scene + frame.
Every writer returns the folder to pass to lib.data.load_dataset (or the builder) as root.
"""
import gzip
import os
import pickle
import struct

import numpy as np
from PIL import Image


def balanced_labels(n, num_classes, rng):
    # Every class appears (when n allows), in a shuffled order.
    return rng.permutation(np.arange(n) % num_classes)


def rows_like(n, height, width):
    return np.broadcast_to(np.arange(height)[None, :, None], (n, height, width))


def cifar_images(labels, rng):
    n = len(labels)
    red = np.broadcast_to(2 * labels[:, None, None], (n, 32, 32))
    green = 8 * rows_like(n, 32, 32)
    blue = rng.randint(0, 256, size=(n, 32, 32))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)  # [N,32,32,3]


class Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for the real CIFAR files: byte strings as (SHORT_)BINSTRING
    (Python 3 would emit a call to _codecs.encode) and numpy's reconstruct under numpy 1's module name."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dump_python2(obj, path):
    with open(path, "wb") as f:
        Python2Pickler(f, protocol=2).dump(obj)


def write_cifar_batch(path, labels, label_key, rng, str_keys=False, extra=None):
    """extra: more label entries, key -> labels (CIFAR-100's coarse_labels)."""
    images = cifar_images(labels, rng)
    batch = {
        b"batch_label": b"fixture",
        b"data": images.transpose(0, 3, 1, 2).reshape(len(labels), 3072),  # R plane, G, B
        label_key: [int(y) for y in labels],
        **{key: [int(y) for y in values] for key, values in (extra or {}).items()},
        b"filenames": [b"img_%d.png" % i for i in range(len(labels))],
    }
    if str_keys:  # a file re-pickled by Python 3 at protocol 2
        batch = {k.decode(): v for k, v in batch.items()}
        with open(path, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    else:
        dump_python2(batch, path)


def write_cifar10(root, n_train_per_batch=10, n_test=10, seed=0, str_keys=False):
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        write_cifar_batch(os.path.join(folder, f"data_batch_{i}"),
                          balanced_labels(n_train_per_batch, 10, rng), b"labels", rng, str_keys)
    write_cifar_batch(os.path.join(folder, "test_batch"),
                      balanced_labels(n_test, 10, rng), b"labels", rng, str_keys)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"class_%d" % i for i in range(10)]}, f, protocol=2)
    return str(root)


def cifar100_coarse(fine):
    """The fixture's superclass of each fine label: fine % 20 (the real files pair them otherwise; any fixed
    many-to-one map serves the tests)."""
    return np.asarray(fine) % 20


def write_cifar100(root, n_train=200, n_test=100, seed=0, str_keys=False):
    """Like the real files, each holds fine_labels and coarse_labels (the 20 superclasses)."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = balanced_labels(n, 100, rng)
        write_cifar_batch(os.path.join(folder, split), fine, b"fine_labels", rng, str_keys,
                          extra={b"coarse_labels": cifar100_coarse(fine)})
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [b"class_%d" % i for i in range(100)]}, f, protocol=2)
    return str(root)


def stl_images(red, rng):
    n = len(red)
    red = np.broadcast_to(np.asarray(red)[:, None, None], (n, 96, 96))
    green = 255 - 2 * rows_like(n, 96, 96)
    blue = rng.randint(0, 256, size=(n, 96, 96))
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)  # [N,96,96,3]


def write_stl_images(path, images):
    # [N,H,W,C] -> [N,C,W,H]: one channel at a time, each plane column by column.
    with open(path, "wb") as f:
        f.write(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())


def write_stl10(root, n_train=20, n_unlabeled=30, n_test=20, seed=0):
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 10, rng)
        write_stl_images(os.path.join(folder, f"{split}_X.bin"), stl_images(20 * labels, rng))
        (labels + 1).astype(np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))  # 1..10
    write_stl_images(os.path.join(folder, "unlabeled_X.bin"),
                     stl_images(np.full(n_unlabeled, 250), rng))
    return str(root)


def write_idx(path, array, magic):
    """An idx file (gzipped when path ends in .gz): >u4 magic, >u4 sizes, then the bytes."""
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fashion_mnist(root, n_train=30, n_test=20, seed=0, gz=True):
    rng = np.random.RandomState(seed)
    os.makedirs(root, exist_ok=True)
    end = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = 20 * labels[:, None, None] + rows_like(n, 28, 28)  # [N,28,28]
        write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{end}"), images, 2051)
        write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{end}"), labels, 2049)
    return str(root)


def write_imagefolder(root, classes=3, n_per_class=4, size=40, splits=("train", "val"), seed=0):
    """PNG files in root/<split>/<class>/; classes is a count or a list of folder names."""
    rng = np.random.RandomState(seed)
    names = [f"class_{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    width, height = (size, size) if isinstance(size, int) else size
    for split in splits:
        for c, name in enumerate(sorted(names)):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for k in range(n_per_class):
                red = np.full((height, width), 40 * c)
                green = np.broadcast_to(np.arange(height)[:, None], (height, width))
                blue = rng.randint(0, 256, size=(height, width))
                pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f"img_{k}.png"))
    return str(root)


def write_gmu_scene(root, scene, frames, size=(120, 80)):
    """GMU Kitchens scene folder root/gmu_scene_00N/ with Images/rgb_<k>.png, Depths/depth_<k>.png
    and Annotations/rgb_<k>.xml, k = 1, 2, ...

    frames: one list per frame of objects (name, xmin, ymin, xmax, ymax); the coordinates are written
    as given (str()), so floats stay floats, and are 1-based as in the real files.
    """
    width, height = size
    folder = os.path.join(root, f"gmu_scene_{scene:03d}")
    for sub in ("Images", "Depths", "Annotations"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for k, objects in enumerate(frames, 1):
        red = np.broadcast_to(np.arange(width)[None, :], (height, width))
        green = np.broadcast_to(np.arange(height)[:, None], (height, width))
        blue = np.full((height, width), 10 * scene + k)
        pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, "Images", f"rgb_{k}.png"))
        Image.fromarray(np.full((height, width), 1000, dtype=np.uint16)).save(
            os.path.join(folder, "Depths", f"depth_{k}.png"))
        boxes = "".join(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>0</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object>" for name, x0, y0, x1, y1 in objects)
        note = (f"<annotation><folder>gmu_scene_{scene:03d}</folder><filename>rgb_{k}.png</filename>"
                f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
                f"{boxes}</annotation>")
        with open(os.path.join(folder, "Annotations", f"rgb_{k}.xml"), "w") as f:
            f.write(note)
    return str(root)


def write_imagenet_lt_list(path, entries):
    """A released-style ImageNet-LT list: one '<relative path> <label>' line per (path, label)."""
    with open(path, "w") as f:
        f.writelines(f"{rel} {label}\n" for rel, label in entries)
    return str(path)
