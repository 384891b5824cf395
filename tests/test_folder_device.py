"""The folder device path (lib/folder_device.py, --data-path device for image folders) against the loader path:
decoded pixels against PIL's, crop boxes against RandomResizedCrop's, the crop and resize against
F.resized_crop, whole recipes and the test transform against the PIL pipeline, then the training loop on it:
resume, sharding over two processes, broken files."""
import io
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from scipy.stats import ks_2samp
from torchvision import transforms
from torchvision.transforms import functional as TF

import eval_knn
import train_cld
from lib import augment, cli
from lib.augment import RECIPES, VIEW_RECIPES, recipe_for
from lib.batch_augment import BatchAugment
from lib.data import DatasetError, FolderDataset, dataset_info, load_dataset
from lib.folder_device import (DeviceTestTransform, FolderBatches, collate, crop_resize, decode, folder_views,
                               nvjpeg_takes, size_groups)
from lib.knn import knn_scores
from lib.sampler import EpochSampler
from tests.common import ROOT, one_clear_line, states_equal, torchrun
from tests.test_faults import signal_after

INFO = dataset_info("imagenet")
CPU = torch.device("cpu")


def photo(height, width, seed):
    """uint8 [height, width, 3]: smooth colour ramps and waves plus noise, a photograph's mix at a small size."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    a, b, c = rng.uniform(0.05, 0.3, 3)
    image = np.stack([90 + 120 * x / width, 60 + 80 * np.sin(a * x + b * y), 140 + 60 * np.cos(c * y)], -1)
    return np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)


def write_folder(root, sizes=((30, 40), (40, 30), (36, 36), (24, 44)), per_class=4, splits=("train", "val")):
    """JPEGs (quality 90) in root/<split>/class_<c>/, two classes, sizes (H, W) in turn; returns root."""
    k = 0
    for split in splits:
        for c in range(2):
            os.makedirs(os.path.join(root, split, f"class_{c}"), exist_ok=True)
            for n in range(per_class):
                h, w = sizes[k % len(sizes)]
                Image.fromarray(photo(h, w, k)).save(os.path.join(root, split, f"class_{c}", f"img_{n}.jpg"),
                                                     quality=90)
                k += 1
    return str(root)


def encoded(image, fmt, **options):
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def files_of(blobs):
    """A batch of Files from (name, bytes) as FileBytes and collate make it."""
    items = []
    for k, (name, blob) in enumerate(blobs):
        data = np.frombuffer(blob, dtype=np.uint8).copy()
        items.append(((torch.from_numpy(data), nvjpeg_takes(memoryview(data)), name), 0, k))
    return collate(items)[0]


def pil_rgb(blob):
    """What the loader path decodes: torchvision's ImageFolder loader, PIL's convert("RGB") -> uint8 [3, H, W]."""
    return torch.from_numpy(np.array(Image.open(io.BytesIO(blob)).convert("RGB"))).permute(2, 0, 1)


# ----------------------------------------------------------------------------- decoding

def test_every_format_decodes_to_pils_pixels_in_one_batch():
    """On the CPU the JPEGs go through libjpeg-turbo (decode_image) and come out equal to PIL's pixels to the
    bit (PIL decodes with the same library and its defaults); PNGs through libpng, exact by nature; formats
    torchvision does not read (BMP, a 16-bit PNG) through PIL itself. nvJPEG's pixels (CUDA) differ by
    libjpeg's rounding; experiments/gpu_check.sh measures them."""
    rgb = Image.fromarray(photo(30, 44, 1))
    blobs = [("rgb.jpg", encoded(rgb, "JPEG", quality=90)),
             ("progressive.jpg", encoded(rgb, "JPEG", quality=90, progressive=True)),
             ("grey.jpg", encoded(rgb.convert("L"), "JPEG", quality=90)),
             ("cmyk.jpg", encoded(rgb.convert("CMYK"), "JPEG", quality=90)),
             ("rgb.png", encoded(rgb, "PNG")), ("grey.png", encoded(rgb.convert("L"), "PNG")),
             ("palette.png", encoded(rgb.convert("P"), "PNG")), ("rgba.png", encoded(rgb.convert("RGBA"), "PNG")),
             ("bmp.bmp", encoded(rgb, "BMP")),
             ("16bit.png", encoded(Image.fromarray((np.arange(30 * 44).reshape(30, 44) * 40).astype(np.uint16)), "PNG"))]
    images = decode(files_of(blobs), CPU)
    for (name, blob), image in zip(blobs, images):
        assert image.dtype == torch.uint8 and torch.equal(image, pil_rgb(blob)), name
    # Only the three-component Huffman JPEGs that end with their end-of-image marker would go to nvJPEG.
    takes = [nvjpeg_takes(memoryview(np.frombuffer(blob, np.uint8))) for _, blob in blobs]
    assert takes == [True, True] + [False] * 8
    assert not nvjpeg_takes(memoryview(np.frombuffer(blobs[0][1][:-300], np.uint8)))  # truncated


