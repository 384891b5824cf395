"""Every augmentation recipe against its source, written out here op for op as the source script
writes it: under the same seeds both must return the same tensors, draw after draw."""
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms

from lib.augment import ERASING, RECIPES, Erasing, Recipe, recipe_for, train_transform
from lib.augment import test_transform as eval_transform  # a test_* name would be collected
from lib.data import dataset_info
from lib.linear import probe_transform

CIFAR_NORM = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_NORM = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


class SourceBlur:
    """GaussianBlur of MoCo's moco/loader.py (and of the CLD authors' copies)."""

    def __init__(self, sigma=[.1, 2.]):
        self.sigma = sigma

    def __call__(self, x):
        sigma = random.uniform(self.sigma[0], self.sigma[1])
        return x.filter(ImageFilter.GaussianBlur(radius=sigma))


# The CLD authors' datasets/dataloader.py, get_dataloader, 'cifar' / 'kitchen' / 'stl' branches.
def authors_default(size, normalize):
    return [transforms.RandomResizedCrop(size=size, scale=(0.2, 1.)),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize]


def authors_aug_plus(size, normalize):
    return [transforms.RandomResizedCrop(size=size, scale=(0.2, 1.)),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            transforms.RandomApply([SourceBlur([.1, 2.])], p=0.5),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize]


