"""Write a long-tailed subset of a training set as a subset file (indices, no copied images).

    python make_longtail.py --dataset cifar10 --data ROOT --ratio 100 --out runs/cifar10_lt100.json
    python make_longtail.py --dataset imagenet-lt --data /path/to/imagenet --lists DIR --out runs/imagenet_lt.json
    python make_longtail.py --dataset fashion-mnist --ratio 1 --per-class 1000 --out runs/fmnist_10k.json  # balanced
    python train_cld.py --dataset cifar10 --data ROOT --subset runs/cifar10_lt100.json --out runs/c10lt

cifar10, cifar100, fashion-mnist and imagefolder: LDAM-DRW's exponential profile (its imbalance_cifar.py): class i
keeps int(n_max * (1/ratio)^(i/(C-1))) images, class 0 the head, drawn after seeding numpy once.
imagenet-lt: the released list ImageNet_LT_train.txt (read, never regenerated), mapped onto the
ImageFolder of root/train; train with --dataset imagenet. Test sets stay balanced. Prints the
images per class and the total.
"""
import argparse
import os

import numpy as np

from lib import cli
from lib.cli import Range
from lib.data import DatasetError, load_dataset
from lib.subsets import write_subset
from lib.longtail import class_counts, longtail_indices

NAMES = ("cifar10", "cifar100", "fashion-mnist", "imagefolder", "imagenet-lt")
IMAGENET_LT_TRAIN = "ImageNet_LT_train.txt"


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, choices=NAMES, help="imagenet-lt subsets --dataset imagenet")
    p.add_argument("--data", default=None, help="dataset root, as for train_cld.py (fashion-mnist: default Debian's folder)")
    p.add_argument("--ratio", type=float, default=100,
                   help="imbalance n_max/n_min; the paper does not state it, 100 is LDAM-DRW's default (--imb_factor 0.01); "
                        "ignored for imagenet-lt")
    p.add_argument("--seed", type=int, default=0, help="numpy seed of the draw (LDAM-DRW: 0)")
    p.add_argument("--per-class", type=int, default=None,
                   help="n_max, the head class's images (default: the largest class's size); with --ratio 1 a "
                        "balanced subset of this many images per class")
    p.add_argument("--lists", default=None, help="imagenet-lt: the folder holding ImageNet_LT_train.txt (or that file)")
    p.add_argument("--out", required=True, help="the subset file to write (JSON)")
    args = p.parse_args(argv)
    cli.check_ranges(p, args, {"ratio": Range(1, text="at least 1"), "seed": Range(0, 2**32 - 1, text="in [0, 2**32 - 1]"),
                               "per_class": cli.POSITIVE})
    if args.per_class is not None and args.dataset == "imagenet-lt":
        p.error("--per-class does not apply to imagenet-lt, whose released list fixes every class's images")
    if args.dataset == "imagenet-lt" and not args.lists:
        p.error("--dataset imagenet-lt needs --lists DIR, the folder of the released ImageNet_LT_*.txt lists")
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    if args.lists and not os.path.isdir(args.lists):
        cli.input_file(p, "--lists", args.lists, f"the folder holding {IMAGENET_LT_TRAIN}, or that file")
    cli.output_file(p, "--out", args.out)
    return args


def read_list(path):
    """Lines '<relative path> <label>' -> [(line number, path, label)]."""
    if os.path.isdir(path):
        path = os.path.join(path, IMAGENET_LT_TRAIN)
    if not os.path.isfile(path):
        raise DatasetError(f"imagenet-lt: {path} not found; --lists is the folder of the released ImageNet-LT "
                           f"lists (ImageNet_LT_train.txt, from the OLTR project)")
    entries = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise DatasetError(f"imagenet-lt: {path} line {number} is {line.strip()!r}, expected "
                                   f"'<relative path> <label>'")
            entries.append((number, fields[0], int(fields[1])))
    if not entries:
        raise DatasetError(f"imagenet-lt: {path} lists no images")
    return path, entries


def image_key(path):
    # 'train/n01440764/n01440764_190.JPEG' and '/data/train/n01440764/n01440764_190.JPEG' alike.
    parts = path.replace("\\", "/").split("/")
    return "/".join(parts[-2:])


def imagenet_lt_indices(train_set, list_path, entries):
    """Indices into the ImageFolder train_set of the listed images, checking each label."""
    where = {image_key(path): i for i, (path, _) in enumerate(train_set.samples)}
    indices = []
    for number, path, label in entries:
        index = where.get(image_key(path))
        if index is None:
            raise DatasetError(f"imagenet-lt: {list_path} line {number}: {path} is not an image of "
                               f"{train_set.root}")
        if train_set.targets[index] != label:
            raise DatasetError(f"imagenet-lt: {list_path} line {number}: label {label}, but "
                               f"{train_set.classes[train_set.targets[index]]} is class "
                               f"{train_set.targets[index]} in sorted wnid order; the list and the tree disagree")
        indices.append(index)
    if len(set(indices)) != len(indices):
        raise DatasetError(f"imagenet-lt: {list_path} lists an image twice")
    return np.asarray(indices, dtype=np.int64)


def print_counts(counts, names=None):
    """One line per class: its label, its folder name when it has one, its images."""
    width = max(len(n) for n in names) if names else 0
    for c, n in enumerate(counts):
        name = f"  {names[c]:<{width}}" if names else ""
        print(f"{c:>5}{name}  {n:>6}")


def main(args):
    # ---- data
    if args.dataset == "imagenet-lt":
        list_path, entries = read_list(args.lists)
        train_set = load_dataset("imagenet", args.data, "train")
        about = {"dataset": "imagenet-lt", "list": os.path.abspath(list_path)}
    else:
        train_set = load_dataset(args.dataset, args.data, "train")
        about = {"dataset": args.dataset, "ratio": args.ratio, "seed": args.seed,
                 **({"per_class": args.per_class} if args.per_class else {})}
    labels, num_classes = np.asarray(train_set.targets), train_set.num_classes

    # ---- which images the long tail keeps
    if args.dataset == "imagenet-lt":
        indices = imagenet_lt_indices(train_set, list_path, entries)
    else:
        indices = longtail_indices(labels, num_classes, args.ratio, args.seed, args.per_class)
    counts = class_counts(labels[indices], num_classes)

    # ---- output
    try:
        write_subset(args.out, indices, labels[indices], len(train_set), **about)
    except OSError as e:
        raise DatasetError(f"cannot write {args.out}: {e.strerror or e}") from None
    print_counts(counts, getattr(train_set, "classes", None))
    present = counts[counts > 0]
    print(f"total {len(indices)} of {len(train_set)} training images in {len(present)} classes "
          f"(largest {present.max()}, smallest {present.min()}); wrote {args.out}")


if __name__ == "__main__":
    cli.run_main(main, parse_args())