def test_a_broken_file_is_named_in_the_loaders_words(tmp_path):
    good = encoded(Image.fromarray(photo(20, 20, 0)), "JPEG", quality=90)
    for name, blob, reason in [("cut.jpg", good[:-200], "image file is truncated"),
                               ("empty.png", b"", "not an image format PIL recognises"),
                               ("text.jpg", b"\xff\xd8\xffnot really", "")]:
        with pytest.raises(DatasetError) as caught:
            decode(files_of([("ok.jpg", good), (str(tmp_path / name), blob)]), CPU)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name} is not a readable image ({reason}") and "\n" not in message
        assert message.endswith("; replace or remove it")


def test_a_file_that_vanished_is_named_by_the_worker_that_read_it(tmp_path):
    root = write_folder(tmp_path, per_class=2, splits=("train",))
    dataset = FolderDataset(os.path.join(root, "train"))
    gone = dataset.samples[3][0]
    os.remove(gone)
    batches = FolderBatches.build(dataset, EpochSampler(4, 4, 0, 1, 0), recipe_for("aug-plus", 16), False, INFO, 16,
                                  2, 0, 0, CPU, workers=1)
    with pytest.raises(DatasetError) as caught:
        list(batches)
    assert cli.message(caught.value) == f"{gone} is not a readable image (No such file or directory); replace or remove it"


# ----------------------------------------------------------------------------- crop boxes and crop-resize

N = 3000
KS_BOUND = 0.06  # as tests/test_batch_augment.py: N vs N draws, above 0.05 with p = 0.001


def test_crop_boxes_from_each_images_size_are_random_resized_crops():
    """One draw for a batch of images of three sizes (one so narrow that most tries fail and the fallback
    box is frequent) against RandomResizedCrop.get_params on images of each size."""
    sizes = [(375, 500), (500, 375), (10, 60)]
    recipe = RECIPES["aug-plus"]
    height = torch.tensor([float(sizes[k % 3][0]) for k in range(3 * N)])
    width = torch.tensor([float(sizes[k % 3][1]) for k in range(3 * N)])
    p = BatchAugment(recipe, None, INFO.mean, INFO.std, 224).draw(3 * N, height, width,
                                                                  torch.Generator().manual_seed(0), CPU)
    ours = torch.stack([p["i"], p["j"], p["h"], p["w"]], 1).numpy().astype(np.int64)
    torch.manual_seed(0)
    for s, (H, W) in enumerate(sizes):
        mine = ours[s::3]
        theirs = np.array([transforms.RandomResizedCrop.get_params(torch.empty(1, H, W), recipe.crop_scale,
                                                                   recipe.crop_ratio) for _ in range(N)])
        for name, stat in [("area", lambda b: b[:, 2] * b[:, 3]), ("log aspect", lambda b: np.log(b[:, 3] / b[:, 2])),
                           ("i", lambda b: b[:, 0]), ("j", lambda b: b[:, 1])]:
            d = ks_2samp(stat(mine).astype(float), stat(theirs).astype(float), method="asymp").statistic  # D only
            assert d < KS_BOUND, ((H, W), name, d)
        assert (mine[:, 0] + mine[:, 2] <= H).all() and (mine[:, 1] + mine[:, 3] <= W).all() and (mine >= 0).all()


def test_crop_resize_is_resized_crop_with_antialias_enlarging_and_shrinking():
    """torchvision's own antialiased resize of the cropped tensor, to float32 rounding (3e-7 seen): shrinking
    5x and 2.2x, enlarging 10x, keeping the size, a 100 x 60 image among small ones (its own canvas), mirrored
    and not."""
    shapes = [(375, 500), (40, 30), (33, 30), (100, 60), (32, 32)]
    images = [torch.from_numpy(photo(h, w, k)).permute(2, 0, 1).contiguous() for k, (h, w) in enumerate(shapes)]
    boxes = [(0, 0, 375, 500), (3, 2, 20, 25), (10, 5, 3, 2), (7, 9, 88, 44), (0, 0, 32, 32)]
    assert len(size_groups(shapes)) == 2
    i, j, h, w = (torch.tensor([[float(b[n]) for b in boxes]] * 2) for n in range(4))
    flip = torch.tensor([[False] * 5, [True] * 5])
    out = crop_resize(images, i, j, h, w, flip, 32)
    for k, (top, left, height, width) in enumerate(boxes):
        ref = TF.resized_crop(images[k].float() / 255, top, left, height, width, [32, 32], antialias=True)
        torch.testing.assert_close(out[0, k], ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(out[1, k], TF.hflip(ref), atol=1e-6, rtol=0)


def pil_view(pil, p, k, recipe, size):
    """The loader path's ops (lib/augment.py train_transform) on a PIL image with the parameters BatchAugment
    drew for image k: PIL's crop and resize, ColorJitter's ops in the drawn order, grayscale, blur, flip."""
    x = TF.resized_crop(pil, int(p["i"][k]), int(p["j"][k]), int(p["h"][k]), int(p["w"][k]), [size, size])
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)

    def jitter(x):
        for index in p["order"][k].tolist() if p["jitter_on"][k] else []:
            x = ops[index](x, p["factors"][k, index].item())
        return x

    def grey(x):
        return TF.rgb_to_grayscale(x, 3) if p["grey_on"][k] else x
    x = jitter(grey(x)) if recipe.grayscale_first else grey(jitter(x))
    if recipe.blur_p > 0 and p["blur_on"][k]:
        x = x.filter(ImageFilter.GaussianBlur(radius=p["sigma"][k].item()))
    if recipe.solarize_p > 0 and p["solarize_on"][k]:
        x = TF.solarize(x, 128)
    return TF.to_tensor(TF.hflip(x) if p["flip"][k] else x)


CROP_AND_FLIP = replace(RECIPES["aug-plus"], jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


@pytest.mark.parametrize("recipe,mean_bound,p99_bound", [(CROP_AND_FLIP, 0.5, 1.0), (RECIPES["aug-plus"], 2.5, 8),
                                                         (RECIPES["default-imagenet"], 2.5, 12),
                                                         (VIEW_RECIPES["byol"][1], 2.5, 8)])
def test_whole_recipes_are_the_pil_paths_on_the_same_draws(recipe, mean_bound, p99_bound):
    """Device views of decoded JPEGs (200 x 150 shrunk to 48 px) against the PIL pipeline fed the same
    parameters, in /255 pixel units. The crop and flip alone: PIL's but for its rounding (seen: 0.27 on
    average, 0.9 at most). Whole recipes: PIL also rounds after every colour op and its contrast blends with
    the grey image's rounded mean, its hue in uint8 HSV (lib/batch_augment.py lists the differences); seen
    1.2 to 1.7 on average, 99% of pixels within 5 to 8.3, 20 at most."""
    blobs = [(f"{k}.jpg", encoded(Image.fromarray(photo(*((150, 200) if k % 2 else (200, 150)), k)), "JPEG",
                                  quality=90)) for k in range(12)]
    images = decode(files_of(blobs), CPU)
    augment = BatchAugment(recipe, None, INFO.mean, INFO.std, 48)
    generator = torch.Generator().manual_seed(1)
    [ours] = folder_views(images, [augment], 1, generator)
    p = augment.draw(12, torch.tensor([float(im.shape[1]) for im in images]),
                     torch.tensor([float(im.shape[2]) for im in images]), generator.manual_seed(1), CPU)
    assert 0 < p["flip"].sum() < 12
    mean, std = torch.tensor(INFO.mean).view(3, 1, 1), torch.tensor(INFO.std).view(3, 1, 1)
    diffs = torch.stack([((ours[k] * std + mean) - pil_view(Image.open(io.BytesIO(blobs[k][1])).convert("RGB"),
                                                           p, k, recipe, 48)).abs() * 255 for k in range(12)])
    p99 = diffs.flatten().quantile(0.99)
    assert diffs.mean() < mean_bound and p99 < p99_bound and diffs.max() < 30, (diffs.mean(), p99, diffs.max())


def test_the_test_transform_on_the_device_is_pils_resize_and_centre_crop(tmp_path):
    """Resize(256) + CenterCrop(224) and, at 32 px (Kitchen-HC), Resize((32, 32)), against lib/augment.py's
    test_transform on the same files: within PIL's rounding (1/255; 0.3/255 on average)."""
    blobs = [(f"{k}.png", encoded(Image.fromarray(photo(h, w, k)), "PNG"))
             for k, (h, w) in enumerate([(375, 500), (500, 333), (300, 300), (200, 260)])]
    for size in (224, 32):
        ours = DeviceTestTransform(size, INFO.mean, INFO.std)(files_of(blobs), CPU)
        reference = augment.test_transform(INFO, size)
        std = torch.tensor(INFO.std).view(3, 1, 1)
        for k, (_, blob) in enumerate(blobs):
            diff = ((ours[k] - reference(Image.open(io.BytesIO(blob)).convert("RGB"))) * std).abs() * 255
            assert diff.max() <= 1.0 and diff.mean() < 0.5, (size, k, diff.max(), diff.mean())


# ----------------------------------------------------------------------------- the training loop on it

def batches_of(root, rank=0, world=1, workers=0):
    dataset = load_dataset("imagefolder", root, "pretrain")
    sampler = EpochSampler(len(dataset), 4, rank, world, seed=3)
    return FolderBatches.build(dataset, sampler, [recipe_for("aug-plus", 16), VIEW_RECIPES["byol"][1]], True, INFO,
                               16, 3, 3, rank, CPU, workers)


def test_each_step_is_the_samplers_images_drawn_per_step_whatever_the_workers(tmp_path):
    """The loader path's images in its order; views seeded per step, so that epoch 2 started at step 1 with
    2 workers is epoch 2 of a run with none from step 1 on, to the bit."""
    root = write_folder(tmp_path, splits=("train",))
    whole = batches_of(root)
    whole.sampler.set_epoch(1)
    order = list(whole.sampler)
    steps = list(whole)
    assert len(steps) == 2 and all(v.shape == (4, 3, 16, 16) for views, _ in steps for v in views)
    assert [i for _, indices in steps for i in indices.tolist()] == order
    assert not torch.equal(steps[0][0][0], steps[0][0][1])  # independent views
    resumed = batches_of(root, workers=2)
    resumed.sampler.set_epoch(1, start_step=1)
    torch.manual_seed(123)  # nothing is drawn from the global generators
    again = list(resumed)
    assert len(again) == 1 and torch.equal(again[0][1], steps[1][1])
    assert all(torch.equal(a, b) for a, b in zip(again[0][0], steps[1][0]))


TRAIN = ["--dataset", "imagefolder", "--arch", "resnet20", "--image-size", "16", "--batch-size", "8",
         "--clusters", "4", "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0", "--data-path", "device"]


@pytest.fixture
def no_signal_handlers(monkeypatch):
    monkeypatch.setattr(train_cld.signal, "signal", lambda *a: None)


def test_training_on_the_folder_device_path_resumes_bit_exact_with_other_workers(tmp_path, monkeypatch, capsys,
                                                                                 no_signal_handlers):
    """Two epochs of MoCo+CLD (three views) with no workers, against a run stopped after step 1 of epoch 2
    and resumed with 2 workers: the same weights, queue, optimizer state and logged loss; the kNN monitor
    runs on the device test transform."""
    root = write_folder(tmp_path / "tree", per_class=8)  # 16 images: 2 steps of 8 per epoch
    argv = [*TRAIN, "--data", root, "--moco", "--queue", "16", "--epochs", "2"]
    train_cld.main(train_cld.parse_args([*argv, "--workers", "0", "--out", str(tmp_path / "whole")]))
    with monkeypatch.context() as patch:
        signal_after(patch, 2)  # 2 steps per epoch: during step 1 of epoch 2, saved after it
        with pytest.raises(SystemExit):
            train_cld.main(train_cld.parse_args([*argv, "--workers", "0", "--out", str(tmp_path / "cut")]))
    saved = torch.load(tmp_path / "cut" / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 1)
    train_cld.main(train_cld.parse_args([*argv, "--workers", "2", "--resume", str(tmp_path / "cut" / "last.pth"),
                                         "--out", str(tmp_path / "cut")]))
    a, b = (torch.load(tmp_path / run / "last.pth", weights_only=True) for run in ("whole", "cut"))
    for key in ("model", "memory", "optimizer", "epoch", "step"):
        assert states_equal(a[key], b[key]), key
    records = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("whole", "cut")]
    assert [r["loss"] for r in records[0]] == [r["loss"] for r in records[1]]
    assert 0 <= records[0][-1]["knn_top1"] <= 100 and records[0][-1]["knn_top1"] == records[1][-1]["knn_top1"]
    # eval_knn.py on the device path and on the loader path: the test transforms agree to PIL's rounding
    capsys.readouterr()
    for data_path in ("device", "loader"):
        eval_knn.main(eval_knn.parse_args(["--ckpt", str(tmp_path / "whole" / "last.pth"), "--workers", "0",
                                           "--data-path", data_path]))
    device, loader = (json.loads(line) for line in capsys.readouterr().out.splitlines()[-2:])
    assert device["test_images"] == loader["test_images"] == 16
    assert device["top1"] == loader["top1"] == records[0][-1]["knn_top1"]


def test_data_path_defaults_for_folders_and_what_stays_on_the_loader(tmp_path, monkeypatch, capsys):
    argv = ["--dataset", "imagefolder", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert train_cld.parse_args(argv).data_path == "loader"                       # the CPU: PIL in workers
    assert train_cld.parse_args([*argv, "--data-path", "device"]).data_path == "device"
    monkeypatch.setattr(train_cld, "training_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(train_cld.precision, "resolve", lambda *a, **k: ("bf16", "test"))
    assert train_cld.parse_args(argv).data_path == "device"                       # a GPU: decoded there
    assert train_cld.parse_args([*argv, "--infomin"]).data_path == "loader"       # jigsaw tiles, RandAugment
    with pytest.raises(SystemExit):
        train_cld.parse_args([*argv, "--infomin", "--data-path", "device"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --data-path device cannot build the infomin partner's "
                                                   "jigsaw tiles or the infomin augmentation (RandAugment)")


def test_a_truncated_file_stops_training_with_one_line_naming_it(tmp_path):
    root = write_folder(tmp_path / "tree", per_class=2)
    broken = tmp_path / "tree" / "train" / "class_1" / "img_1.jpg"
    broken.write_bytes(broken.read_bytes()[:-100])
    r = subprocess.run([sys.executable, "train_cld.py", *TRAIN, "--data", root, "--batch-size", "4", "--epochs", "1",
                        "--workers", "1", "--check-images", "off", "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = one_clear_line(r)
    assert r.returncode == 1 and line.startswith(f"error: {broken} is not a readable image (image file is truncated")
    assert line.endswith("; replace or remove it")


# ----------------------------------------------------------------------------- two processes

def test_two_processes_shard_the_folder_path_and_split_the_knn_scores(tmp_path):
    """One torchrun launch (gloo), two checks: each process's folder batches are its share of the global
    batch, with the views an in-process FolderBatches of that rank draws; and knn_scores split over the
    processes equals one process's scores, ties included (lib/knn.py)."""
    root = write_folder(tmp_path / "tree", per_class=8, splits=("train",))  # 16 images: 2 steps of 2 x 4
    r = torchrun("tests/dist_folder_worker.py", root, str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3 + 1))  # EpochSampler's epoch 1
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 2
    for step in range(2):  # global batch 8 = 2 processes x 4
        together = sorted(ranks[0]["indices"][step].tolist() + ranks[1]["indices"][step].tolist())
        assert together == sorted(perm[step * 8:(step + 1) * 8].tolist())
    for rank, got in enumerate(ranks):
        here = batches_of(root, rank, 2)
        here.sampler.set_epoch(1)
        for step, (views, indices) in enumerate(here):
            assert torch.equal(indices, got["indices"][step])
            assert all(torch.equal(a, b) for a, b in zip(views, got["views"][step]))
    test, train, labels = (ranks[0][key] for key in ("test", "train", "labels"))
    one = knn_scores(test, train, labels, 5, k=7, chunk=10**6)
    for got in ranks:
        assert torch.equal(got["scores"], one)
