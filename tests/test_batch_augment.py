"""lib/batch_augment.py against its references: each op against torchvision's functional op (or
PIL's, for the blur and the PIL crop) on the same image with the same parameters, and the random
draws against the loader path (train_transform's ops and their get_params) over a few thousand draws."""
import itertools
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.stats import ks_2samp
from torchvision import transforms
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.transforms import functional as TF

from lib import batch_augment as ba
from lib.augment import ERASING, RECIPES, Erasing, train_transform
from lib.data import dataset_info

N = 3000  # draws per distribution test, every generator seeded: each test gives the same numbers every run
# Two-sample KS statistic, N vs N draws of one distribution: above 0.05 with p = 0.001, above 0.06
# with p ~ 5e-5. The wrong rules tried (a uniform aspect ratio, one try, another probability or
# sigma range) give 0.07 to 0.9.
KS_BOUND = 0.06
CIFAR = dataset_info("cifar10")


def uint8_images(b, c, h, w, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (b, c, h, w)).astype(np.uint8))


def to_pil(img):
    """uint8 [C,H,W] -> an "RGB" or "L" PIL image."""
    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def pil_to_float(img):
    return TF.to_tensor(img)  # [C,H,W] in [0,1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- each op

@pytest.mark.parametrize("channels", [3, 1])
def test_colour_ops_are_torchvisions(channels):
    x = uint8_images(6, channels, 12, 10).float() / 255
    factor = torch.tensor([0.0, 0.6, 0.93, 1.0, 1.25, 1.4])
    for op, theirs in [(ba.BRIGHTNESS, TF.adjust_brightness), (ba.CONTRAST, TF.adjust_contrast),
                       (ba.SATURATION, TF.adjust_saturation)]:
        out = ba.blend(x, torch.full((6,), op), factor)
        for k in range(len(x)):
            torch.testing.assert_close(out[k], theirs(x[k], factor[k].item()), atol=1e-6, rtol=0)
    shift = torch.tensor([-0.4, -0.1, -0.013, 0.0, 0.25, 0.5])
    out = ba.hue(x, shift)
    for k in range(len(x)):  # HSV and back in float32
        torch.testing.assert_close(out[k], TF.adjust_hue(x[k], shift[k].item()), atol=1e-5, rtol=0)


def test_grayscale_is_torchvisions_and_only_where_drawn():
    x = uint8_images(3, 3, 9, 7).float() / 255
    on = torch.tensor([True, False, True])
    out = ba.grayscale(x, on)
    for k in range(3):
        ref = TF.rgb_to_grayscale(x[k], num_output_channels=3) if on[k] else x[k]
        torch.testing.assert_close(out[k], ref, atol=1e-7, rtol=0)
    grey = uint8_images(2, 1, 9, 7).float() / 255
    assert torch.equal(ba.grayscale(grey, torch.tensor([True, True])), grey)


@pytest.mark.parametrize("channels", [3, 1])
def test_jitter_applies_each_images_own_order(channels):
    """Per image, the four ops in its permutation's order (the order matters: brightness then
    contrast differs from the reverse once the clamp bites), only where the coin says so, only the
    ops the recipe enables: all 24 orders, with hue at every place."""
    orders = torch.tensor(list(itertools.permutations(range(4))))  # [24,4]
    x = uint8_images(48, channels, 8, 8, seed=3).float() / 255
    order = torch.cat([orders, orders])
    g = gen(3)
    factors = torch.stack([0.6 + 0.8 * torch.rand(48, generator=g) for _ in range(3)]
                          + [0.8 * torch.rand(48, generator=g) - 0.4], 1)
    on = torch.rand(48, generator=g) < 0.8
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for enabled in ([True] * 4, [True, False, True, False]):
        out = ba.jitter(x, order, factors, on, enabled)
        for k in range(48):
            ref = x[k]
            for index in order[k].tolist() if on[k] else []:
                ref = ops[index](ref, factors[k, index].item()) if enabled[index] else ref
            torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)
    reversed_order = ba.jitter(x, order.flip(1), factors, on, [True] * 4)
    assert (reversed_order - ba.jitter(x, order, factors, on, [True] * 4)).abs().amax() > 0.05


BOXES = [  # image h, w; box i, j, h, w; output size
    (40, 30, 3, 2, 20, 25, 16),   # shrink
    (40, 30, 10, 5, 5, 7, 16),    # enlarge: the box's edge pixels must not blend with their neighbours
    (32, 32, 0, 0, 32, 32, 32),   # the whole image at its own size: unchanged
    (24, 40, 0, 9, 24, 22, 32),   # non-square image, enlarge one way
]


