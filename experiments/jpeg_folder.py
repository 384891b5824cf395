"""An image folder of ImageNet-like JPEG files for measuring and checking the folder data paths: random 500 x 375
windows (one in four turned to 375 x 500: ImageNet holds both orientations) of the two photographs scikit-learn
ships (sklearn.datasets.load_sample_images: china.jpg, flower.jpg, 640 x 427), saved at quality 90, in
OUT/train/class_<k>/ and OUT/val/class_<k>/ (the layout of `--dataset imagefolder`), two classes.

    python experiments/jpeg_folder.py --out runs/jpegs --train 2560 --val 512
"""
import argparse
import os

import numpy as np
from PIL import Image


def write_jpegs(folder, n, seed=0, quality=90):
    """n JPEG files in folder/class_<k % 2>/; returns folder."""
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.RandomState(seed)
    for k in range(n):
        os.makedirs(os.path.join(folder, f"class_{k % 2}"), exist_ok=True)
        photo = np.rot90(photos[k % 2]) if k % 4 == 3 else photos[k % 2]
        height, width = (500, 375) if k % 4 == 3 else (375, 500)
        top, left = rng.randint(0, photo.shape[0] - height + 1), rng.randint(0, photo.shape[1] - width + 1)
        window = np.ascontiguousarray(photo[top:top + height, left:left + width])
        Image.fromarray(window).save(os.path.join(folder, f"class_{k % 2}", f"img_{k}.jpg"), quality=quality)
    return folder


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=2560, help="training images")
    p.add_argument("--val", type=int, default=512, help="validation images (the kNN monitor's test set)")
    args = p.parse_args()
    write_jpegs(os.path.join(args.out, "train"), args.train, seed=0)
    write_jpegs(os.path.join(args.out, "val"), args.val, seed=1)
    print(f"{args.out}: {args.train} training and {args.val} validation JPEG files")


if __name__ == "__main__":
    main()
