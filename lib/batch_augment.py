"""Augmentation of a whole batch on its own device, as tensor ops (no loop over images).

BatchAugment reads the same Recipe / Erasing data (lib/augment.py) that train_transform builds the
PIL pipeline from, and samples every random parameter by torchvision's rules: RandomResizedCrop's
and RandomErasing's get_params (10 tries, first accepted, same fallbacks), ColorJitter's factor
ranges and random op order, the RandomApply / RandomGrayscale / RandomHorizontalFlip coins, and the
blur radius sigma ~ U(blur_sigma). Every draw comes from the generator passed in, never from the
global generators, so a step re-seeded alike replays exactly; no draw is copied to the host.

Where it differs from the PIL path (tests/test_batch_augment.py holds each op to its reference):
- Pixels stay float32 in [0, 1] from the start; PIL rounds to uint8 after every op.
- Crop + resize is one bilinear grid_sample over the crop box, which is F.resized_crop on a tensor
  with antialias=False (to ~1e-6). Enlarging, it is PIL's bilinear resize but for PIL's rounding
  (within 1/255). Shrinking, PIL widens its filter to every source pixel under an output pixel (an
  antialiasing filter) while grid_sample reads the 2x2 nearest ones, so shrunk crops are sharper
  here: a 2.5x shrink differs by ~4/255 on average on an image without detail finer than 16 px, by
  ~15/255 on pixel noise. The crop box is at most the image, so this only happens to images stored
  larger than the training size (ImageNet), never to CIFAR, STL-10 or Kitchen-HC at their size.
  Image folders, whose files are decoded on the device, crop with lib/folder_device.py instead:
  F.resized_crop(antialias=True), PIL's filter, then BatchAugment.after_crop's ops, the same as here.
- The colour ops are torchvision's functional tensor ops (luma 0.2989, 0.587, 0.114; contrast
  blends with the exact mean grey; hue shifts in HSV), which differ from PIL's ImageEnhance, its
  "L" conversion (luma 0.299, 0.587, 0.114 in integer arithmetic) and its uint8 HSV by rounding.
- The blur is PIL's own Gaussian approximation, not a sampled Gaussian kernel: three passes per axis
  of a box of fractional radius chosen so that its variance is sigma^2 (Pillow's BoxBlur.c,
  after Gwosdek et al. 2011), edge pixels repeated beyond the image as Pillow does (and unlike
  reflection, for any image size). A sampled Gaussian exp(-t^2 / 2 sigma^2) would hardly blur
  below sigma ~0.5 (a fifth of U(0.1, 2)'s draws), where PIL's does. What is left is PIL's uint8
  rounding after each of its six passes: within 3/255 per pixel, ~1/255 on average.
"""
import math

import torch
import torch.nn.functional as F

from lib.augment import ERASING, Erasing, Recipe

LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2)
BLUR_PASSES = 3                # PIL's ImageFilter.GaussianBlur: three box blurs per axis
TRIES = 10                     # RandomResizedCrop and RandomErasing try 10 boxes


def uniform(generator, shape, lo, hi, device):
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def randint_below(generator, n, device):
    """One integer ~ U{0, ..., n-1} per entry of n ([B] float, n >= 1) -> [B] float."""
    u = torch.rand(n.shape, generator=generator, device=device)
    return torch.minimum(torch.floor(u * n), n - 1)  # u * n may round up to n in float32


def first_accepted(ok, *values):
    """ok [B,T] bool, values [B,T] -> (any [B] bool, each value at the first True try, [B])."""
    first = ok.int().argmax(1, keepdim=True)  # argmax returns the first of equal maxima; 0 if none
    return (ok.any(1), *(v.gather(1, first)[:, 0] for v in values))


# ----------------------------------------------------------------------------- geometry

