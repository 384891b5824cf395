"""An ImageFolder built from Fashion-MNIST: the first N training images of each class as PNG files in
OUT/train/<class>/, the first M test images of each class in OUT/val/<class>/ (the layout of
`--dataset imagefolder`). The images stay 28x28 grey; the folder loader reads them as RGB.

    python experiments/fashion_folder.py --data /usr/share/datasets/fashion-mnist --out data/fmnist_folder
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.data import load_dataset  # noqa: E402

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def export(dataset, folder, per_class):
    targets = np.asarray(dataset.targets)
    for label, name in enumerate(CLASSES):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in np.where(targets == label)[0][:per_class]:
            Image.fromarray(dataset.data[i]).save(os.path.join(folder, name, f"{i:05d}.png"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the folder of Fashion-MNIST's four *-ubyte.gz files")
    p.add_argument("--out", required=True)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=100)
    args = p.parse_args()
    export(load_dataset("fashion-mnist", args.data, "train"), os.path.join(args.out, "train"), args.train_per_class)
    export(load_dataset("fashion-mnist", args.data, "test"), os.path.join(args.out, "val"), args.val_per_class)
    print(f"{args.out}: {10 * args.train_per_class} training and {10 * args.val_per_class} validation images")


if __name__ == "__main__":
    main()
