"""The pieces of InfoMin's augmentation that torchvision lacks: the convolution blur, RandAugment with
magnitude noise, and the jigsaw tiles (the CLD authors' datasets/infomin_datasets.py and
datasets/RandAugment.py, which --method CLD of their main_imagenet_infomin_cld.py uses)."""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms
from torchvision.transforms.functional import to_pil_image, to_tensor


class KernelBlur:
    """A Gaussian blur as a separable `kernel`-tap convolution over a reflection-padded image, sigma ~
    U(lo, hi) pixels from numpy's generator; the result goes back to an 8-bit PIL image (truncated, as
    ToPILImage does). The authors' GaussianBlur(22), i.e. 23 taps, in datasets/infomin_datasets.py.
    On an image smaller than the kernel's reach the radius shrinks to side - 1, the most that reflection
    padding allows (our choice; the authors only blur 224 px crops)."""

    def __init__(self, kernel, sigma=(0.1, 2.0)):
        self.radius, self.sigma = kernel // 2, tuple(sigma)

    def __call__(self, img):
        x = to_tensor(img)[None]                                          # [1, C, H, W] in [0, 1]
        sigma = np.random.uniform(self.sigma[0], self.sigma[1])
        r = min(self.radius, min(x.shape[-2:]) - 1)
        taps = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
        taps = torch.from_numpy(taps / taps.sum()).float()                # [2r + 1]
        c = x.shape[1]
        x = F.pad(x, (r, r, r, r), mode="reflect")
        x = F.conv2d(x, taps.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)   # along the height
        x = F.conv2d(x, taps.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)   # then the width
        return to_pil_image(x[0])

    def __repr__(self):
        return f"KernelBlur(taps={2 * self.radius + 1}, sigma={self.sigma})"


def rand_augment(config, size, mean):
    """RandAugment as timm's rand_augment_transform builds it from `config` (e.g. "rand-n2-m10-mstd0.5":
    2 ops per image, magnitude 10 with Gaussian noise of std 0.5, clipped to [0, 10]). The authors'
    datasets/RandAugment.py is a copy of this implementation (Ross Wightman's); timm keeps the same 15
    ops, level mappings, op probability 0.5 and draws. Fill: the dataset mean in 8-bit (theirs: ImageNet's);
    translate_const: 45% of the side (theirs int(224 * 0.45); the relative translations ignore it)."""
    from timm.data.auto_augment import rand_augment_transform  # imported here: only this recipe needs timm
    fill = tuple(min(255, round(255 * m)) for m in mean)
    hparams = dict(translate_const=int(size * 0.45), img_mean=fill if len(fill) > 1 else fill[0])
    return rand_augment_transform(config, hparams)


@dataclass(frozen=True)
class Jigsaw:
    """The jigsaw input of the authors' build_transforms: RandomResizedCrop to `side` px with `scale`,
    a flip, then a grid x grid lattice of cells, one tile x tile crop at a random place in each.
    These are their values at a 224 px training size; JigsawTiles scales side and tile with the
    training size (our choice: they only train at 224 px)."""
    grid: int = 3
    side: int = 255
    tile: int = 64
    scale: tuple = (0.6, 1.0)


JIGSAW = Jigsaw()


class JigsawCrop:
    """PIL image (side x side) -> grid * grid PIL tiles, row by row. Cell (i, j) spans rows i*cell ..
    and columns j*cell .. with cell = side // grid; its tile starts at a random offset in
    [0, cell - tile] down and across, the row offsets of all cells drawn first, then the column
    offsets (numpy's generator), as the authors' JigsawCrop."""

    def __init__(self, grid, side, tile):
        self.grid, self.tile, self.cell = grid, tile, side // grid
        if self.cell < tile:
            raise ValueError(f"jigsaw tiles of {tile} px do not fit cells of {self.cell} px")

    def __call__(self, img):
        n = self.grid * self.grid
        down = np.random.randint(0, self.cell - self.tile + 1, n)
        across = np.random.randint(0, self.cell - self.tile + 1, n)
        tiles = []
        for i in range(n):
            top, left = (i // self.grid) * self.cell + down[i], (i % self.grid) * self.cell + across[i]
            tiles.append(img.crop((left, top, left + self.tile, top + self.tile)))
        return tiles


class JigsawTiles:
    """PIL image -> normalised tiles [grid * grid, C, tile, tile]: InfoMin's jigsaw input."""

    def __init__(self, info, size, jigsaw=JIGSAW):
        side, tile = round(jigsaw.side * size / 224), max(1, round(jigsaw.tile * size / 224))
        self.crop = transforms.Compose([transforms.RandomResizedCrop(side, scale=jigsaw.scale),
                                        transforms.RandomHorizontalFlip(),
                                        JigsawCrop(jigsaw.grid, side, tile)])
        self.to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])

    def __call__(self, img):
        return torch.stack([self.to_tensor(t) for t in self.crop(img)])

    def __repr__(self):
        return f"JigsawTiles({self.crop!r})"