@pytest.mark.parametrize("flip", [False, True])
def test_crop_resize_is_resized_crop_on_tensors(flip):
    for H, W, i, j, h, w, size in BOXES:
        x = uint8_images(1, 3, H, W, seed=H + W).float() / 255
        box = [torch.tensor([float(v)]) for v in (i, j, h, w)]
        out = ba.resample(x, *box, torch.tensor([flip]), size)[0]
        ref = TF.resized_crop(x[0], i, j, h, w, [size, size], antialias=False)
        ref = TF.hflip(ref) if flip else ref
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def smooth_image(h, w):
    """uint8 [3,h,w] with detail no finer than ~16 px: waves and a ramp."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    waves = [127.5 + 127.5 * torch.sin(2 * torch.pi * (x + 2 * y) / 35),
             127.5 + 127.5 * torch.cos(2 * torch.pi * y / 16), 8 * x]
    return torch.stack(waves).round().clamp(0, 255).to(torch.uint8)


def test_crop_resize_against_the_pil_path():
    """PIL's bilinear resize rounds to uint8 and, when it shrinks, averages every source pixel under
    an output pixel (grid_sample reads the 4 nearest). Enlarging or keeping the size (every crop of
    an image stored at the training size): within 1/255 on noise. Shrinking up to 2.5x an image with
    no detail finer than 16 px: within 5/255 on average, 20/255 at most (on noise it is ~15/255 on
    average: the antialiasing difference, documented in lib/batch_augment.py)."""
    for H, W, i, j, h, w, size in BOXES + [(40, 30, 0, 0, 40, 30, 16)]:
        shrink = h > size or w > size
        img = smooth_image(H, W) if shrink else uint8_images(1, 3, H, W, seed=H + W)[0]
        box = [torch.tensor([float(v)]) for v in (i, j, h, w)]
        out = ba.resample(img[None].float() / 255, *box, torch.tensor([False]), size)[0]
        ref = pil_to_float(TF.resized_crop(to_pil(img), i, j, h, w, [size, size]))
        diff = (out - ref).abs() * 255
        if shrink:
            assert diff.mean() <= 5 and diff.max() <= 20, (H, W, i, j, h, w, diff.mean(), diff.max())
        else:
            assert diff.max() <= 1.0, (H, W, i, j, h, w, diff.max())


@pytest.mark.parametrize("channels,side", [(3, 32), (1, 8), (3, 12)])
def test_blur_is_pils_gaussian_blur_of_radius_sigma(channels, side):
    """PIL rounds to uint8 after each of its six box passes: within 3/255 per pixel, 1.2/255 on
    average. A sampled Gaussian kernel would be ~10/255 off on average at sigma 0.3 (it barely blurs)."""
    img = uint8_images(1, channels, side, side, seed=side)
    x = img.float() / 255
    for sigma in (0.1, 0.3, 0.5, 0.9, 1.3, 2.0):
        out = ba.blur(x, torch.tensor([sigma]), torch.tensor([True]), sigma_max=2.0)[0]
        ref = pil_to_float(to_pil(img[0]).filter(ImageFilter.GaussianBlur(radius=sigma)))
        diff = (out - ref).abs() * 255
        assert diff.max() <= 3 and diff.mean() <= 1.2, (sigma, diff.max(), diff.mean())
    unblurred = ba.blur(x, torch.tensor([1.0]), torch.tensor([False]), sigma_max=2.0)
    assert torch.equal(unblurred, x)


def test_normalise_and_erase_are_torchvisions_exactly():
    x = uint8_images(2, 3, 10, 12).float() / 255
    mean, std = torch.tensor(CIFAR.mean), torch.tensor(CIFAR.std)
    out = ba.normalise(x, mean, std)
    for k in range(2):
        assert torch.equal(out[k], TF.normalize(x[k], CIFAR.mean, CIFAR.std))
    i, j, h, w = (torch.tensor(v, dtype=torch.float) for v in ([2, 0], [3, 5], [4, 10], [0, 7]))
    on = torch.tensor([True, True])
    erased = ba.erase(out, i, j, h, w, on, 0.5)
    for k in range(2):
        ref = TF.erase(out[k], int(i[k]), int(j[k]), int(h[k]), int(w[k]), torch.tensor(0.5))
        assert torch.equal(erased[k], ref)
    assert torch.equal(ba.erase(out, i, j, h, w, ~on, 0.5), out)


def test_pipeline_is_the_ops_in_the_recipes_order():
    """The whole call, image by image, against torchvision's functional ops applied in the order of
    train_transform with the parameters BatchAugment drew (the blur: ours, held to PIL's above)."""
    for name, channels in [("default", 3), ("default-imagenet", 3), ("aug-plus", 3), ("aug-plus", 1)]:
        recipe = RECIPES[name]
        mean, std = CIFAR.mean[:channels], CIFAR.std[:channels]
        aug = ba.BatchAugment(recipe, ERASING, mean, std, 16)
        images = uint8_images(24, channels, 20, 18, seed=5)
        p = aug.draw(24, 20, 18, gen(1), torch.device("cpu"))
        out = aug.apply(images, p)
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for k in range(24):
            x = TF.resized_crop(images[k].float() / 255, int(p["i"][k]), int(p["j"][k]), int(p["h"][k]),
                                int(p["w"][k]), [16, 16], antialias=False)

            def jitter(x):
                for index in p["order"][k].tolist() if p["jitter_on"][k] else []:
                    x = ops[index](x, p["factors"][k, index].item())
                return x

            def grey(x):
                return TF.rgb_to_grayscale(x, 3) if p["grey_on"][k] and channels == 3 else x

            x = jitter(grey(x)) if recipe.grayscale_first else grey(jitter(x))
            if recipe.blur_p > 0:
                x = ba.blur(x[None], p["sigma"][k:k + 1], p["blur_on"][k:k + 1], recipe.blur_sigma[1])[0]
            x = TF.hflip(x) if p["flip"][k] else x
            x = TF.normalize(x, mean, std)
            if p["erase_on"][k]:
                x = TF.erase(x, int(p["ei"][k]), int(p["ej"][k]), int(p["eh"][k]), int(p["ew"][k]), torch.tensor(0.0))
            torch.testing.assert_close(out[k], x, atol=2e-4, rtol=0, msg=f"{name} image {k}")


# ----------------------------------------------------------------------------- the draws

def loader_ops(recipe, erasing=False, size=32):
    """train_transform's ops for recipe at size, by class name."""
    ops = {}
    for op in train_transform(CIFAR, recipe, erasing, image_size=size).transforms:
        inner = op.transforms[0] if isinstance(op, transforms.RandomApply) else op
        ops[type(inner).__name__] = op
    return ops


def ks(a, b):
    """The two-sample Kolmogorov-Smirnov distance (the statistic only: no p-value, so no exact method)."""
    return ks_2samp(np.asarray(a, dtype=float), np.asarray(b, dtype=float), method="asymp").statistic


# (10, 60): mostly the fallback; a wide ratio range tells a log-uniform aspect from a uniform one.
@pytest.mark.parametrize("height,width,ratio", [(32, 32, None), (24, 40, None), (10, 60, None), (32, 32, (0.2, 5.0))])
def test_crop_boxes_are_random_resized_crops(height, width, ratio):
    crop = loader_ops(RECIPES["default"])["RandomResizedCrop"]
    ratio = ratio or crop.ratio
    torch.manual_seed(0)
    theirs = np.array([crop.get_params(torch.empty(1, height, width), crop.scale, ratio) for _ in range(N)])
    i, j, h, w = (v.numpy() for v in ba.crop_boxes(gen(0), N, height, width, crop.scale, ratio, "cpu"))
    ours = np.stack([i, j, h, w], 1).astype(np.int64)  # whole numbers, compared as torchvision's ints
    area = lambda b: b[:, 2] * b[:, 3] / (height * width)
    log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])
    for name, stat in [("area", area), ("log aspect", log_aspect), ("i", lambda b: b[:, 0]), ("j", lambda b: b[:, 1])]:
        d = ks(stat(ours), stat(theirs))
        assert d < KS_BOUND, (name, d)
    assert (ours[:, 2] <= height).all() and (ours[:, 3] <= width).all() and (ours >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all()


@pytest.mark.parametrize("height,width", [(32, 32), (4, 32)])  # 4 x 32: many tries fail, some draws all 10
def test_erase_boxes_are_random_erasings(height, width):
    e = ERASING
    torch.manual_seed(0)
    img = torch.empty(3, height, width)
    theirs = []
    for _ in range(N):
        i, j, h, w, v = transforms.RandomErasing.get_params(img, e.scale, e.ratio, [e.value])
        theirs.append((v is not img, i, j, h, w))
    theirs = np.array(theirs, dtype=float)
    ours = np.stack([v.numpy() for v in ba.erase_boxes(gen(0), N, height, width, e.scale, e.ratio, "cpu")], 1)
    found = ours[:, 0].mean(), theirs[:, 0].mean()
    assert abs(found[0] - found[1]) < 0.03, found
    ours, theirs = ours[ours[:, 0] == 1], theirs[theirs[:, 0] == 1]
    for column in (1, 2, 3, 4):
        d = ks(ours[:, column], theirs[:, column])
        assert d < KS_BOUND, ("ijhw"[column - 1], d)


def test_jitter_draws_are_color_jitters():
    """Factors and the op order of ColorJitter.get_params, for aug-plus's ranges (hue 0.1)."""
    recipe = RECIPES["aug-plus"]
    cj = loader_ops(recipe)["ColorJitter"].transforms[0]
    torch.manual_seed(0)
    theirs = [cj.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue) for _ in range(N)]
    p = ba.BatchAugment(recipe, None, CIFAR.mean, CIFAR.std, 8).draw(N, 8, 8, gen(0), "cpu")
    for index in range(4):
        d = ks(p["factors"][:, index], [t[index + 1] for t in theirs])
        assert d < KS_BOUND, (index, d)
        first = (p["order"][:, 0] == index).float().mean().item(), np.mean([t[0][0].item() == index for t in theirs])
        assert abs(first[0] - first[1]) < 0.04, (index, first)
    # and a whole permutation: how often op 0 comes before op 1 and op 2 before op 3
    position = p["order"].argsort(1)
    before = [(position[:, a] < position[:, b]).float().mean().item() for a, b in ((0, 1), (2, 3))]
    assert abs(before[0] - 0.5) < 0.04 and abs(before[1] - 0.5) < 0.04, before


