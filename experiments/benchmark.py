"""Throughput of the two data paths and of the training step, each figure measured in this one process so
that ratios between them hold on a shared, noisy machine. Prints one JSON line per measurement, then a table.

    OMP_NUM_THREADS=1 python experiments/benchmark.py              # CPU: batch 32, 3 steps per figure
    python experiments/benchmark.py --imagenet                      # GPU: also ResNet-50 at 224 px

Measured:
- the README quick start's epoch through train_cld.train_epoch on each data path, and its kNN monitor;
- augmentation alone: views/s of the DataLoader (PIL, --workers 0 and N) and of the device path, at 32 px
  (CIFAR) and 96 px (STL-10), on random uint8 images;
- one training step alone (a batch already on the device, the same views every step) vs the end-to-end
  loop (train_cld.train_epoch over the device path, and over the loader), NPID+CLD and MoCo+CLD, CIFAR
  ResNet-18 at 32 px with the recipe rows of CIFAR-10 (lib/recipes.py); ResNet-50 at 224 px with
  --imagenet;
- the share of a step spent in k-means + the CLD loss (forward and backward) and in the bank / queue update;
- kNN over a 50k x 10k bank (lib/knn.py): time and peak memory;
- with --compile (on by default on a GPU): the step with torch.compile'd network.
Parts not run by default (--parts names them):
- folder: ImageNet-like JPEG files (experiments/jpeg_folder.py: 500 x 375 windows of two photographs, quality
  90) at 224 px, the aug-plus recipe, three views per image (MoCo+CLD's): views/s of the loader path (PIL in
  --workers 0 and N) and of the folder device path (lib/folder_device.py: bytes read by 0 and N workers,
  decoded and augmented on the device); decoding alone (torchvision / nvJPEG, and PIL) and crop-and-resize
  alone (ours, and PIL's RandomResizedCrop); on CUDA also nvJPEG's pixels against PIL's;
- folder-step: MoCo+CLD, ResNet-50 (ResNet-18 on the CPU) at 224 px on those JPEG files: the step alone against
  the end-to-end loop over the folder device path, and host syncs per step (CUDA);
- grouping (--parts grouping --grouping-ckpt CKPT...): CLD's k-means on a trained run's f_G (its training images, test transform)
  in random batches at (N, K) = (128, 10), (256, 128), (512, 120): the share of labels that change against
  float32, groups matched one to one (Hungarian), inside a bf16 autocast region with the matmuls left to
  autocast ("before": lib.cluster.kmeans without its float32 guard) and with the guard ("after"), with the
  features rounded to bf16 as the bf16 network hands them over (the guard cannot undo that), and float32 with
  1e-6 noise (the scale of a change that means nothing);
- knn-imagenet: lib/knn.knn_scores at ImageNet's size (a 1,281,167 x 128 bank, 1,000 classes, k 200) on
  --knn-test random test features: time and peak memory above the inputs with the old 1,024-row chunk
  and with the memory budget, in one process and (the budget) in two under torchrun; each in a process of
  its own, so that its peak is its own.
Every figure is the best of --repeats runs (the least disturbed one), the figures compared with each other
measured in turn; on the CPU the process's CPU time is given beside the wall time, since other jobs on a
shared machine change the latter (the loader's worker processes are not in it).
"""
import argparse
import contextlib
import io
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # train_epoch's progress bar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train_cld  # noqa: E402
from lib.augment import MultiView, recipe_for, train_transform  # noqa: E402
from lib.batch_augment import BatchAugment  # noqa: E402
from lib.data import ArrayDataset, dataset_info  # noqa: E402
from lib.device_data import DeviceBatches  # noqa: E402
from lib import dist, folder_device  # noqa: E402
from lib.knn import knn_scores  # noqa: E402
from lib.models import NetworkSpec  # noqa: E402
from lib.partners import PARTNERS  # noqa: E402
from lib.sampler import EpochSampler  # noqa: E402
from lib.subsets import SubsetDataset  # noqa: E402
from jpeg_folder import write_jpegs  # noqa: E402  (experiments/, this script's folder)

RESULTS = []


