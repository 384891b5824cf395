"""Augmentations: every recipe written once, as data, then built into torchvision ops.

A Recipe records what one source script does (crop, colour ops and their order, blur, flip) and
train_transform builds from it the pipeline that script builds, op for op, so that under the same
seeds both return the same tensors; tests/test_augment.py holds each recipe against its source
written out literally. The torchvision ops draw from torch's generator; the blur draws its sigma
from Python's `random`, as the GaussianBlur class of MoCo's moco/loader.py (copied by the CLD
authors into models/loader.py and datasets/dataloader.py) does.
"""
import random
from dataclasses import dataclass, replace

from PIL import ImageFilter
from torchvision import transforms

from lib.infomin_aug import KernelBlur, rand_augment


@dataclass(frozen=True)
class Recipe:
    """One training augmentation. The ops run in `order`; by default RandomResizedCrop, the colour pair
    (ColorJitter then RandomGrayscale, or the reverse with grayscale_first), the blur, the solarisation,
    the flip; then always ToTensor and Normalize with the dataset's mean and std."""
    source: str                            # the script and branch this recipe copies
    crop_scale: tuple = (0.2, 1.0)         # RandomResizedCrop: area of the crop / area of the image
    crop_ratio: tuple = (3 / 4, 4 / 3)     # and its aspect ratio range (torchvision's default)
    jitter: tuple = (0.4, 0.4, 0.4, 0.4)   # ColorJitter brightness, contrast, saturation, hue
    jitter_p: float = 1.0                  # RandomApply probability; 1: plain ColorJitter, no extra draw
    grayscale_p: float = 0.2               # RandomGrayscale
    grayscale_first: bool = False          # RandomGrayscale before ColorJitter (MoCo v1's order)
    blur_p: float = 0.0                    # RandomApply probability of the blur; 0: no blur op
    blur_sigma: tuple = (0.1, 2.0)         # sigma ~ U(lo, hi) from Python's random, used as the radius
    # of PIL's ImageFilter.GaussianBlur (the Gaussian's standard deviation in pixels, whatever the
    # image size; PIL approximates it with three box blurs)
    flip_p: float = 0.5                    # RandomHorizontalFlip
    solarize_p: float = 0.0                # RandomSolarize after the blur, pixels >= 128 inverted; 0: no op
    blur_kernel: int = 0                   # 0: the PIL blur above; k > 0: a k-tap Gaussian conv (lib/infomin_aug.py)
    randaugment: str = ""                  # timm's rand_augment_transform config string; "": none
    # The op order, by name: "colour" is the jitter/grayscale pair in the order grayscale_first says,
    # "jitter" and "grey" place them one by one. "blur", "solarize" and "randaugment" are left out when unset.
    order: tuple = ("crop", "colour", "blur", "solarize", "flip")


@dataclass(frozen=True)
class Erasing:
    """RandomErasing on the normalised tensor, after every other op."""
    p: float = 1.0
    scale: tuple = (0.02, 0.33)            # erased area / image area (torchvision's default)
    ratio: tuple = (0.3, 3.3)              # aspect ratio of the erased box (torchvision's default)
    value: float = 0.0


