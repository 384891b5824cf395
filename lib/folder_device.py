"""Image folders on the training device: DataLoader workers only read each file's bytes; the training process
decodes every image once, on the training device, and builds all of its views there (--data-path device for
the folder datasets; docs/imagenet-device-path.md has the measurements).

  FileBytes      what the workers read: (file, target, index) with file = the raw bytes, whether nvJPEG's
                 batched decoder takes them, and the path (to name it when it cannot be read)
  decode         a batch of files -> uint8 RGB images [3, H_b, W_b] on the device: on CUDA the three-component
                 JPEGs in one batched nvJPEG call (torchvision.io.decode_jpeg, device='cuda'); every other
                 file, and every file on the CPU, through libjpeg-turbo / libpng (torchvision.io.decode_image,
                 PIL's pixels exactly), and what torchvision does not read (BMP, TIFF, ...) through PIL
  crop_resize    every view's box of every image resized to size x size: torchvision's antialiased bilinear
                 resize, as two batched matrix products per group of similar sizes
  FolderBatches  the training batches, (views, indices) per step, drawn as DeviceBatches draws the arrays'
  DeviceTestTransform
                 lib/augment.py's test transform (Resize, then CenterCrop) as one crop_resize per batch

The crop and resize are F.resized_crop(antialias=True) on the decoded tensor, which follows Pillow's resize
(a tent filter widened to every source pixel under an output pixel when shrinking): the views of a
500 x 375 photograph shrunk to 224 px are PIL's but for PIL's rounding to uint8 (tests/test_folder_device.py).
The array path's crop (lib/batch_augment.py resample) does not antialias; its images are stored at the
training size, so its crops only enlarge, where the two filters are the same.
"""
import io
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from lib import signals
from lib.batch_augment import BatchAugment, normalise
from lib.data import DatasetError
from lib.device_data import DeviceBatches, step_seed
from lib.subsets import SubsetDataset

# Groups of images padded to one canvas may hold at most this many times their own pixels (our choice:
# ImageNet's 500 x 375 and 375 x 500 share a 500 x 500 canvas, 1.33 times; a 4000 x 3000 photograph among
# them gets a canvas of its own instead of making every image of the batch 4000 x 4000).
PADDING = 2.0


# ----------------------------------------------------------------------------- the workers: bytes only

class File(NamedTuple):
    data: torch.Tensor     # uint8 [n], the file as stored
    nvjpeg: bool           # whether nvJPEG's batched decode takes it (nvjpeg_takes)
    path: str


class Files(NamedTuple):
    """A batch of File, field by field (what collate returns and pin_memory pins)."""
    data: list
    nvjpeg: list
    paths: list


def collate(items):
    """DataLoader items (File, target, index) -> (Files, targets [B] long, indices [B] long)."""
    files, targets, indices = zip(*items)
    return Files(*(list(field) for field in zip(*files))), torch.tensor(targets), torch.tensor(indices)


class FileBytes(torch.utils.data.Dataset):
    """Items (File, target, index) of a folder dataset (a FolderDataset, or a SubsetDataset of one), with
    nothing decoded. to_device, when given, is what lib/knn.extract_features calls on each batch of files
    (e.g. DeviceTestTransform) to get the images it embeds."""

    def __init__(self, dataset, to_device=None):
        base, rows = (dataset.dataset, dataset.indices) if isinstance(dataset, SubsetDataset) else (dataset, None)
        if not hasattr(base, "samples"):
            raise DatasetError(f"{type(base).__name__} is not read from image files; the folder device path "
                               "serves image folders only")
        self.paths = [base.samples[int(r)][0] for r in (range(len(base.samples)) if rows is None else rows)]
        self.targets = np.asarray(dataset.targets)
        self.num_classes = dataset.num_classes
        self.to_device = to_device
        self.collate = collate

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        data = read_bytes(path)
        return File(torch.from_numpy(data), nvjpeg_takes(memoryview(data)), path), int(self.targets[index]), index