def emit(**record):
    RESULTS.append(record)
    print(json.dumps(record, allow_nan=False), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(repeats, device, fn):
    """The shortest wall time of repeats calls of fn, in seconds (the device synchronised around each)."""
    return min(timed(device, fn)[0] for _ in range(repeats))


def timed(device, fn):
    """(wall seconds, CPU seconds of this process) of one call of fn. On a shared CPU the wall time depends on
    what else runs; the CPU time hardly does, but leaves out the loader's worker processes."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def random_images(n, size, channels=3, seed=0):
    """uint8 [n, size, size, channels], the layout of ArrayDataset.data (HWC)."""
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, channels), dtype=np.uint8)


# ----------------------------------------------------------------------------- augmentation alone

def bench_augment(args, device):
    for dataset, size, aug, erasing in (("cifar10", 32, "default", False), ("cifar10", 32, "aug-plus", True),
                                        ("stl10", 96, "aug-plus", False)):
        info = dataset_info(dataset)
        n = args.aug_batch * args.aug_batches
        data = random_images(n, size)
        recipe = f"{aug}{' + erasing' if erasing else ''}"
        transform = MultiView(train_transform(info, aug, erasing, size), 2)
        sampler = EpochSampler(n, args.aug_batch, 0, 1, 0)
        for workers in sorted({0, args.workers}):
            loader = DataLoader(ArrayDataset(data, np.zeros(n), 10, transform), batch_size=args.aug_batch,
                                sampler=sampler, num_workers=workers, drop_last=True,
                                pin_memory=device.type == "cuda", persistent_workers=workers > 0)

            def through_loader():
                for views, _, _ in loader:
                    [v.to(device, non_blocking=True) for v in views]
            through_loader()  # starts the workers (persistent) and warms PIL
            seconds = best_of(args.repeats, device, through_loader)
            emit(part="augment", path=f"loader, {workers} workers", size=size, recipe=recipe,
                 views_per_s=2 * n / seconds, batch=args.aug_batch)
        batches = DeviceBatches(torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device), sampler,
                                BatchAugment(recipe_for(aug, size), erasing, info.mean, info.std, size), 2, 0, 0)
        list(batches)
        seconds = best_of(args.repeats, device, lambda: list(batches))
        emit(part="augment", path="device", size=size, recipe=recipe, views_per_s=2 * n / seconds,
             batch=args.aug_batch)


# ----------------------------------------------------------------------------- training steps

# Training-set sizes the NPID bank is built for (its loss scores every row), whatever the images served.
BANK_ROWS = {32: 50_000, 224: 1_281_167}  # CIFAR, ImageNet


def build(args, partner, arch, size, batch, device, data_path, workers=0, compile_model=False, precision="auto"):
    """A train_cld Run over random images: the CIFAR-10 recipe row of the partner at this arch, size and batch;
    K scaled with the batch (the row's K x batch / 256). steps + 1 batches per epoch; an NPID bank of the real
    dataset's size (BANK_ROWS), of which the batches touch the first rows."""
    n = batch * (args.steps + 1)
    row_k = 128 if partner == "npid" else 200
    argv = ["--dataset", "synthetic", "--arch", arch, "--image-size", str(size), "--batch-size", str(batch),
            "--partner", partner, "--clusters", str(max(2, row_k * batch // 256)), "--data-path", data_path,
            "--workers", str(workers), "--precision", precision, "--out", tempfile.mkdtemp(prefix="bench-")]
    run_args = train_cld.parse_args(argv)
    info = dataset_info("synthetic")
    spec = NetworkSpec.from_config(vars(run_args), info.channels)
    data = random_images(n, size)
    sampler = EpochSampler(n, batch, 0, 1, run_args.seed)
    views = PARTNERS[partner].views
    if data_path == "device":
        source = DeviceBatches(torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device), sampler,
                               BatchAugment(recipe_for(run_args.aug, size), run_args.erasing, info.mean, info.std,
                                            size), views, run_args.seed, 0)
    else:
        transform = MultiView(train_transform(info, run_args.aug, run_args.erasing, size), views)
        source = DataLoader(ArrayDataset(data, np.zeros(n), 10, transform), batch_size=batch, sampler=sampler,
                            num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                            generator=torch.Generator(), persistent_workers=workers > 0)
    raw_model, memory, optimizer, scaler, autocast = train_cld.make_network(run_args, spec, PARTNERS[partner],
                                                                            BANK_ROWS.get(size, n), 1, device)
    raw_model.to(memory_format=train_cld.LAYOUT)
    memory.to(memory_format=train_cld.LAYOUT)
    model = torch.compile(raw_model) if compile_model else raw_model
    cld = train_cld.make_cross_level(run_args)
    return train_cld.Run(run_args, 0, 1, device, spec, source, sampler, None, None, model, raw_model, memory,
                         cld, optimizer, scaler, autocast, train_cld.metric_names(memory, cld))


def fixed_batch(run):
    """One batch of the run's views on the device, from the device path (the same augmentation)."""
    info = dataset_info("synthetic")
    size, batch = run.args.image_size, run.args.batch_size
    images = torch.from_numpy(random_images(batch, size, seed=1)).permute(0, 3, 1, 2).contiguous().to(run.device)
    augment = BatchAugment(recipe_for(run.args.aug, size), run.args.erasing, info.mean, info.std, size)
    generator = torch.Generator(device=run.device).manual_seed(0)
    views = [augment(images, generator).contiguous(memory_format=train_cld.LAYOUT)
             for _ in range(type(run.partner).views)]
    return views, torch.arange(batch, device=run.device)


def steps_alone(run, steps):
    """steps train_step calls on one fixed batch; returns the number of host syncs seen on CUDA."""
    views, indices = fixed_batch(run)

    def go():
        for s in range(steps):
            train_cld.train_step(run.model, run.raw_model, run.partner, run.cld, views, indices, s, run.optimizer,
                                 run.scaler, run.autocast)
    return go


def count_syncs(run, steps):
    """Host synchronisations inside `steps` train_step calls (CUDA's sync debug mode), or None on CPU."""
    if run.device.type != "cuda":
        return None
    go = steps_alone(run, steps)
    sync(run.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            go()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def end_to_end(run):
    """One epoch of train_cld.train_epoch (steps + 1 steps; the first one starts the loader's workers)."""
    def go():
        progress = train_cld.Progress.start(None, run.device, len(run.metrics))
        train_cld.train_epoch(run, progress, [], "")
    return go


def bench_training(args, device, arch, size, batch, partners=("npid", "moco")):
    """Per partner: the step alone and the end-to-end epoch on each data path, measured in turn --repeats
    times (so that a burst of load on the machine hits all of them alike); each figure is the best turn."""
    steps = args.steps
    for partner in partners:
        run = build(args, partner, arch, size, batch, device, "device")
        alone = steps_alone(run, steps)
        alone()  # warm-up: allocator, autotuning
        # train_epoch runs steps + 1 steps (the first waits for a loader's first batch): per step, over steps + 1.
        figures = {"step alone": (alone, steps), "device path, end to end": (end_to_end(run), steps + 1)}
        for workers in sorted({0, args.workers}):
            loader_run = build(args, partner, arch, size, batch, device, "loader", workers)
            figures[f"loader, {workers} workers, end to end"] = (end_to_end(loader_run), steps + 1)
        times = {path: [] for path in figures}
        for _ in range(args.repeats):
            for path, (fn, count) in figures.items():
                wall, cpu = timed(device, fn)
                times[path].append((wall / count, cpu / count))
        syncs = count_syncs(run, steps)
        best = {path: min(w for w, _ in t) for path, t in times.items()}
        best_cpu = {path: min(c for _, c in t) for path, t in times.items()}
        for path, seconds in best.items():
            emit(part="step", partner=partner, arch=arch, size=size, batch=batch, path=path,
                 seconds_per_step=seconds, images_per_s=batch / seconds, vs_step_alone=seconds / best["step alone"],
                 cpu_seconds_per_step=best_cpu[path], cpu_vs_step_alone=best_cpu[path] / best_cpu["step alone"],
                 turns=times[path], **({"host_syncs_in_steps": syncs} if path == "step alone" and syncs is not None
                                       else {}))
        bench_share(args, run, best["step alone"])
        if args.compile:
            compiled = build(args, partner, arch, size, batch, device, "device", compile_model=True)
            go = steps_alone(compiled, steps)
            start = time.perf_counter()
            go()
            sync(device)
            first = time.perf_counter() - start
            seconds = best_of(args.repeats, device, go) / steps
            emit(part="step", partner=partner, arch=arch, size=size, batch=batch, path="step alone, --compile",
                 seconds_per_step=seconds, images_per_s=batch / seconds, vs_step_alone=seconds / best["step alone"],
                 first_steps_s=first)


def bench_share(args, run, step_seconds):
    """Seconds per step in k-means + the CLD loss (forward and backward) and in the partner's update, on
    features of the step's shape, as a share of the whole step."""
    device, batch, dim = run.device, run.args.batch_size, run.args.dim
    g = F.normalize(torch.randn(2, batch, dim, device=device), dim=-1).requires_grad_()

    def cld():
        for s in range(args.steps):
            loss, _, _ = run.cld(g[0], g[1], s)
            loss.backward()
    features = F.normalize(torch.randn(batch, dim, device=device), dim=1)
    pending = (torch.arange(batch, device=device), [features, features]) if run.args.partner == "npid" else features
    applied = torch.ones((), dtype=torch.bool, device=device)

    def update():
        for _ in range(args.steps):
            run.partner.update(run.raw_model, pending, applied)
    for name, fn in (("k-means + CLD loss", cld), ("bank / queue update" if run.args.partner == "npid"
                                                   else "key encoder EMA + queue update", update)):
        fn()
        seconds = best_of(args.repeats, device, fn) / args.steps
        emit(part="share", partner=run.args.partner, arch=run.args.arch, batch=batch, what=name,
             seconds_per_step=seconds, share_of_step=seconds / step_seconds, clusters=run.args.clusters)


# ----------------------------------------------------------------------------- precision

def bf16_hardware():
    """The CPU's bf16 instructions (AMX, AVX512-BF16) from /proc/cpuinfo; without them torch emulates bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line.split(":", 1)[1].split() for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return sorted(flag for flag in flags if flag in ("amx_bf16", "amx_tile", "avx512_bf16"))


def bench_precision(args, device):
    """The NPID+CLD step alone in each precision: CIFAR ResNet-18 at 32 px (batch --batch) and the quick
    start's ResNet-20 at 8 px (batch 128); the precisions measured in turn, --repeats times."""
    precisions = ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    for arch, size, batch in (("resnet18_cifar", 32, args.batch), ("resnet20", 8, 128)):
        figures = {}
        for precision in precisions:
            run = build(args, "npid", arch, size, batch, device, "device", precision=precision)
            go = steps_alone(run, args.steps)
            go()  # warm-up
            figures[precision] = go
        best = {precision: min(timed(device, go)[0] for _ in range(args.repeats)) / args.steps
                for precision, go in figures.items()}
        for precision, seconds in best.items():
            emit(part="precision", arch=arch, size=size, batch=batch, precision=precision, seconds_per_step=seconds,
                 vs_fp32=seconds / best["fp32"], cpu_bf16_instructions=bf16_hardware() if device.type == "cpu" else None)


GROUPING_SHAPES = ((128, 10), (256, 128), (512, 120))


def changed_labels(reference, labels, k):
    """Share of the N labels that differ from reference's after matching the groups one to one."""
    from scipy.optimize import linear_sum_assignment
    counts = np.zeros((k, k))
    np.add.at(counts, (reference.numpy(), labels.numpy()), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return 1 - counts[rows, cols].sum() / len(reference)


def bench_grouping(args, device):
    """k-means labels under bf16 autocast against float32 on each --grouping-ckpt's f_G."""
    from lib import checkpoint
    from lib.cluster import kmeans
    from lib.data import load_dataset
    from lib.augment import test_transform
    from lib.knn import extract_features
    from lib.subsets import subset_dataset
    for path in args.grouping_ckpt:
        ckpt = checkpoint.load(path, needs=("data",))
        config = ckpt["config"]
        info = dataset_info(config["dataset"])
        images = load_dataset(config["dataset"], config["data"], "train", test_transform(info, config["image_size"]))
        if config.get("subset"):
            images = subset_dataset(images, config["subset"])
        model = checkpoint.load_network(ckpt, path, info.channels).to(device).eval()
        with torch.no_grad():
            f_g = extract_features(lambda x: F.normalize(model.parts(x)[2].float(), dim=1), images, device)
        generator = torch.Generator().manual_seed(0)
        for n, k in GROUPING_SHAPES:
            changed = {"before": [], "after": [], "bf16_features": [], "fp32_noise": []}
            for _ in range(args.grouping_batches):
                x = f_g[torch.randperm(len(f_g), generator=generator)[:n].to(device)]
                reference = kmeans(x, k)[0].cpu()
                noise = 1e-6 * torch.randn(x.shape, generator=generator).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    labels = {"before": kmeans.__wrapped__(x, k)[0], "after": kmeans(x, k)[0],
                              "bf16_features": kmeans(x.bfloat16(), k)[0]}
                labels["fp32_noise"] = kmeans(F.normalize(x + noise, dim=1), k)[0]
                for what, got in labels.items():
                    changed[what].append(changed_labels(reference, got.cpu(), k))
            emit(part="grouping", ckpt=path, epochs=ckpt["epoch"], dataset=config["dataset"], n=n, k=k,
                 batches=args.grouping_batches, **{what: float(np.mean(v)) for what, v in changed.items()})


def saved_bytes_per_image(arch, size, precision, images=2):
    """Bytes autograd keeps for the backward pass of one image through the BYOL+CLD online network (backbone,
    BYOL projector and predictor, group head) in training mode, on the CPU: the activation memory of a step,
    counted from the tensors saved for backward (each storage once), per image."""
    from lib.models import CLDNet
    model = CLDNet(arch, 3, instance_head="byol", group_head="normlinear").train().to(memory_format=torch.channels_last)
    x = torch.randn(images, 3, size, size).contiguous(memory_format=torch.channels_last)
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t
    context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
        (f1, g1), = model(x)
        loss = f1.float().sum() + g1.float().sum()
    loss.backward()
    return sum(storages.values()) / images


def bench_memory(args):
    """Activation memory of the byol/imagenet recipe row on paper: 4,096 images over 8 GPUs is 512 per GPU,
    two views each through the online network with gradients (the target network's forward keeps nothing)."""
    for precision in ("fp32", "bf16"):
        per_image = saved_bytes_per_image("resnet50", 224, precision)
        per_gpu = per_image * 512 * 2
        emit(part="memory", arch="resnet50", size=224, precision=precision, saved_mib_per_image=per_image / 2**20,
             views_per_gpu=1024, activations_gib_per_gpu=per_gpu / 2**30,
             accumulate_for_80gib=max(1, math.ceil(per_gpu / (60 * 2**30))),
             how="bytes of the tensors autograd saves for backward (saved_tensors_hooks), each storage once")


# ----------------------------------------------------------------------------- the quick start's epoch

QUICK = ["--dataset", "digits", "--arch", "resnet20", "--epochs", "30", "--batch-size", "128", "--clusters", "10",
         "--workers", "0", "--knn-every", "10"]


def bench_quick(args, device):
    """One epoch of the README quick start (digits, ResNet-20, batch 128, K 10: 11 steps) through
    train_cld.train_epoch on each data path, the two alternating --repeats * 2 times; and its kNN monitor."""
    runs = {}
    for path in ("loader", "device"):
        run_args = train_cld.parse_args([*QUICK, "--data-path", path, "--out", tempfile.mkdtemp(prefix="bench-")])
        batches, sampler, knn_train, knn_test = train_cld.make_data(run_args, 2, 0, 1, device)
        spec = NetworkSpec.from_config(vars(run_args), 1)
        raw_model, memory, optimizer, scaler, autocast = train_cld.make_network(
            run_args, spec, PARTNERS["npid"], sampler.size, 1, device)
        raw_model.to(memory_format=train_cld.LAYOUT)
        cld = train_cld.make_cross_level(run_args)
        runs[path] = train_cld.Run(run_args, 0, 1, device, spec, batches, sampler, knn_train, knn_test, raw_model,
                                   raw_model, memory, cld, optimizer, scaler, autocast,
                                   train_cld.metric_names(memory, cld))
    times = {path: [] for path in runs}
    for _ in range(2 * args.repeats):
        for path, run in runs.items():
            times[path].append(timed(device, end_to_end(run)))
    best = {path: (min(w for w, _ in t), min(c for _, c in t)) for path, t in times.items()}
    for path, seconds in times.items():
        walls = [w for w, _ in seconds]
        emit(part="quick", path=path, epoch_seconds_best=best[path][0], epoch_seconds_median=float(np.median(walls)),
             epoch_seconds=walls, vs_loader=best[path][0] / best["loader"][0], epoch_cpu_seconds_best=best[path][1],
             cpu_vs_loader=best[path][1] / best["loader"][1])
    run = runs["device"]
    knn = best_of(args.repeats, device, lambda: train_cld.knn_eval(run.raw_model.embed, run.knn_train, run.knn_test,
                                                                   device, 200, run.args.ins_t))
    emit(part="quick", path="kNN monitor", seconds=knn)


# ----------------------------------------------------------------------------- kNN

def bench_knn(args, device):
    """lib/knn.knn_scores over a 50,000-image bank and 10,000 test images (128-d, 10 classes, k 200)."""
    train = F.normalize(torch.randn(50_000, 128, device=device), dim=1)
    test = F.normalize(torch.randn(10_000, 128, device=device), dim=1)
    labels = torch.randint(0, 10, (50_000,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = best_of(args.repeats, device, lambda: knn_scores(test, train, labels, 10, k=200, sigma=0.1))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
        how = "torch.cuda.max_memory_allocated above the inputs"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        how = "rise of the process's peak resident memory (ru_maxrss), measured first in the process"
    emit(part="knn", bank=50_000, test=10_000, dim=128, k=200, seconds=seconds, peak_extra_mib=peak / 2**20,
         memory_measure=how)


# ----------------------------------------------------------------------------- image folders at 224 px

def jpeg_train_folder(args, n):
    """The train/ folder of --folder-root (experiments/jpeg_folder.py), or n JPEG files written to a temporary
    folder: (folder, the temporary root to remove or None)."""
    if args.folder_root:
        return os.path.join(args.folder_root, "train"), None
    root = tempfile.mkdtemp(prefix="bench-jpegs-")
    return write_jpegs(os.path.join(root, "train"), n), root


def bench_folder(args, device):
    """Views/s at 224 px on photographs saved as JPEG, aug-plus, 3 views per image: the loader path (PIL) and
    the folder device path, with --workers 0 and N (on a GPU the loader with N only: with 0 it would take a
    minute); then decoding alone, nvJPEG's pixels against PIL's (CUDA), and crop-and-resize alone."""
    from PIL import Image
    from lib.data import FolderDataset
    size, views, batch = 224, 3, args.folder_batch
    info = dataset_info("imagenet")
    folder, temporary = jpeg_train_folder(args, args.folder_images)
    paths = [path for path, _ in FolderDataset(folder).samples][:args.folder_images]
    n = len(paths) - len(paths) % batch
    sampler = EpochSampler(n, batch, 0, 1, 0)
    kilobytes = np.mean([os.path.getsize(p) for p in paths]) / 1024
    common = dict(size=size, recipe="aug-plus", views_per_image=views, batch=batch, images=n,
                  mean_file_kib=round(float(kilobytes), 1), omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    worker_counts = [args.workers] if device.type == "cuda" else sorted({0, args.workers})
    for workers in worker_counts:
        dataset = FolderDataset(folder, transform=MultiView(train_transform(info, "aug-plus", False, size), views))
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda", persistent_workers=workers > 0)

        def through_loader():
            for batch_views, _, _ in loader:
                [v.to(device, non_blocking=True) for v in batch_views]
        through_loader()  # starts the workers, warms PIL and the page cache
        seconds = best_of(args.repeats, device, through_loader)
        emit(part="folder", what=f"loader path (PIL), {workers} workers", views_per_s=views * n / seconds, **common)
    recipe = recipe_for("aug-plus", size)
    for workers in sorted({0, args.workers}):
        first_n = SubsetDataset(FolderDataset(folder), np.arange(n))  # the sampler's n images
        batches = folder_device.FolderBatches.build(first_n, sampler, recipe, False, info, size, views, 0, 0, device,
                                                    workers)
        list(batches)
        seconds = best_of(args.repeats, device, lambda: list(batches))
        emit(part="folder", what=f"device path (decode + views), {workers} workers", views_per_s=views * n / seconds,
             target=FOLDER_VIEWS_TARGET if device.type == "cuda" else None, **common)
    files = folder_device.collate([folder_device.FileBytes(FolderDataset(folder))[k] for k in range(batch)])[0]
    seconds = best_of(args.repeats, device, lambda: folder_device.decode(files, device))
    emit(part="folder", what="decode alone, torchvision" + (" (nvJPEG)" if device.type == "cuda" else " (libjpeg-turbo)"),
         images_per_s=batch / seconds, **common)
    raw = [bytes(data.numpy()) for data in files.data]

    def pil_decode():
        return [Image.open(io.BytesIO(data)).convert("RGB") for data in raw]
    seconds = best_of(args.repeats, device, pil_decode)
    emit(part="folder", what="decode alone, PIL", images_per_s=batch / seconds, **common)
    images = folder_device.decode(files, device)
    if device.type == "cuda":  # libjpeg-turbo (PIL, and our CPU decoder) and nvJPEG round differently
        diffs = torch.cat([(image.cpu().int() - torch.from_numpy(np.array(pil)).permute(2, 0, 1).int()).abs().flatten()
                           for image, pil in zip(images, pil_decode())]).float()
        emit(part="folder", what="nvJPEG's pixels against PIL's", mean_abs_diff=diffs.mean().item(),
             max_abs_diff=diffs.max().item(), share_differing=(diffs > 0).float().mean().item(), **common)
    generator = torch.Generator(device=device)
    augment = BatchAugment(recipe, False, info.mean, info.std, size)
    height = folder_device.host_values([im.shape[1] for im in images], device)
    width = folder_device.host_values([im.shape[2] for im in images], device)
    boxes = [augment.draw(batch, height, width, generator.manual_seed(v), device) for v in range(views)]
    boxes = [torch.stack([p[key] for p in boxes]) for key in ("i", "j", "h", "w", "flip")]
    seconds = best_of(args.repeats, device, lambda: folder_device.crop_resize(images, *boxes, size))
    emit(part="folder", what="crop and resize alone, ours (antialiased, batched)", views_per_s=views * batch / seconds,
         **common)
    crop = transforms.RandomResizedCrop(size)
    pil_images = pil_decode()
    seconds = best_of(args.repeats, device, lambda: [crop(im) for im in pil_images for _ in range(views)])
    emit(part="folder", what="crop and resize alone, PIL's RandomResizedCrop", views_per_s=views * batch / seconds,
         **common)
    if temporary:
        shutil.rmtree(temporary, ignore_errors=True)


# Targets of experiments/gpu_check.sh on one H100 (--targets): the folder device path's views/s, decoding
# included; its end-to-end step within 10% of the step alone; no host synchronisation in a step.
FOLDER_VIEWS_TARGET, FOLDER_OVERHEAD_TARGET = 10_000, 1.10


def build_folder(args, partner, arch, size, batch, device, root, workers):
    """A train_cld Run over the image folder root (train/ and val/) on the folder device path: the imagenet
    recipe row of the partner at this arch, size and batch; K scaled with the batch as in build()."""
    row_k = 128 if partner == "npid" else 120
    argv = ["--dataset", "imagefolder", "--data", root, "--arch", arch, "--image-size", str(size), "--batch-size",
            str(batch), "--partner", partner, "--clusters", str(max(2, row_k * batch // 512)), "--data-path", "device",
            "--workers", str(workers), "--check-images", "off", "--out", tempfile.mkdtemp(prefix="bench-")]
    run_args = train_cld.parse_args(argv)
    spec = NetworkSpec.from_config(vars(run_args), 3)
    batches, sampler, knn_train, knn_test = train_cld.make_data(run_args, PARTNERS[partner].views, 0, 1, device)
    raw_model, memory, optimizer, scaler, autocast = train_cld.make_network(run_args, spec, PARTNERS[partner],
                                                                            BANK_ROWS.get(size, sampler.size), 1, device)
    raw_model.to(memory_format=train_cld.LAYOUT)
    memory.to(memory_format=train_cld.LAYOUT)
    cld = train_cld.make_cross_level(run_args)
    return train_cld.Run(run_args, 0, 1, device, spec, batches, sampler, knn_train, knn_test, raw_model, raw_model,
                         memory, cld, optimizer, scaler, autocast, train_cld.metric_names(memory, cld))


def count_data_syncs(run, steps):
    """Host synchronisations while the folder device path makes `steps` batches (CUDA's sync debug mode; the
    decoder's wait for its own nvJPEG stream is not one: it does not wait for the training stream)."""
    if run.device.type != "cuda":
        return None
    sync(run.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in zip(range(steps), iter(run.loader)):
                pass
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def bench_folder_step(args, device):
    """MoCo+CLD (three views), ResNet-50 at 224 px, batch --imagenet-batch: the step alone (a fixed batch on the
    device) against train_cld.train_epoch over the folder device path on JPEG files (steps + 1 steps), measured
    in turn --repeats times; and the host syncs per step of each (CUDA)."""
    batch, steps = args.imagenet_batch, args.steps
    if args.folder_root:
        root, temporary = args.folder_root, None
    else:
        temporary = root = tempfile.mkdtemp(prefix="bench-jpegs-")
        write_jpegs(os.path.join(root, "train"), batch * (steps + 1))
        write_jpegs(os.path.join(root, "val"), batch, seed=1)
    run = build_folder(args, "moco", "resnet50" if device.type == "cuda" else "resnet18", 224, batch, device, root,
                       args.workers)
    run.sampler.steps_per_epoch = min(run.sampler.steps_per_epoch, steps + 1)  # an epoch: steps + 1 steps
    alone = steps_alone(run, steps)
    alone()  # warm-up: allocator, autotuning
    figures = {"step alone": (alone, steps),
               "folder device path, end to end": (end_to_end(run), run.sampler.steps_per_epoch)}
    times = {path: [] for path in figures}
    for _ in range(args.repeats):
        for path, (fn, count) in figures.items():
            times[path].append(timed(device, fn)[0] / count)
    best = {path: min(t) for path, t in times.items()}
    syncs = {"step alone": count_syncs(run, min(steps, 5)), "folder device path, end to end": count_data_syncs(run, 5)}
    for path, seconds in best.items():
        emit(part="folder-step", partner="moco", arch=run.args.arch, size=224, batch=batch, path=path,
             seconds_per_step=seconds, images_per_s=batch / seconds, vs_step_alone=seconds / best["step alone"],
             host_syncs=syncs[path], target=FOLDER_OVERHEAD_TARGET if device.type == "cuda" else None, turns=times[path])
    if temporary:
        shutil.rmtree(temporary, ignore_errors=True)


def summary():
    """The folder parts' key figures, rounded."""
    out = {}
    for r in RESULTS:
        if r["part"] == "folder" and r["what"].startswith("device path"):
            out[r["what"].split(", ")[1] + ", views/s"] = round(r["views_per_s"])
        if r["part"] == "folder" and "mean_abs_diff" in r:
            out["nvJPEG vs PIL, mean |diff|"] = round(r["mean_abs_diff"], 2)
        if r["part"] == "folder-step" and r["path"] != "step alone":
            out["end to end / step alone"] = round(r["vs_step_alone"], 3)
        if r["part"] == "folder-step" and r["host_syncs"] is not None:
            out[f"host syncs, {r['path']}"] = r["host_syncs"]
    return out


def missed_targets():
    """The gpu_check targets (FOLDER_VIEWS_TARGET, FOLDER_OVERHEAD_TARGET, no host syncs) the measured records
    miss, as lines; the records carry a target only on CUDA."""
    missed = []
    for r in RESULTS:
        if r.get("target") is None:
            continue
        if r["part"] == "folder" and r["views_per_s"] < r["target"]:
            missed.append(f"{r['what']}: {r['views_per_s']:.0f} views/s, target {r['target']:,}")
        if r["part"] == "folder-step" and r["vs_step_alone"] > r["target"]:
            missed.append(f"{r['path']}: x{r['vs_step_alone']:.3f} of the step alone, target x{r['target']}")
        if r["part"] == "folder-step" and r["host_syncs"]:
            missed.append(f"{r['path']}: {r['host_syncs']} host syncs in 5 steps, target 0")
    return missed


# ----------------------------------------------------------------------------- kNN at ImageNet's size

IMAGENET_BANK, IMAGENET_CLASSES = 1_281_167, 1000


def resident_bytes():
    """This process's resident memory now (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResident:
    """The highest resident memory seen while the block runs, sampled every 2 ms by a thread: .extra is it
    minus the memory at the start (the allocations of the block, whatever the process held before)."""

    def __enter__(self):
        self.start = self.peak = resident_bytes()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)
        self.thread.start()
        return self

    def watch(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())
        self.extra = self.peak - self.start


def unit_rows(n, dim, generator):
    """[n, dim] random unit rows, built in pieces so that no temporary of the whole size is left behind."""
    out = torch.empty(n, dim)
    for start in range(0, n, 65536):
        out[start:start + 65536] = F.normalize(torch.randn(min(65536, n - start), dim, generator=generator), dim=1)
    return out


@torch.no_grad()
def knn_scores_before(test_features, train_features, train_labels, num_classes, k=200, sigma=0.1, chunk=1024):
    """lib/knn.py's knn_scores as it was before the memory budget (commit 1c701de), to measure against: blocks
    of 1,024 test rows, and the previous block still alive while the next one is built."""
    k = min(k, train_features.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk):
        sim = test_features[start:start + chunk] @ train_features.t()      # [m, N]
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], (top_sim / sigma).exp())
        scores.append(votes)
    return torch.cat(scores)


def knn_imagenet_process(args):
    """One process of a knn-imagenet measurement (plain, or one of torchrun's): ImageNet-sized random
    features, knn_scores timed and its peak memory taken; process 0 prints one JSON line per process."""
    rank, world, _ = dist.setup()
    g = torch.Generator().manual_seed(0)
    bank, test = unit_rows(IMAGENET_BANK, 128, g), unit_rows(args.knn_test, 128, g)
    labels = torch.randint(0, IMAGENET_CLASSES, (IMAGENET_BANK,), generator=g)
    old = args.knn_run == "before"
    dist.all_reduce_sum(torch.zeros(1))  # start together
    with PeakResident() as peak:
        start = time.perf_counter()
        if old:
            scores = knn_scores_before(test, bank, labels, IMAGENET_CLASSES, k=200, sigma=0.1)
        else:
            scores = knn_scores(test, bank, labels, IMAGENET_CLASSES, k=200, sigma=0.1, across_processes=True)
        seconds = time.perf_counter() - start
    assert scores.shape == (args.knn_test, IMAGENET_CLASSES)
    mine = {"rank": rank, "seconds": seconds, "peak_extra_mib": peak.extra / 2**20,
            "inputs_mib": (bank.nbytes + test.nbytes + labels.nbytes) / 2**20}
    for record in dist.gather_objects(mine):
        if rank == 0:
            print(json.dumps({**record, "processes": world, "run": args.knn_run}), flush=True)
    dist.cleanup()


def bench_knn_imagenet(args):
    """knn-imagenet: before (chunk 1,024 rows, one process: the code before the budget had no split over
    processes, so two processes each did all of it), after (the budget) in one process and in two."""
    script = os.path.abspath(__file__)
    runs = [("before", 1), ("after", 1), ("after", 2)]
    for run, processes in runs:
        launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                            "--standalone", "--nproc_per_node", str(processes)]
        env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if processes > 1 else {})}
        r = subprocess.run([*launcher, script, "--knn-run", run, "--knn-test", str(args.knn_test)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise SystemExit(f"knn-imagenet {run} on {processes} process(es) failed: {r.stderr[-2000:]}")
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                emit(part="knn-imagenet", bank=IMAGENET_BANK, test=args.knn_test, dim=128, k=200,
                     classes=IMAGENET_CLASSES, omp_num_threads=env.get("OMP_NUM_THREADS"),
                     chunk="1024 rows (before)" if run == "before" else f"budget {knn_budget_rows()} rows",
                     **record)


def knn_budget_rows():
    from lib.knn import block_rows
    return block_rows(IMAGENET_BANK)


# ----------------------------------------------------------------------------- report

def table():
    lines = ["", "| part | what | figure |", "|---|---|---|"]
    for r in RESULTS:
        if r["part"] == "augment":
            lines.append(f"| augmentation, {r['size']} px, {r['recipe']} | {r['path']} | {r['views_per_s']:.0f} views/s |")
        elif r["part"] == "step":
            cpu = (f"; CPU time x{r['cpu_vs_step_alone']:.3f}" if "cpu_vs_step_alone" in r and device_is_cpu()
                   else "")
            lines.append(f"| {r['partner'].upper()}+CLD step, {r['arch']} {r['size']} px, batch {r['batch']} | "
                         f"{r['path']} | {r['seconds_per_step'] * 1000:.0f} ms/step, {r['images_per_s']:.0f} img/s, "
                         f"x{r['vs_step_alone']:.3f} of the step alone{cpu} |")
        elif r["part"] == "share":
            lines.append(f"| {r['partner'].upper()}+CLD, batch {r['batch']}, K {r['clusters']} | {r['what']} | "
                         f"{r['seconds_per_step'] * 1000:.1f} ms/step, {100 * r['share_of_step']:.1f}% of the step |")
        elif r["part"] == "quick" and "epoch_seconds" in r:
            lines.append(f"| quick start epoch (digits, ResNet-20, batch 128, 11 steps) | {r['path']} path | "
                         f"{r['epoch_seconds_best']:.2f} s best, {r['epoch_seconds_median']:.2f} s median, "
                         f"x{r['vs_loader']:.2f} of the loader's; CPU time {r['epoch_cpu_seconds_best']:.2f} s, "
                         f"x{r['cpu_vs_loader']:.2f} |")
        elif r["part"] == "quick":
            lines.append(f"| quick start kNN monitor (1,437 x 360) | | {r['seconds']:.2f} s |")
        elif r["part"] == "precision":
            lines.append(f"| NPID+CLD step, {r['arch']} {r['size']} px, batch {r['batch']} | {r['precision']} | "
                         f"{r['seconds_per_step'] * 1000:.0f} ms/step, x{r['vs_fp32']:.2f} of fp32's time |")
        elif r["part"] == "memory":
            lines.append(f"| activations, BYOL+CLD ResNet-50 224 px, 512 images x 2 views per GPU | {r['precision']} | "
                         f"{r['saved_mib_per_image']:.0f} MiB per image, {r['activations_gib_per_gpu']:.0f} GiB per GPU; "
                         f"--accumulate {r['accumulate_for_80gib']} keeps it under 60 GiB |")
        elif r["part"] == "folder" and "views_per_s" in r:
            lines.append(f"| image folder, {r['size']} px, {r['recipe']}, {r['views_per_image']} views | {r['what']} | "
                         f"{r['views_per_s']:.0f} views/s |")
        elif r["part"] == "folder" and "images_per_s" in r:
            lines.append(f"| image folder, {r['mean_file_kib']:.0f} KiB JPEGs | {r['what']} | "
                         f"{r['images_per_s']:.0f} images/s |")
        elif r["part"] == "folder":
            lines.append(f"| image folder, {r['mean_file_kib']:.0f} KiB JPEGs | {r['what']} | "
                         f"{r['mean_abs_diff']:.2f} levels on average, {r['max_abs_diff']:.0f} at most, "
                         f"{100 * r['share_differing']:.0f}% of pixels differ |")
        elif r["part"] == "folder-step":
            syncs = "" if r["host_syncs"] is None else f", {r['host_syncs']} host syncs in 5 steps"
            lines.append(f"| MOCO+CLD step, {r['arch']} {r['size']} px, batch {r['batch']}, JPEG folder | {r['path']} | "
                         f"{r['seconds_per_step'] * 1000:.0f} ms/step, {r['images_per_s']:.0f} img/s, "
                         f"x{r['vs_step_alone']:.3f} of the step alone{syncs} |")
        elif r["part"] == "grouping":
            lines.append(f"| k-means labels changed vs fp32, f_G of {r['dataset']} after {r['epochs']} epochs, "
                         f"N {r['n']}, K {r['k']} ({r['batches']} batches) | bf16 autocast: before / after the "
                         f"float32 guard; bf16 features; fp32 + 1e-6 noise | {100 * r['before']:.1f}% / "
                         f"{100 * r['after']:.1f}%; {100 * r['bf16_features']:.1f}%; {100 * r['fp32_noise']:.1f}% |")
        elif r["part"] == "knn-imagenet":
            lines.append(f"| kNN, {r['bank']:,} bank x {r['test']:,} test, k {r['k']}, {r['chunk']} | "
                         f"process {r['rank']} of {r['processes']} | {r['seconds']:.1f} s, "
                         f"+{r['peak_extra_mib']:.0f} MiB |")
        elif r["part"] == "knn":
            lines.append(f"| kNN, {r['bank']:,} bank x {r['test']:,} test, k {r['k']} | time, peak memory | "
                         f"{r['seconds']:.2f} s, +{r['peak_extra_mib']:.0f} MiB |")
    return "\n".join(lines)


def device_is_cpu():
    return not torch.cuda.is_available()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    p.add_argument("--batch", type=int, default=256 if gpu else 32, help="training batch (CIFAR ResNet-18)")
    p.add_argument("--steps", type=int, default=50 if gpu else 3, help="steps per timed figure")
    p.add_argument("--repeats", type=int, default=3, help="each figure is the best of this many")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="N of the loader's N workers")
    p.add_argument("--aug-batch", type=int, default=256)
    p.add_argument("--aug-batches", type=int, default=20 if gpu else 4)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu, help="also the compiled step")
    p.add_argument("--imagenet", action="store_true", help="also ResNet-50 at 224 px (batch --imagenet-batch)")
    p.add_argument("--imagenet-batch", type=int, default=128)
    p.add_argument("--parts", default="knn,quick,augment,step,precision,memory",
                   help="which parts, comma-separated; also folder, folder-step, knn-imagenet, grouping (not run by "
                        "default)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="also write the table, with the machine and the command, to FILE (docs/results/)")
    p.add_argument("--folder-images", type=int, default=1024 if gpu else 128, help="JPEG files of the folder part")
    p.add_argument("--folder-batch", type=int, default=256 if gpu else 64, help="images per batch, folder part")
    p.add_argument("--folder-root", default=None,
                   help="an image folder of experiments/jpeg_folder.py for the folder parts (default: written here)")
    p.add_argument("--targets", action="store_true",
                   help="exit 1 when a measured figure misses its gpu_check target (CUDA only: folder views/s, "
                        "folder-step overhead and host syncs)")
    p.add_argument("--grouping-ckpt", nargs="+", default=[], metavar="CKPT",
                   help="train_cld.py checkpoints (lam > 0) whose f_G the grouping part clusters")
    p.add_argument("--grouping-batches", type=int, default=20, help="random batches per (N, K), grouping part")
    p.add_argument("--knn-test", type=int, default=2048, help="test images of the knn-imagenet part")
    p.add_argument("--knn-run", choices=["before", "after"], default=None,
                   help="internal: one process of the knn-imagenet part")
    args = p.parse_args()
    if args.knn_run:
        return knn_imagenet_process(args)
    device = torch.device("cuda" if gpu else "cpu")
    parts = args.parts.split(",")
    if "grouping" in parts and not args.grouping_ckpt:
        p.error("the grouping part needs --grouping-ckpt: checkpoints of train_cld.py runs with --lam > 0")
    emit(part="machine", device=torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine(),
         cpu=cpu_model(), cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
         omp_num_threads=os.environ.get("OMP_NUM_THREADS"), load_before=os.getloadavg(), torch=torch.__version__,
         batch=args.batch, steps=args.steps, repeats=args.repeats)
    if "knn" in parts:  # first: the CPU peak-memory figure is a rise of the process's high-water mark
        bench_knn(args, device)
    if "quick" in parts:
        bench_quick(args, device)
    if "augment" in parts:
        bench_augment(args, device)
    if "step" in parts:
        bench_training(args, device, "resnet18_cifar", 32, args.batch)
        if args.imagenet:
            bench_training(args, device, "resnet50", 224, args.imagenet_batch)
    if "precision" in parts:
        bench_precision(args, device)
    if "memory" in parts:
        bench_memory(args)
    if "folder" in parts:
        bench_folder(args, device)
    if "folder-step" in parts:
        bench_folder_step(args, device)
    if "knn-imagenet" in parts:
        bench_knn_imagenet(args)
    if "grouping" in parts:
        bench_grouping(args, device)
    emit(part="machine", load_after=os.getloadavg())
    text = table()
    print(text)
    if args.markdown:
        first, last = RESULTS[0], RESULTS[-1]
        head = (f"# experiments/benchmark.py on {first['cpu'] or first['device']} ({first['cores']} cores"
                f"{', ' + first['device'] if gpu else ''})\n\n`{' '.join(['python', *sys.argv])}` with "
                f"OMP_NUM_THREADS={first['omp_num_threads']}, torch {first['torch']}, {first['torch_threads']} "
                f"threads; load {first['load_before'][0]:.1f} before, {last['load_after'][0]:.1f} after. Each figure "
                f"is the best of {args.repeats} turns; figures compared with each other were measured in turn.\n")
        with open(args.markdown, "w") as f:
            f.write(head + text + "\n")
    if args.targets:  # one last JSON line: what gpu_check.sh prints beside the item
        missed = missed_targets()
        print(json.dumps({"targets": "missed" if missed else "met", **summary()}), flush=True)
        if missed:
            print("targets missed: " + "; ".join(missed), file=sys.stderr)
            sys.exit(1)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return None


if __name__ == "__main__":
    main()
