"""Build Kitchen-HC, the paper's high-correlation dataset, from the raw GMU Kitchens scenes.

    python build_kitchen_hc.py --gmu GMU_ROOT --out DIR --fold 1 [--size 32]
    python train_cld.py --dataset kitchen-hc --data DIR --epochs 80 --out runs/kitchen

GMU_ROOT holds gmu_scene_001 ... gmu_scene_009, each with Images/rgb_<k>.png and
Annotations/rgb_<k>.xml (PASCAL VOC boxes, 1-based, possibly written as floats). Every box of one
of the 11 Kitchen-HC categories (paper Sec. 4, supplementary §1) becomes one crop, clamped to the image and resized to
--size x --size, in DIR/train/<category>/ or DIR/test/<category>/ according to the dataset's scene
fold. Objects of other categories are ignored. DIR appears only once every crop is written.
"""
import argparse
import math
import os
import shutil
import sys
import xml.etree.ElementTree as ET

from PIL import Image
from tqdm import tqdm

from lib import cli
from lib.data import DatasetError

CATEGORIES = (
    "coca_cola_glass_bottle", "coffee_mate_french_vanilla", "honey_bunches_of_oats_honey_roasted", "hunts_sauce",
    "mahatma_rice", "nature_valley_soft_baked_oatmeal_squares_cinnamon_brown_sugar",
    "nature_valley_sweet_and_salty_nut_almond", "palmolive_orange", "pop_secret_light_butter", "pringles_bbq",
    "red_bull",
)
# The GMU Kitchens dataset's three folds: (train scenes, test scenes).
FOLDS = {
    1: ((1, 3, 6, 7, 8, 9), (2, 4, 5)),
    2: ((1, 2, 4, 5, 7, 8), (3, 6, 9)),
    3: ((2, 3, 4, 5, 6, 9), (1, 7, 8)),
}


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gmu", required=True, help="the folder holding gmu_scene_001 ... gmu_scene_009")
    p.add_argument("--out", required=True, help="the Kitchen-HC folder to create (must not exist)")
    p.add_argument("--fold", type=int, default=1, choices=sorted(FOLDS),
                   help="the dataset's scene split; 1 trains on scenes 1,3,6,7,8,9 and tests on 2,4,5")
    p.add_argument("--size", type=int, default=32, help="side of the square crops (the paper: 32); 0 keeps each box's size")
    args = p.parse_args(argv)
    if args.size < 0:
        p.error(f"--size must be 0 or positive, got {args.size}")
    cli.input_folder(p, "--gmu", args.gmu, "the folder holding gmu_scene_001 ... gmu_scene_009")
    if not os.path.exists(args.out):  # main refuses one that exists, for callers that skip parse_args too
        cli.output_folder(p, "--out", args.out)
    return args


def scene_frames(gmu, scene):
    """[(annotation path, image path)] of one scene, in frame-name order."""
    folder = os.path.join(gmu, f"gmu_scene_{scene:03d}")
    notes, images = os.path.join(folder, "Annotations"), os.path.join(folder, "Images")
    for path in (folder, notes, images):
        if not os.path.isdir(path):
            raise DatasetError(f"{path} not found; --gmu is the folder of the extracted gmu_scene_00N folders "
                               f"of the GMU Kitchens dataset")
    frames = []
    for name in sorted(os.listdir(notes)):
        if name.endswith(".xml"):
            image = os.path.join(images, name[:-4] + ".png")
            if not os.path.isfile(image):
                raise DatasetError(f"{os.path.join(notes, name)} has no image {image}")
            frames.append((os.path.join(notes, name), image))
    return frames


def number(obj, tag, path):
    text = obj.findtext(f"bndbox/{tag}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: object {obj.findtext('name')!r} has no numeric bndbox/{tag} "
                           f"(got {text!r})") from None