def read_bytes(path):
    """The file's bytes as a writable uint8 array (read straight into it: no second copy)."""
    try:
        with open(path, "rb") as f:
            data = np.empty(os.fstat(f.fileno()).st_size, dtype=np.uint8)
            read = f.readinto(memoryview(data))
    except OSError as e:
        raise DatasetError(f"{path} is not a readable image ({e.strerror or e}); replace or remove it") from None
    return data[:read]  # shorter if the file shrank meanwhile: its decoder then says what is wrong


# Frame markers nvJPEG's batched decode reads (baseline, extended, progressive Huffman) and those it does not
# (lossless, hierarchical, arithmetic coding: libjpeg-turbo reads some of them).
NVJPEG_FRAMES = (0xC0, 0xC1, 0xC2)
OTHER_FRAMES = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
RGB_IDS = (0x52, 0x47, 0x42)  # components named 'R', 'G', 'B': colour stored as RGB, not YCbCr


def nvjpeg_takes(data):
    """Whether a file's bytes are an 8-bit Huffman JPEG of three YCbCr components that ends with its
    end-of-image marker. Everything else (PNG, a grey or CMYK JPEG, an RGB-coded one, a truncated one, whose
    decoding the CPU decoder refuses and names) goes to the CPU decoder: our choice, so that nvJPEG only
    meets the files whose decoding it shares with libjpeg-turbo, and a cut-off file is never decoded into
    grey blocks unnoticed. data: a memoryview of the bytes (indexing it gives ints)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8 or data[n - 2] != 0xFF or data[n - 1] != 0xD9:
        return False
    pos, adobe_rgb = 2, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:          # a fill byte before the marker
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xEE and pos + 16 <= n and bytes(data[pos + 4:pos + 9]) == b"Adobe":
            adobe_rgb = data[pos + 15] == 0  # Adobe's transform flag 0: no YCbCr
        if marker in NVJPEG_FRAMES:
            if pos + 17 > n:
                return False
            ids = (data[pos + 10], data[pos + 13], data[pos + 16])
            return data[pos + 4] == 8 and data[pos + 9] == 3 and ids != RGB_IDS and not adobe_rgb
        if marker in OTHER_FRAMES or marker == 0xDA:  # another coding, or a scan before any frame header
            return False
        pos += 2 + length
    return False


# ----------------------------------------------------------------------------- decoding, in the training process

def quiet(decoder, *args, **kwargs):
    """A torchvision.io decoder called without its DeprecationWarning (torchvision 0.29 points to TorchCodec;
    docs/imagenet-device-path.md)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return decoder(*args, **kwargs)


def decode(files, device):
    """Files -> list of B uint8 RGB images [3, H_b, W_b] on device, in order, each file decoded once."""
    images = [None] * len(files.data)
    gpu = [b for b, ok in enumerate(files.nvjpeg) if ok] if device.type == "cuda" else []
    if gpu:
        for b, image in zip(gpu, nvjpeg_decode([files.data[b] for b in gpu], device)):
            images[b] = image
    for b, image in enumerate(images):
        if image is None:
            images[b] = host_to_device(cpu_decode(files.data[b], files.paths[b]), device)
    return images