def view_pairs(recipe, image, erasing=False, info=CIFAR):
    """N views of one uint8 image [C,H,W] from the loader path (train_transform on the PIL image, its
    generators seeded) and from BatchAugment (one batch), both [N,C,size,size]."""
    size = image.shape[-1]
    torch.manual_seed(0)
    random.seed(0)
    loader = train_transform(info, recipe, erasing, image_size=size)
    pil = to_pil(image)
    theirs = torch.stack([loader(pil) for _ in range(N)])
    aug = ba.BatchAugment(recipe, erasing, info.mean, info.std, size)
    ours = aug(image[None].expand(N, -1, -1, -1), gen(0))
    return ours, theirs


def only(*kept):
    """aug-plus with every op off but those named (their settings kept), the crop the whole image."""
    off = dict(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, flip_p=0.0)
    for name in kept:
        off.pop(name)
    return replace(RECIPES["aug-plus"], crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **off)


def pixels(v):
    """Undo the normalisation: [N,3,H,W] -> [N,3,H,W] in [0,1]."""
    return v * torch.tensor(CIFAR.std).view(1, 3, 1, 1) + torch.tensor(CIFAR.mean).view(1, 3, 1, 1)


def fractions_agree(ours, theirs, tol=0.05):  # N = 3000: binomial sd of the difference <= 0.013
    ours, theirs = ours.float().mean().item(), theirs.float().mean().item()
    assert abs(ours - theirs) < tol, (ours, theirs)