def crop_boxes(generator, n, height, width, scale, ratio, device):
    """RandomResizedCrop.get_params for n images at once -> i, j, h, w: [n] float.

    height, width: ints (every image that size: the arrays), or [n] float tensors on device (each image
    its own size: the decoded files of an image folder). Each try: area ~ U(scale) * image area, log
    aspect (w/h) ~ U(log ratio); accepted when the rounded box fits. Without an accepted try, the
    central crop of the image clamped to the ratio range (a fixed box)."""
    area = uniform(generator, (n, TRIES), scale[0], scale[1], device) * per_try(height * width)
    aspect = torch.exp(uniform(generator, (n, TRIES), math.log(ratio[0]), math.log(ratio[1]), device))
    w = torch.round(torch.sqrt(area * aspect))  # [n,T]; round half to even, as Python's round
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= per_try(width)) & (h > 0) & (h <= per_try(height))
    found, h, w = first_accepted(ok, h, w)
    fh, fw = fallback_box(height, width, ratio)
    h = torch.where(found, h, fh if torch.is_tensor(fh) else torch.full_like(h, fh))
    w = torch.where(found, w, fw if torch.is_tensor(fw) else torch.full_like(w, fw))
    i = torch.where(found, randint_below(generator, height - h + 1, device), (height - h) // 2)
    j = torch.where(found, randint_below(generator, width - w + 1, device), (width - w) // 2)
    return i, j, h, w


def per_try(value):
    """An image's number beside its [n, TRIES] draws: a [n] tensor as a column, a plain number as it is."""
    return value[:, None] if torch.is_tensor(value) else value


def fallback_box(height, width, ratio):
    """(h, w) of RandomResizedCrop's fallback: the whole image, narrowed to the ratio range. Plain numbers,
    or for [n] tensors of sizes [n] tensors of the same dtype (worked out in float64, as Python does)."""
    if torch.is_tensor(height):
        h, w = height.double(), width.double()
        aspect = w / h
        fh = torch.where(aspect < min(ratio), torch.round(w / min(ratio)), h)
        fw = torch.where(aspect > max(ratio), torch.round(h * max(ratio)), w)
        return fh.to(height.dtype), fw.to(width.dtype)
    in_ratio = width / height
    if in_ratio < min(ratio):
        return round(width / min(ratio)), width
    if in_ratio > max(ratio):
        return height, round(height * max(ratio))
    return height, width


def resample(x, i, j, h, w, flip, size):
    """x [B,C,H,W] float, box rows i..i+h-1 and columns j..j+w-1 ([B] each), flip [B] bool
    -> [B,C,size,size]: each box resized to size x size, bilinear, mirrored left-right where flip.

    Output pixel k samples the box at (k + 0.5) * box / size - 0.5 (pixel centres), clamped to the
    box's edge pixels: what F.interpolate(align_corners=False) does to the cropped tensor in
    F.resized_crop. The clamp is why the grid is built here rather than by affine_grid: an affine
    grid on the whole image would let an enlarged box's edge pixels blend with pixels outside it.
    Mirroring the grid is the same as mirroring the output, so the flip costs nothing here."""
    B, C, H, W = x.shape
    t = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # [size]
    ys = i[:, None] + t * h[:, None] - 0.5  # [B,size] source rows
    xs = j[:, None] + t * w[:, None] - 0.5  # [B,size] source columns
    ys = torch.minimum(torch.maximum(ys, i[:, None]), (i + h - 1)[:, None])
    xs = torch.minimum(torch.maximum(xs, j[:, None]), (j + w - 1)[:, None])
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    gx = (2 * xs + 1) / W - 1  # grid_sample's coordinates (align_corners=False): -1, 1 = outer edges
    gy = (2 * ys + 1) / H - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [B,size,size,2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ----------------------------------------------------------------------------- colour
# x: [B,C,H,W] float in [0,1], C = 1 or 3; factor: [B]. A grey image has no hue or saturation,
# so those ops leave it alone (as torchvision does for tensors and PIL for "L" images).

def grey(x):
    """[B,3,H,W] -> [B,1,H,W] luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)[:, None]


BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # ColorJitter's op indices (its fn_idx)


def blend(x, op, factor):
    """Brightness, contrast or saturation, each image its own: x blended by factor with its black,
    its mean grey or its grey image (torchvision's adjust_brightness / _contrast / _saturation).
    x [B,C,H,W], op [B] in 0..2, factor [B] -> [B,C,H,W]."""
    g = grey(x) if x.shape[1] == 3 else x  # [B,1,H,W]
    op = op.view(-1, 1, 1, 1)
    other = torch.where(op == BRIGHTNESS, 0.0, torch.where(op == CONTRAST, g.mean((1, 2, 3), keepdim=True), g))
    f = factor.view(-1, 1, 1, 1)
    return torch.addcmul((1 - f) * other, f, x).clamp_(0, 1)  # f * x + (1 - f) * other


def hue(x, shift):
    """Rotate the hue by shift (a fraction of the colour circle, [B]) in HSV."""
    if x.shape[1] == 1:
        return x
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb((h + shift.view(-1, 1, 1)) % 1.0, s, v)


def rgb_to_hsv(x):
    """[B,3,H,W] -> h, s, v: [B,H,W] each, h in [0,1)."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    chroma = v - x.amin(1)
    s = chroma / torch.where(v > 0, v, torch.ones_like(v))
    c = torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # grey: any hue, s = 0 hides it
    h = torch.where(v == r, ((g - b) / c) % 6, torch.where(v == g, (b - r) / c + 2, (r - g) / c + 4))
    return h / 6, s, v


def hsv_to_rgb(h, s, v):
    """h, s, v: [B,H,W] -> [B,3,H,W]. Channel n is v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6."""
    n = (5 - 2 * torch.arange(3, device=h.device, dtype=h.dtype)).view(1, 3, 1, 1)  # 5, 3, 1: r, g, b
    k = (n + 6 * h[:, None]) % 6
    return v[:, None] - (v * s)[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def jitter(x, order, factors, on, enabled):
    """ColorJitter per image: order [B,4] a permutation of the op indices, factors [B,4] (indexed
    by op), on [B] bool, enabled: which ops the recipe jitters at all (a 0 in Recipe.jitter turns
    one off, as ColorJitter's None does).

    The loops are over the places of the order, not over images: at each place every image gets
    the op its own permutation puts there. Hue, the costly op, runs once for the whole batch: first
    every image's blends before its hue, then its hue, then its blends after it."""
    hue_at = (order == HUE).int().argmax(1)  # [B] the place of hue in each order
    for place in range(3):
        x = blend_at(x, order[:, place], factors, on & (place < hue_at), enabled)
    if enabled[HUE]:
        x = torch.where(on.view(-1, 1, 1, 1), hue(x, factors[:, HUE]), x)
    for place in range(1, 4):
        x = blend_at(x, order[:, place], factors, on & (place > hue_at), enabled)
    return x


def blend_at(x, op, factors, on, enabled):
    """The blend op [B] (never hue here) with its factor, where on [B] and the op is enabled; the
    other images get factor 1, which returns them exactly (1 * x + 0 * other, x already in [0,1])."""
    allowed = torch.zeros_like(on)
    for index in (BRIGHTNESS, CONTRAST) + ((SATURATION,) if x.shape[1] == 3 else ()):
        if enabled[index]:
            allowed = allowed | (op == index)
    factor = factors.gather(1, op.clamp(max=SATURATION)[:, None])[:, 0]
    return blend(x, op, torch.where(on & allowed, factor, 1.0))


def grayscale(x, on):
    """RandomGrayscale: luma in all three channels where on [B]; a grey image stays as it is."""
    if x.shape[1] == 1:
        return x
    return torch.where(on.view(-1, 1, 1, 1), grey(x).expand_as(x), x)


# ----------------------------------------------------------------------------- blur

def box_radius(sigma, passes=BLUR_PASSES):
    """Pillow's _gaussian_blur_radius: the box radius l + a (l integer, 0 <= a < 1) whose `passes`
    repetitions have variance sigma^2 -> l, a: tensors like sigma."""
    var = sigma ** 2 / passes
    length = torch.sqrt(12 * var + 1) if torch.is_tensor(var) else math.sqrt(12 * var + 1)
    l = (length - 1) // 2
    a = (2 * l + 1) * (l * (l + 1) - 3 * var) / (6 * (var - (l + 1) ** 2))
    return l, a


def box_taps(sigma, on, reach):
    """[B] sigma, [B] on -> [B, 2*reach+1] weights of one box pass: 1 inside radius l, a at l+1,
    normalised by 2(l+a)+1; a single 1 in the middle (no blur) where not on."""
    l, a = box_radius(sigma)
    t = torch.arange(-reach, reach + 1, device=sigma.device).abs()  # [K]
    l, a = l[:, None], a[:, None]
    taps = torch.where(t <= l, 1.0, torch.where(t == l + 1, a, 0.0)) / (2 * (l + a) + 1)
    return torch.where(on[:, None], taps, (t == 0).to(taps.dtype))


def box_pass(x, taps, dim):
    """One box pass along dim (-1: rows, -2: columns) with edge pixels repeated beyond the image,
    as Pillow's box blur does: x [B,C,H,W], taps [B,K] -> [B,C,H,W], one grouped convolution."""
    B, C, H, W = x.shape
    K = taps.shape[1]
    reach = (K - 1) // 2
    kernel = taps.repeat_interleave(C, 0)  # [B*C,K]: each channel its image's taps
    if dim == -1:
        xp, kernel = F.pad(x, (reach, reach, 0, 0), mode="replicate"), kernel.view(B * C, 1, 1, K)
    else:
        xp, kernel = F.pad(x, (0, 0, reach, reach), mode="replicate"), kernel.view(B * C, 1, K, 1)
    return F.conv2d(xp.reshape(1, B * C, *xp.shape[2:]), kernel, groups=B * C).view(B, C, H, W)


def blur(x, sigma, on, sigma_max):
    """PIL's GaussianBlur(radius=sigma) per image: x [B,C,H,W], sigma [B] pixels, on [B] bool."""
    reach = int(box_radius(sigma_max)[0]) + 1  # the widest box the recipe can draw
    taps = box_taps(sigma, on, reach)
    for dim in (-1, -2):
        for _ in range(BLUR_PASSES):
            x = box_pass(x, taps, dim)
    return x


# ----------------------------------------------------------------------------- tensor ops

def solarize(x, on):
    """torchvision's RandomSolarize(128) where on [B]: pixels >= 128 inverted. On float pixels in [0, 1]:
    x >= 128/255 -> 1 - x (PIL inverts the uint8 values, 255 - v, after rounding its blur's output)."""
    return torch.where(on.view(-1, 1, 1, 1) & (x >= 128 / 255), 1 - x, x)


def normalise(x, mean, std):
    """x [B,C,H,W], mean/std [C] -> (x - mean) / std per channel."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def erase_boxes(generator, n, height, width, scale, ratio, device):
    """RandomErasing.get_params for n images at once -> found [n] bool, i, j, h, w [n] float.

    Each try: area ~ U(scale) * image area, log aspect (h/w) ~ U(log ratio); accepted when the
    rounded box is smaller than the image both ways. Without an accepted try nothing is erased."""
    area = uniform(generator, (n, TRIES), scale[0], scale[1], device) * (height * width)
    aspect = torch.exp(uniform(generator, (n, TRIES), math.log(ratio[0]), math.log(ratio[1]), device))
    h = torch.round(torch.sqrt(area * aspect))  # [n,T]
    w = torch.round(torch.sqrt(area / aspect))
    found, h, w = first_accepted((h < height) & (w < width), h, w)
    i = randint_below(generator, height - h + 1, device)
    j = randint_below(generator, width - w + 1, device)
    return found, i, j, h, w


def erase(x, i, j, h, w, on, value):
    """x [B,C,H,W]: rows i..i+h-1, columns j..j+w-1 set to value where on [B]."""
    B, C, H, W = x.shape
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    in_rows = (rows >= i[:, None]) & (rows < (i + h)[:, None])  # [B,H]
    in_cols = (cols >= j[:, None]) & (cols < (j + w)[:, None])  # [B,W]
    inside = on.view(-1, 1, 1) & in_rows[:, :, None] & in_cols[:, None, :]  # [B,H,W]
    return torch.where(inside[:, None], torch.full_like(x, value), x)


# ----------------------------------------------------------------------------- the recipe

def covers(recipe):
    """Whether BatchAugment implements every op of `recipe`: not the RandAugment, the convolution blur or
    the other op orders of InfoMin's recipe (lib/infomin_aug.py), which only the loader path has."""
    return not recipe.randaugment and not recipe.blur_kernel and recipe.order == Recipe.order

class BatchAugment:
    """A Recipe (and optional Erasing) applied to a batch: uint8 [B,C,H,W] -> float32 [B,C,size,size].

    The ops run in the recipe's order: crop, colour pair, blur, solarisation, flip, normalise, erasing. The flip
    is folded into the crop's sampling grid: the colour ops act on each pixel alone and the blur is
    symmetric with symmetric edges, so mirroring first gives the same image."""

    def __init__(self, recipe, erasing, mean, std, size):
        self.recipe = recipe
        self.erasing = erasing if isinstance(erasing, Erasing) else (ERASING if erasing else None)
        self.mean, self.std = tuple(mean), tuple(std)
        self.size = size
        self._moments = {}
        b, c, s, hue_ = recipe.jitter
        # ColorJitter's ranges; a 0 turns the op off (torchvision then draws no factor for it).
        self.jitter_ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c),
                              (max(0.0, 1 - s), 1 + s), (-hue_, hue_)]
        self.jitter_enabled = [v != 0 for v in recipe.jitter]

    def draw(self, n, height, width, generator, device):
        """Every random parameter for n images, as tensors on device -> dict. height, width: the images'
        size, ints, or [n] float tensors on device where each image has its own (see crop_boxes)."""
        r, g = self.recipe, generator
        p = {}
        p["i"], p["j"], p["h"], p["w"] = crop_boxes(g, n, height, width, r.crop_scale, r.crop_ratio, device)
        p["jitter_on"] = torch.rand(n, generator=g, device=device) < r.jitter_p
        p["order"] = torch.rand(n, 4, generator=g, device=device).argsort(1)  # a uniform permutation
        p["factors"] = torch.stack([uniform(g, n, lo, hi, device) for lo, hi in self.jitter_ranges], 1)
        p["grey_on"] = torch.rand(n, generator=g, device=device) < r.grayscale_p
        p["blur_on"] = torch.rand(n, generator=g, device=device) < r.blur_p
        p["sigma"] = uniform(g, n, r.blur_sigma[0], r.blur_sigma[1], device)
        if r.solarize_p > 0:  # drawn only when the recipe has the op: the other recipes' draws stay as they were
            p["solarize_on"] = torch.rand(n, generator=g, device=device) < r.solarize_p
        p["flip"] = torch.rand(n, generator=g, device=device) < r.flip_p
        if self.erasing is not None:
            e = self.erasing
            found, *box = erase_boxes(g, n, self.size, self.size, e.scale, e.ratio, device)
            p["erase_on"] = (torch.rand(n, generator=g, device=device) < e.p) & found
            p["ei"], p["ej"], p["eh"], p["ew"] = box
        return p

    def apply(self, images, p):
        """uint8 [B,C,H,W] and draw()'s parameters -> float32 [B,C,size,size]."""
        x = images.float().div_(255)  # [B,C,H,W] in [0,1], as ToTensor
        x = resample(x, p["i"], p["j"], p["h"], p["w"], p["flip"], self.size)  # [B,C,size,size]
        return self.after_crop(x, p)

    def after_crop(self, x, p):
        """The recipe's ops after the crop: x float32 [B,C,size,size] in [0,1], already cropped, resized
        and flipped as p says (by resample here, by lib/folder_device.py for image files) -> normalised
        float32 [B,C,size,size]. Nothing is drawn here: draw() drew it all."""
        r = self.recipe
        if r.grayscale_first:
            x = grayscale(x, p["grey_on"])
        x = jitter(x, p["order"], p["factors"], p["jitter_on"], self.jitter_enabled)
        if not r.grayscale_first:
            x = grayscale(x, p["grey_on"])
        if r.blur_p > 0:
            x = blur(x, p["sigma"], p["blur_on"], r.blur_sigma[1])
        if r.solarize_p > 0:
            x = solarize(x, p["solarize_on"])
        x = normalise(x, *self.moments(x.device))
        if self.erasing is not None:
            x = erase(x, p["ei"], p["ej"], p["eh"], p["ew"], p["erase_on"], self.erasing.value)
        return x

    def moments(self, device):
        """mean, std as [C] tensors on device, copied there once (a copy per step would wait)."""
        if device not in self._moments:
            self._moments[device] = (torch.tensor(self.mean, device=device), torch.tensor(self.std, device=device))
        return self._moments[device]

    def __call__(self, images, generator):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(self.mean):
            raise ValueError(f"BatchAugment takes uint8 images [B,{len(self.mean)},H,W] (as many channels as "
                             f"mean and std); got {images.dtype} {list(images.shape)}")
        B, C, H, W = images.shape
        # Pixels stay float32 even inside an autocast region (its conv2d would run in half precision).
        with torch.autocast(images.device.type, enabled=False):
            return self.apply(images, self.draw(B, H, W, generator, images.device))

    def __repr__(self):
        return f"BatchAugment({self.recipe!r}, erasing={self.erasing!r}, size={self.size})"