# The CLD authors' training transforms. Their CIFAR / STL-10 / Kitchen-HC loader
# (datasets/dataloader.py, get_dataloader) and their ImageNet script (main_imagenet_moco_cld.py)
# agree on aug-plus but order the default recipe's colour ops differently.
RECIPES = {
    # NPID's own cifar.py has these ops too but with the flip commented out.
    "default": Recipe(source="CLD authors' datasets/dataloader.py, get_dataloader without aug_plus "
                             "(CIFAR, STL-10, Kitchen-HC)"),
    "default-imagenet": Recipe(grayscale_first=True,
                               source="CLD authors' main_imagenet_moco_cld.py without --aug-plus: MoCo v1's "
                                      "(MoCo's main_moco.py, NPID's main.py)"),
    "aug-plus": Recipe(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, blur_p=0.5,
                       source="CLD authors' datasets/dataloader.py and main_imagenet_moco_cld.py with "
                              "aug_plus: MoCo v2's (MoCo's main_moco.py --aug-plus)"),
    # InfoMin's augmentation "D" (the CLD authors' datasets/infomin_datasets.py, build_transforms,
    # which --method CLD selects in utils/infomin_base_options.py); the crop scale 0.2 is their value for
    # the MoCo queue (0.08 with a memory bank). The blur is their GaussianBlur(22): 23 taps.
    "infomin": Recipe(jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, blur_p=0.5, blur_kernel=23,
                      randaugment="rand-n2-m10-mstd0.5",
                      order=("crop", "flip", "jitter", "blur", "randaugment", "grey"),
                      source="CLD authors' datasets/infomin_datasets.py, build_transforms, aug 'D' (InfoMin's)"),
}
# BYOL's asymmetric pair (Grill et al. 2020, Appendix B): one recipe per view, the same except
# for the blur (always / 10%) and the solarisation (never / 20%). Their blur draws sigma from [0.1, 2.0]
# like MoCo v2's. BYOL flips right after the crop; here the flip follows the solarisation, which draws
# views from the same distribution.
BYOL_VIEW = Recipe(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2,
                   source="BYOL (Grill et al. 2020), Appendix B")
VIEW_RECIPES = {
    "byol": (replace(BYOL_VIEW, blur_p=1.0, solarize_p=0.0), replace(BYOL_VIEW, blur_p=0.1, solarize_p=0.2)),
}
# --erasing: datasets/dataloader.py appends transforms.RandomErasing(p=1.0) to either recipe.
ERASING = Erasing()
AUG_NAMES = ("default", "aug-plus", "byol", "infomin")


def recipe_for(name, size):
    """The Recipe that the augmentation `name` ("default", "aug-plus" or "infomin") means at a training size.

    Above 96 px (ImageNet, ImageNet-100, image folders at their 224 px) it follows the authors'
    ImageNet script, at 96 px and below their CIFAR / STL-10 / Kitchen-HC loader (also for an image
    folder trained at 32 px, such as their Kitchen-HC release): the same threshold as test_transform.
    Grey datasets (digits, Fashion-MNIST), which the authors never trained on, take the small-image
    recipe (our choice): on an "L" image the hue and saturation jitter and the grayscale op change
    nothing. "infomin" is the same at every size (the authors only ran it at 224 px).
    """
    if name not in AUG_NAMES:
        raise ValueError(f"unknown augmentation recipe {name!r}; choose one of {', '.join(AUG_NAMES)}")
    if name in VIEW_RECIPES:
        raise ValueError(f"{name!r} is a recipe per view; use view_recipes")
    if name == "default" and size > 96:
        return RECIPES["default-imagenet"]
    return RECIPES[name]


def view_recipes(name, size):
    """The Recipes of the views, in view order: a pair for an asymmetric recipe (byol), else the one
    Recipe of recipe_for for every view."""
    if name in VIEW_RECIPES:
        return VIEW_RECIPES[name]
    return (recipe_for(name, size),)


class RadiusBlur:
    """PIL's Gaussian blur of radius sigma ~ U(lo, hi), sigma drawn from Python's `random`:
    the GaussianBlur of MoCo's moco/loader.py."""

    def __init__(self, sigma):
        self.sigma = tuple(sigma)

    def __call__(self, img):
        sigma = random.uniform(self.sigma[0], self.sigma[1])
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self):
        return f"RadiusBlur(sigma={self.sigma})"


def colour_ops(recipe):
    jitter = transforms.ColorJitter(*recipe.jitter)
    if recipe.jitter_p < 1:
        jitter = transforms.RandomApply([jitter], p=recipe.jitter_p)
    grey = transforms.RandomGrayscale(p=recipe.grayscale_p)
    return [grey, jitter] if recipe.grayscale_first else [jitter, grey]