def nvjpeg_decode(data, device):
    """One batched nvJPEG call for a list of JPEG byte tensors -> list of [3, H, W] on device. A batch it
    refuses is decoded file by file; a file it refuses on its own gives None (the CPU decoder then reads it,
    or names it)."""
    try:
        return quiet(decode_jpeg, data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        out = []
        for one in data:
            try:
                out.append(quiet(decode_jpeg, one, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


def cpu_decode(data, path):
    """One file's bytes -> uint8 RGB [3, H, W] on the CPU. JPEG and PNG through torchvision (libjpeg-turbo and
    libpng, with PIL's pixels to the bit), any other format and any file torchvision refuses through PIL, as
    the loader path reads it; DatasetError naming the file, with PIL's reason, when PIL cannot read it either."""
    head = bytes(data[:4].tolist())
    if head[:3] == b"\xff\xd8\xff" or head == b"\x89PNG":
        try:
            image = quiet(decode_image, data, mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8 and image.dim() == 3:  # not a 16-bit PNG: PIL says how those convert
                return image
        except RuntimeError:
            pass
    return pil_decode(data, path)


def pil_decode(data, path):
    """PIL's decode and RGB conversion (torchvision's ImageFolder loader), or DatasetError in today's words."""
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
            pixels = np.array(img.convert("RGB"))  # [H, W, 3]
    except UnidentifiedImageError:
        reason = "not an image format PIL recognises"
    except Exception as e:  # PIL's decoders raise OSError, SyntaxError, ValueError, ... for damaged files
        reason = str(e) or type(e).__name__
    else:
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    raise DatasetError(f"{path} is not a readable image ({reason}); replace or remove it")


def host_to_device(tensor, device):
    """A CPU tensor on device without waiting for the device: pinned, then copied asynchronously."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def host_values(values, device, dtype=torch.float32):
    """Numbers known on the host (image sizes, group members) as a tensor on device, without a wait."""
    return host_to_device(torch.tensor(values, dtype=dtype), device)


# ----------------------------------------------------------------------------- crop and resize

def resize_weights(start, length, resized, first, size, extent):
    """torchvision's antialiased bilinear resize (F.resize(antialias=True); aten's _upsample_bilinear2d_aa,
    which follows Pillow's) along one axis, as matrices. Source pixels start..start+length-1 of a canvas
    `extent` pixels long are resized to `resized` pixels, of which positions first..first+size-1 are kept.
    start, length, resized, first: [N] float; size, extent: ints -> [N, size, extent].

    Output position k reads a tent centred at (k + 0.5) * scale in box coordinates (scale = length / resized,
    the pixel-centre convention of align_corners=False), of half-width max(scale, 1) source pixels (shrinking
    widens it to every source pixel under the output pixel: the antialiasing), over the box's pixels only,
    its weights normalised to sum 1: F.resized_crop's resize of the cropped tensor, edges included."""
    device = start.device
    scale = length / resized                                                      # [N]
    inverse = torch.where(scale >= 1, 1 / scale, torch.ones_like(scale))           # 1 / the tent's half-width
    centre = scale[:, None] * (first[:, None] + torch.arange(size, device=device) + 0.5)     # [N, size]
    x = torch.arange(extent, device=device) - start[:, None]                      # [N, extent] box coordinates
    t = (x[:, None, :] - centre[:, :, None] + 0.5) * inverse[:, None, None]       # [N, size, extent]
    inside = (x >= 0) & (x < length[:, None])                                     # [N, extent]
    w = (1 - t.abs()).clamp_(min=0) * inside[:, None, :]
    return w / w.sum(-1, keepdim=True)


def size_groups(shapes, padding=PADDING):
    """Image sizes [(H, W)] -> lists of image indices, each padded to one canvas: in order of area, an image
    joins the current group unless the group's canvas would then hold more than `padding` times its pixels."""
    groups, height, width, pixels = [], 0, 0, 0
    for b in sorted(range(len(shapes)), key=lambda b: (shapes[b][0] * shapes[b][1], b)):
        h, w = shapes[b]
        if groups and max(height, h) * max(width, w) * (len(groups[-1]) + 1) <= padding * (pixels + h * w):
            groups[-1].append(b)
            height, width, pixels = max(height, h), max(width, w), pixels + h * w
        else:
            groups.append([b])
            height, width, pixels = h, w, h * w
    return groups


def canvas(images, group):
    """The group's images on one zero-padded canvas: float32 [n, H, C * W] in [0, 1] (ToTensor's scale), row r
    of image k holding its C channel rows side by side, the layout the row pass multiplies."""
    height = max(images[b].shape[1] for b in group)
    width = max(images[b].shape[2] for b in group)
    channels = images[group[0]].shape[0]
    x = torch.zeros(len(group), height, channels, width, dtype=torch.uint8, device=images[group[0]].device)
    for k, b in enumerate(group):
        _, h, w = images[b].shape
        x[k, :h, :, :w] = images[b].transpose(0, 1)
    return x.view(len(group), height, channels * width).float().div_(255)


def crop_resize(images, i, j, h, w, flip, size, resized=None, first=None):
    """images: B uint8 [C, H_b, W_b] on one device; box rows i..i+h-1 and columns j..j+w-1 of each view v of
    each image b, and whether to mirror it: [V, B] each (float, flip bool) -> float32 [V, B, C, size, size] in
    [0, 1]. Each box is resized to size x size (F.resized_crop(antialias=True)); or, given resized = (rh, rw)
    and first = (top, left), [V, B] each, to rh x rw, of which rows top.. and columns left.. are kept (Resize
    then CenterCrop). Per group of similar sizes (size_groups): one padded canvas, then per view two batched
    products, rows then columns; mirroring reverses the column weights, so the flip costs nothing."""
    V, B = i.shape
    device = i.device
    rh, rw = resized if resized is not None else (torch.full_like(h, size), torch.full_like(w, size))
    top, left = first if first is not None else (torch.zeros_like(i), torch.zeros_like(j))
    channels = images[0].shape[0]
    out = torch.empty(V, B, channels, size, size, device=device)
    with torch.autocast(device.type, enabled=False):  # float32 products even inside a training autocast region
        for group in size_groups([tuple(image.shape[1:]) for image in images]):
            x = canvas(images, group)                                    # [n, Hg, C * Wg]
            n, height, width = len(group), x.shape[1], x.shape[2] // channels
            members = host_values(group, device, torch.long)

            def pick(values):  # [V, B] -> the group's [V * n]
                return values.index_select(1, members).flatten()
            rows = resize_weights(pick(i), pick(h), pick(rh), pick(top), size, height).view(V, n, size, height)
            cols = resize_weights(pick(j), pick(w), pick(rw), pick(left), size, width).view(V, n, size, width)
            cols = torch.where(pick(flip).view(V, n, 1, 1), cols.flip(2), cols)
            for v in range(V):
                y = torch.bmm(rows[v], x)                                                # [n, size, C * Wg]
                y = torch.bmm(y.view(n, size * channels, width), cols[v].transpose(1, 2))  # [n, size * C, size]
                out[v].index_copy_(0, members, y.view(n, size, channels, size).transpose(1, 2))
    return out


# ----------------------------------------------------------------------------- training views

def folder_views(images, augments, views, generator):
    """Decoded images (B uint8 [C, H_b, W_b] on one device) -> `views` float32 [B, C, size, size]: view v's
    parameters drawn by augments[v % len] from each image's own size, in view order (the draws of DeviceBatches:
    the crop boxes, then every other op's), all views' crops in one crop_resize, then each view's other ops."""
    device = images[0].device
    height = host_values([image.shape[1] for image in images], device)
    width = host_values([image.shape[2] for image in images], device)
    augment_of = [augments[v % len(augments)] for v in range(views)]
    with torch.autocast(device.type, enabled=False):
        params = [augment.draw(len(images), height, width, generator, device) for augment in augment_of]
        boxes = [torch.stack([p[key] for p in params]) for key in ("i", "j", "h", "w", "flip")]  # [V, B] each
        crops = crop_resize(images, *boxes, augment_of[0].size)                                 # [V, B, C, s, s]
        return [augment.after_crop(crops[v], p) for v, (augment, p) in enumerate(zip(augment_of, params))]


class FolderBatches(DeviceBatches):
    """DeviceBatches for an image folder: the same (views, indices) per step over the same EpochSampler, each
    step's views drawn from a generator seeded from (seed, rank, epoch, step), so that a run resumed at any
    step with any number of workers draws what the uninterrupted run drew. The images are not held anywhere:
    `workers` DataLoader processes read the sampler's files (bytes only; pinned on CUDA), and each step
    decodes its batch on the device, once per image for all of its views."""

    def __init__(self, files, sampler, augment, views, seed, rank, device, workers=0):
        if len(files) != sampler.size:
            raise ValueError(f"{len(files)} files for a sampler over {sampler.size}")
        self.files, self.sampler, self.views, self.seed, self.rank = files, sampler, views, seed, rank
        self.device = torch.device(device)
        self.augments = list(augment) if isinstance(augment, (list, tuple)) else [augment]
        self.generator = torch.Generator(device=self.device)
        self.loader = DataLoader(files, batch_size=sampler.batch, sampler=sampler, num_workers=workers,
                                 collate_fn=collate, pin_memory=self.device.type == "cuda", drop_last=True,
                                 worker_init_fn=signals.ignore_stop_signals)  # the main process decides

    @classmethod
    def build(cls, dataset, sampler, recipe, erasing, info, size, views, seed, rank, device, workers=0):
        """From a folder dataset (FileBytes takes it), a Recipe or one per view, the Erasing or None and
        the dataset's DatasetInfo."""
        recipes = recipe if isinstance(recipe, (list, tuple)) else [recipe]
        augments = [BatchAugment(r, erasing, info.mean, info.std, size) for r in recipes]
        return cls(FileBytes(dataset), sampler, augments, views, seed, rank, device, workers)

    def __iter__(self):
        s = self.sampler
        batches = signals.start_workers(self.loader)  # workers that leave SIGINT / SIGTERM to this process
        try:
            for step, (files, _, indices) in zip(range(s.start_step, s.steps_per_epoch), batches):
                images = decode(files, self.device)
                self.generator.manual_seed(step_seed(self.seed, self.rank, s.epoch, step))
                yield (folder_views(images, self.augments, self.views, self.generator),
                       indices.to(self.device, non_blocking=True))
        finally:  # a broken file, or a loop left early: the workers end now, not when garbage collection finds them
            signals.end_workers(batches)


# ----------------------------------------------------------------------------- the test transform

def test_geometry(height, width, size):
    """lib/augment.py test_transform's geometry for an image of height x width -> (resized height, resized
    width, top, left): above 96 px torchvision's Resize(round(size * 256 / 224)) (short side; the long one
    truncated, as _compute_resized_output_size does) then CenterCrop(size) (int(round(...)) offsets); at 96 px
    and below, Resize((size, size)) of the whole image."""
    if size <= 96:
        return size, size, 0, 0
    short_side = round(size * 256 / 224)
    short, long = min(height, width), max(height, width)
    long_side = int(short_side * long / short)
    rh, rw = (long_side, short_side) if width <= height else (short_side, long_side)
    return rh, rw, int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))


class DeviceTestTransform:
    """test_transform on the device for a batch of Files (FileBytes' to_device): decoded once, resized and
    centre-cropped as one crop_resize, normalised -> float32 [B, C, size, size]."""

    def __init__(self, size, mean, std):
        self.size, self.mean, self.std = size, tuple(mean), tuple(std)

    def __call__(self, files, device):
        images = decode(files, device)
        sizes = [tuple(image.shape[1:]) for image in images]
        geometry = [test_geometry(h, w, self.size) for h, w in sizes]
        height, width, rh, rw, top, left = (host_values([values], device) for values in
                                            zip(*[(h, w, *g) for (h, w), g in zip(sizes, geometry)]))
        zero = torch.zeros_like(height)
        x = crop_resize(images, zero, zero, height, width, zero.bool(), self.size, (rh, rw), (top, left))[0]
        mean, std = (host_values(values, device) for values in (self.mean, self.std))
        return normalise(x, mean, std)


def device_test_set(dataset, info, size):
    """A folder dataset (or a SubsetDataset of one) whose batches lib/knn.extract_features decodes and
    test-transforms on its device."""
    return FileBytes(dataset, DeviceTestTransform(size, info.mean, info.std))