# The CLD authors' main_imagenet_moco_cld.py without --aug-plus (MoCo v1's, as MoCo's main_moco.py).
def authors_imagenet_default():
    return [transforms.RandomResizedCrop(224, scale=(0.2, 1.)),
            transforms.RandomGrayscale(p=0.2),
            transforms.ColorJitter(0.4, 0.4, 0.4, 0.4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            IMAGENET_NORM]


def with_erasing(ops):
    return ops + [transforms.RandomErasing(p=1.0)]  # dataloader.py's add_erasing


def image(channels, size, seed=1, width=None):
    rng = np.random.RandomState(seed)
    shape = (size, width or size) + ((3,) if channels == 3 else ())
    return Image.fromarray(rng.randint(0, 256, size=shape).astype(np.uint8))


def draws(transform, img, n, seed=0):
    """n outputs of transform on img, every generator a source op may draw from seeded alike."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return [transform(img) for _ in range(n)]


def same(a, b):
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


# (dataset, image channels, image side, draws): RGB 32 px, grey 8 px, STL-10's 96 px.
SMALL = [("cifar10", 3, 32, 60), ("digits", 1, 8, 60), ("kitchen-hc", 3, 32, 20), ("stl10", 3, 96, 10)]


def source_normalize(name):
    info = dataset_info(name)
    if name == "stl10":  # dataloader.py's 'stl' branch
        return transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if info.channels == 1:  # no source: the authors never trained on grey images (our choice)
        return transforms.Normalize(info.mean, info.std)
    return CIFAR_NORM


@pytest.mark.parametrize("name,channels,side,n", SMALL)
@pytest.mark.parametrize("erasing", [False, True])
def test_default_is_the_authors_small_image_recipe(name, channels, side, n, erasing):
    info = dataset_info(name)
    ops = authors_default(side, source_normalize(name))
    source = transforms.Compose(with_erasing(ops) if erasing else ops)
    img = image(channels, side)
    assert same(draws(train_transform(info, "default", erasing), img, n), draws(source, img, n))


@pytest.mark.parametrize("name,channels,side,n", SMALL)
@pytest.mark.parametrize("erasing", [False, True])
def test_aug_plus_is_the_authors_and_moco_v2s(name, channels, side, n, erasing):
    info = dataset_info(name)
    ops = authors_aug_plus(side, source_normalize(name))
    source = transforms.Compose(with_erasing(ops) if erasing else ops)
    img = image(channels, side)
    assert same(draws(train_transform(info, "aug-plus", erasing), img, n), draws(source, img, n))


@pytest.mark.parametrize("recipe,source_ops", [("default", authors_imagenet_default),
                                               ("aug-plus", lambda: authors_aug_plus(224, IMAGENET_NORM))])
def test_imagenet_recipes(recipe, source_ops):
    img = image(3, 60, width=80)
    for name in ("imagenet", "imagenet100"):
        ours = train_transform(dataset_info(name), recipe)
        assert same(draws(ours, img, 8), draws(transforms.Compose(source_ops()), img, 8))


class SourceConvBlur:
    """GaussianBlur(22) of the authors' datasets/infomin_datasets.py, written as they build it: two
    nn.Conv2d layers (23 x 1, then 1 x 23) behind nn.ReflectionPad2d(11), sigma from numpy."""

    def __init__(self, kernel_size=22):
        radius = kernel_size // 2
        self.k, self.r = 2 * radius + 1, radius
        self.blur_h = torch.nn.Conv2d(3, 3, kernel_size=(self.k, 1), bias=False, groups=3)
        self.blur_v = torch.nn.Conv2d(3, 3, kernel_size=(1, self.k), bias=False, groups=3)
        self.blur = torch.nn.Sequential(torch.nn.ReflectionPad2d(radius), self.blur_h, self.blur_v)

    def __call__(self, img):
        img = transforms.ToTensor()(img).unsqueeze(0)
        sigma = np.random.uniform(0.1, 2.0)
        x = np.arange(-self.r, self.r + 1)
        x = np.exp(-np.power(x, 2) / (2 * sigma * sigma))
        x = torch.from_numpy(x / x.sum()).view(1, -1).repeat(3, 1)
        self.blur_h.weight.data.copy_(x.view(3, 1, self.k, 1))
        self.blur_v.weight.data.copy_(x.view(3, 1, 1, self.k))
        with torch.no_grad():
            img = self.blur(img).squeeze()
        return transforms.ToPILImage()(img)


def authors_infomin_d():
    """build_transforms(aug='D', modal='RGB', use_memory_bank=False) of the authors' infomin_datasets.py;
    RandAugment from timm, the implementation their datasets/RandAugment.py copies."""
    from timm.data.auto_augment import rand_augment_transform
    ra_params = dict(translate_const=int(224 * 0.45), img_mean=tuple(min(255, round(255 * x)) for x in (0.485, 0.456, 0.406)))
    return [transforms.RandomResizedCrop(224, scale=(0.2, 1.)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomApply([transforms.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            transforms.RandomApply([SourceConvBlur(22)], p=0.5),
            rand_augment_transform('rand-n{}-m{}-mstd0.5'.format(2, 10), ra_params),
            transforms.RandomGrayscale(p=0.2),
            transforms.ToTensor(),
            IMAGENET_NORM]


def test_infomin_recipe_is_the_authors_augmentation_d():
    img = image(3, 60, width=80)
    ours = draws(train_transform(dataset_info("imagenet"), "infomin"), img, 12)
    assert same(ours, draws(transforms.Compose(authors_infomin_d()), img, 12))
    mocov2 = [op for op in authors_infomin_d()]
    mocov2[2] = transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)
    assert not same(ours, draws(transforms.Compose(mocov2), img, 12))   # the comparison can fail


def test_infomin_recipe_runs_on_small_grey_images():
    for name, side in (("digits", 8), ("fashion-mnist", 28)):
        out = draws(train_transform(dataset_info(name), "infomin"), image(1, side), 10)
        assert all(x.shape == (1, side, side) and torch.isfinite(x).all() for x in out)


def test_parity_catches_a_different_blur_or_order():
    """The comparison above is not vacuous: the blur this project once used (torchvision's, a 3 px
    kernel at 32 px, sigma drawn from torch) and MoCo v1's colour order both change the tensors."""
    info, img = dataset_info("cifar10"), image(3, 32)
    ours = draws(train_transform(info, "aug-plus"), img, 40)
    old = authors_aug_plus(32, CIFAR_NORM)
    old[3] = transforms.RandomApply([transforms.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.5)
    assert not same(ours, draws(transforms.Compose(old), img, 40))
    swapped = authors_default(32, CIFAR_NORM)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    assert not same(draws(train_transform(info, "default"), img, 40), draws(transforms.Compose(swapped), img, 40))


def test_blur_reach_does_not_depend_on_image_size():
    """One bright pixel blurred at sigma 2 spreads as far on a 64 px image as on a 16 px one."""
    blur = RECIPES["aug-plus"]
    recipe = Recipe(source="test", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter=(0, 0, 0, 0),
                    grayscale_p=0.0, blur_p=1.0, blur_sigma=(2.0, 2.0), flip_p=0.0)
    assert blur.blur_sigma == (0.1, 2.0) and blur.blur_p == 0.5
    reach = []
    for side in (16, 64):
        pixels = np.zeros((side, side), np.uint8)
        pixels[side // 2, side // 2] = 255
        info = dataset_info("digits")
        out = train_transform(info, recipe, image_size=side)(Image.fromarray(pixels))[0]
        row = out[side // 2] > out.min()  # [side] pixels the blur reached
        reach.append(int(row.sum()))
    assert reach[0] == reach[1] > 3


def test_recipe_for_picks_by_training_size():
    assert recipe_for("default", 224) is recipe_for("default", 97) is RECIPES["default-imagenet"]
    assert recipe_for("default", 96) is recipe_for("default", 8) is RECIPES["default"]
    assert recipe_for("aug-plus", 224) is recipe_for("aug-plus", 32) is RECIPES["aug-plus"]
    with pytest.raises(ValueError, match="aug-plus"):
        recipe_for("strong", 32)
    # The authors' Kitchen-HC folder read as an image folder at 32 px gets their Kitchen-HC pipeline.
    img = image(3, 40, width=50)
    ours = train_transform(dataset_info("imagefolder"), "default", image_size=32)
    norm = transforms.Normalize(dataset_info("imagefolder").mean, dataset_info("imagefolder").std)
    assert same(draws(ours, img, 20), draws(transforms.Compose(authors_default(32, norm)), img, 20))


def test_erasing_params():
    info, img = dataset_info("cifar10"), image(3, 32)
    assert ERASING == Erasing(p=1.0, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0)
    never = train_transform(info, "default", Erasing(p=0.0))
    assert same(draws(never, img, 5), draws(transforms.Compose(authors_default(32, CIFAR_NORM) + [
        transforms.RandomErasing(p=0.0)]), img, 5))


# ----------------------------------------------------------------------------- evaluation transforms

def test_test_transform_is_the_sources():
    cases = [  # dataset, image, the source's transform
        ("cifar10", image(3, 32), [transforms.ToTensor(), CIFAR_NORM]),  # dataloader.py transform_test
        ("stl10", image(3, 96), [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]),
        ("kitchen-hc", image(3, 45, width=37), [transforms.Resize((32, 32), interpolation=2), transforms.ToTensor(),
                                                 CIFAR_NORM]),
        ("imagenet", image(3, 300, width=260), [transforms.Resize(256), transforms.CenterCrop(224),  # main_lincls.py
                                                transforms.ToTensor(), IMAGENET_NORM]),
    ]
    for name, img, ops in cases:
        assert torch.equal(eval_transform(dataset_info(name))(img), transforms.Compose(ops)(img)), name


def test_probe_transform_is_the_sources():
    # MoCo's main_lincls.py (shipped by the CLD authors too) above 96 px.
    big = image(3, 120, width=150)
    source = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), IMAGENET_NORM])
    assert same(draws(probe_transform(dataset_info("imagenet"), 224), big, 10), draws(source, big, 10))
    # LDAM-DRW's cifar_train.py transform_train at 32 px; grey 8 px pads by 1 (our choice).
    for name, side, pad in (("cifar10", 32, 4), ("digits", 8, 1)):
        info = dataset_info(name)
        norm = CIFAR_NORM if name == "cifar10" else transforms.Normalize(info.mean, info.std)
        source = transforms.Compose([transforms.RandomCrop(side, padding=pad), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), norm])
        img = image(info.channels, side)
        assert same(draws(probe_transform(info, side), img, 40), draws(source, img, 40)), name