def read_objects(path):
    """[(category name, (xmin, ymin, xmax, ymax))] of a VOC file, coordinates as written (1-based)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"{path} is not valid XML ({e})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{path} is not a PASCAL VOC annotation (root element <{root.tag}>)")
    return [((obj.findtext("name") or "").strip(), tuple(number(obj, t, path) for t in ("xmin", "ymin", "xmax", "ymax")))
            for obj in root.iter("object")]


def pixel_box(box, width, height):
    """VOC's 1-based inclusive box -> PIL's 0-based (left, top, right, bottom), right/bottom exclusive,
    clamped to the image; None when nothing of it is left."""
    def rounded(v):  # float coordinates to the nearest pixel, halves up
        return math.floor(v + 0.5)
    left, top = max(0, rounded(box[0]) - 1), max(0, rounded(box[1]) - 1)
    right, bottom = min(width, rounded(box[2])), min(height, rounded(box[3]))
    return (left, top, right, bottom) if right > left and bottom > top else None


def crop_frame(note, image_path, size):
    """The crops [(category, PIL image)] of one frame, and the counts of ignored and empty boxes."""
    objects = read_objects(note)
    try:
        with Image.open(image_path) as img:
            frame = img.convert("RGB")
    except OSError as e:
        raise DatasetError(f"{image_path} is not a readable image ({e})") from None
    crops, ignored, empty = [], [], 0
    for name, box in objects:
        if name not in CATEGORIES:
            ignored.append(name)
            continue
        box = pixel_box(box, *frame.size)
        if box is None:
            empty += 1
            continue
        crop = frame.crop(box)
        crops.append((name, crop.resize((size, size), Image.BICUBIC) if size else crop))
    return crops, ignored, empty


def write_crops(tmp, split, scene, note, crops, counts):
    frame = os.path.splitext(os.path.basename(note))[0]
    for k, (name, crop) in enumerate(crops):
        crop.save(os.path.join(tmp, split, name, f"scene{scene}_{frame}_{k}.png"))
        counts[split][name] += 1


def print_summary(counts, ignored, empty, out):
    width = max(len(c) for c in CATEGORIES)
    print(f"{'category':<{width}}  {'train':>6}  {'test':>6}")
    for name in CATEGORIES:
        print(f"{name:<{width}}  {counts['train'][name]:>6}  {counts['test'][name]:>6}")
    print(f"{'total':<{width}}  {sum(counts['train'].values()):>6}  {sum(counts['test'].values()):>6}")
    others = ", ".join(sorted(set(ignored))[:5]) + (", ..." if len(set(ignored)) > 5 else "")
    print(f"ignored {len(ignored)} objects of other categories" + (f" ({others})" if ignored else "")
          + f"; skipped {empty} boxes with nothing inside the image; wrote {out}")
    for split in counts:
        for name in CATEGORIES:
            if not counts[split][name]:  # an ImageFolder refuses an empty class folder
                print(f"warning: {split}/{name} holds no crops; add images there or remove the category "
                      f"from both splits before training", file=sys.stderr)


def main(args):
    # ---- data: every frame of the fold's scenes, checked before anything is written
    if not os.path.isdir(args.gmu):
        raise DatasetError(f"--gmu {args.gmu} does not exist; download the GMU Kitchens dataset "
                           f"(cs.gmu.edu/~robot/gmu-kitchens.html) and extract its gmu_scene_00N folders there")
    if os.path.exists(args.out):
        raise DatasetError(f"{args.out} already exists; remove it or choose another --out")
    train_scenes, test_scenes = FOLDS[args.fold]
    jobs = [(split, scene, note, image) for split, scenes in (("train", train_scenes), ("test", test_scenes))
            for scene in scenes for note, image in scene_frames(args.gmu, scene)]

    # ---- work: crops into a temporary folder next to --out, renamed when complete
    out = os.path.normpath(args.out)
    tmp = f"{out}.tmp-{os.getpid()}"
    counts = {split: dict.fromkeys(CATEGORIES, 0) for split in ("train", "test")}
    ignored, empty = [], 0
    try:
        for split in counts:
            for name in CATEGORIES:
                os.makedirs(os.path.join(tmp, split, name))
        for split, scene, note, image in tqdm(jobs, desc="frames", unit="frame", dynamic_ncols=True):
            crops, skipped_names, skipped_empty = crop_frame(note, image, args.size)
            write_crops(tmp, split, scene, note, crops, counts)
            ignored += skipped_names
            empty += skipped_empty
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    # ---- output
    print_summary(counts, ignored, empty, out)


if __name__ == "__main__":
    cli.run_main(main, parse_args())