def recipe_ops(r, size, info):
    """name -> the ops that name stands for in Recipe.order."""
    jitter, grey = colour_ops(replace(r, grayscale_first=False))
    ops = {"crop": [transforms.RandomResizedCrop(size, scale=r.crop_scale, ratio=r.crop_ratio)],
           "colour": colour_ops(r), "jitter": [jitter], "grey": [grey],
           "flip": [transforms.RandomHorizontalFlip(p=r.flip_p)], "blur": [], "solarize": [], "randaugment": []}
    if r.blur_p > 0:
        blur = KernelBlur(r.blur_kernel, r.blur_sigma) if r.blur_kernel else RadiusBlur(r.blur_sigma)
        ops["blur"] = [transforms.RandomApply([blur], p=r.blur_p)]
    if r.solarize_p > 0:
        ops["solarize"] = [transforms.RandomSolarize(128, p=r.solarize_p)]
    if r.randaugment:
        ops["randaugment"] = [rand_augment(r.randaugment, size, info.mean)]
    return ops


def train_transform(info, recipe="default", erasing=False, image_size=None):
    """PIL image -> augmented, normalised tensor [C,size,size].

    recipe: an augmentation name (see recipe_for) or a Recipe; erasing: True for ERASING, or an
    Erasing. A 1-channel "L" image stays 1-channel throughout.
    """
    size = image_size or info.image_size
    r = recipe if isinstance(recipe, Recipe) else recipe_for(recipe, size)
    ops = recipe_ops(r, size, info)
    steps = [op for name in r.order for op in ops[name]]
    steps += [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    if erasing:
        e = erasing if isinstance(erasing, Erasing) else ERASING
        steps.append(transforms.RandomErasing(p=e.p, scale=e.scale, ratio=e.ratio, value=e.value))
    return transforms.Compose(steps)


def test_transform(info, image_size=None):
    """PIL image -> normalised tensor [C,size,size], no randomness.

    At most 96 px: resize to exactly size x size. An image stored at that size comes out untouched
    (PIL returns a copy when asked for its own size), so CIFAR and STL-10 get the authors'
    ToTensor + Normalize only, and Kitchen-HC their Resize((32, 32)) (bilinear), all from
    datasets/dataloader.py. Larger: MoCo's main_lincls.py validation transform, which the CLD
    authors ship too: resize the short side to size*256/224, then the central size x size crop.
    """
    size = image_size or info.image_size
    if size <= 96:
        resize = [transforms.Resize((size, size))]
    else:
        resize = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    to_tensor = [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    return transforms.Compose(resize + to_tensor)


def view_transforms(info, name, erasing=False, image_size=None):
    """One train_transform per recipe of view_recipes(name): what MultiView takes."""
    size = image_size or info.image_size
    return [train_transform(info, r, erasing, size) for r in view_recipes(name, size)]


class MultiView:
    """Applies one random transform n times to the same image, in turn: n independent views, drawn
    in the order of the authors' TwoCropsTransform / ThreeCropsTransform (models/loader.py). Given a
    list of transforms, view i takes transform i (cycling): BYOL's asymmetric pair. Then `extra`, if
    given, once more (InfoMin's jigsaw tiles, drawn after the crops as in the authors'
    datasets/infomin_datasets.py)."""

    def __init__(self, transform, n, extra=None):
        self.transform = transform
        self.n = n
        self.extra = extra

    def __call__(self, img):
        if isinstance(self.transform, (list, tuple)):
            views = [self.transform[i % len(self.transform)](img) for i in range(self.n)]
        else:
            views = [self.transform(img) for _ in range(self.n)]  # n tensors [C,H,W]
        return views + [self.extra(img)] if self.extra is not None else views

    def __repr__(self):
        return f"MultiView(n={self.n}, {self.transform!r}" + (f", extra={self.extra!r})" if self.extra else ")")