GRADIENT = torch.arange(8, dtype=torch.uint8).mul(30).expand(3, 8, 8).clone()  # green, blue: brighter to the right
GRADIENT[0] = 255 - GRADIENT[0]  # red the other way: a colour image


def test_flipped_fraction_is_the_loaders():
    ours, theirs = view_pairs(only("flip_p"), GRADIENT)
    flipped = lambda v: (v[:, 1, :, 0] > v[:, 1, :, -1]).all(1)
    fractions_agree(flipped(ours), flipped(theirs))


def test_greyed_fraction_is_the_loaders():
    ours, theirs = view_pairs(only("grayscale_p"), GRADIENT)
    grey = lambda v: pixels(v).std(1).amax((1, 2)) < 1e-5
    fractions_agree(grey(ours), grey(theirs))


def test_jittered_fraction_is_the_loaders():
    ours, theirs = view_pairs(only("jitter_p"), GRADIENT)
    changed = lambda v: (pixels(v) - GRADIENT / 255).abs().amax((1, 2, 3)) > 1.5 / 255  # PIL rounds
    fractions_agree(changed(ours), changed(theirs))


def test_blurred_fraction_and_sigma_are_the_loaders():
    # Stripes 4 px wide: how much the blur dims them grows with sigma all the way to 2.
    stripes = (torch.arange(16) // 4 % 2 * 255).to(torch.uint8).expand(3, 16, 16).clone()
    ours, theirs = view_pairs(only("blur_p"), stripes)
    blur_amount = lambda v: (pixels(v) - stripes / 255).abs().mean((1, 2, 3))
    fractions_agree(blur_amount(ours) > 1.5 / 255, blur_amount(theirs) > 1.5 / 255)
    d = ks(blur_amount(ours), blur_amount(theirs))
    assert d < KS_BOUND, ("blur amount", d)


@pytest.mark.parametrize("side", [32, 8])
def test_erased_area_is_the_loaders(side):
    white = torch.full((3, side, side), 255, dtype=torch.uint8)  # normalised: every pixel > 0
    ours, theirs = view_pairs(only(), white, erasing=Erasing(p=0.7))
    erased = lambda v: (v == 0).all(1).float().mean((1, 2))
    fractions_agree(erased(ours) > 0, erased(theirs) > 0)
    d = ks(erased(ours), erased(theirs))
    assert d < KS_BOUND, ("erased area", d)


# ----------------------------------------------------------------------------- the call

@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("batch", [1, 5])
def test_shapes_determinism_and_no_global_draws(channels, batch):
    info = dataset_info("digits" if channels == 1 else "cifar10")
    aug = ba.BatchAugment(RECIPES["aug-plus"], ERASING, info.mean, info.std, 12)
    images = uint8_images(batch, channels, 15, 11)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    out = aug(images, gen(7))
    assert out.shape == (batch, channels, 12, 12) and out.dtype == torch.float32 and out.device == images.device
    assert torch.isfinite(out).all()
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert torch.equal(out, aug(images, gen(7)))
    assert not torch.equal(out, aug(images, gen(8)))


class OpLog(TorchDispatchMode):
    """Records the name of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_a_call_never_waits_for_the_device():
    """No op that copies a value to the host (.item(), bool(), nonzero, masked indexing) and no
    tensor built from Python data, once the first call has put mean and std on the device: on a
    GPU each would stall the step until the device caught up."""
    aug = ba.BatchAugment(RECIPES["aug-plus"], ERASING, CIFAR.mean, CIFAR.std, 16)
    images = uint8_images(4, 3, 20, 20)
    aug(images, gen(0))
    with OpLog() as log:
        aug(images, gen(0))
    assert not log.ops & {"aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.lift_fresh",
                          "aten.masked_select", "aten.index"}, log.ops
    with OpLog() as log:  # the log sees them
        torch.tensor([1.0, 2.0])[images[0, 0, 0, :2] > 1].sum().item()
    assert {"aten._local_scalar_dense", "aten.lift_fresh", "aten.index"} <= log.ops


def test_wrong_images_are_refused_and_autocast_is_ignored():
    aug = ba.BatchAugment(RECIPES["aug-plus"], ERASING, CIFAR.mean, CIFAR.std, 8)
    for bad in (uint8_images(2, 3, 8, 8).float(), uint8_images(2, 1, 8, 8), uint8_images(1, 3, 8, 8)[0]):
        with pytest.raises(ValueError, match="uint8 images"):
            aug(bad, gen(0))
    images = uint8_images(4, 3, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(images, gen(0))
    assert out.dtype == torch.float32 and torch.equal(out, aug(images, gen(0)))


def test_grey_images_skip_hue_saturation_and_grayscale():
    """On a 1-channel image only the crop, brightness, contrast, blur, flip and erasing act."""
    recipe = replace(RECIPES["aug-plus"], jitter=(0.0, 0.0, 0.4, 0.4), grayscale_p=1.0, blur_p=0.0, flip_p=0.0,
                     crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    info = dataset_info("digits")
    images = uint8_images(4, 1, 8, 8)
    out = ba.BatchAugment(recipe, None, info.mean, info.std, 8)(images, gen(0))
    for k in range(4):
        assert torch.equal(out[k], TF.normalize(images[k].float() / 255, info.mean, info.std))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_in_cuda_out():
    aug = ba.BatchAugment(RECIPES["aug-plus"], ERASING, CIFAR.mean, CIFAR.std, 32)
    images = uint8_images(64, 3, 32, 32).cuda()
    out = aug(images, torch.Generator(device="cuda").manual_seed(0))
    assert out.device == images.device and out.shape == (64, 3, 32, 32)
    assert torch.equal(out, aug(images, torch.Generator(device="cuda").manual_seed(0)))
