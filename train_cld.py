"""Self-supervised training: an instance-level partner (NPID's memory bank, MoCo's queue, BYOL's target
network) plus CLD, or C2BIN's multi-scale cluster contrast beside BYOL.

    python train_cld.py --dataset digits --out runs/digits              # one process, CPU or GPU
    torchrun --nproc_per_node=8 train_cld.py --dataset cifar10 --data ROOT --out runs/c10

Flags left unset take the authors' settings for the partner and dataset (lib/recipes.py; --print-config
shows every resolved value and where it came from); --lam 0 trains the plain partner.
"""
import signal
import sys

# Ctrl-C while the imports below load (seconds, for torch) ends quietly, as lib/cli.run_main makes it later on.
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import argparse
import contextlib
import os
import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lib import checkpoint, cli, dist, jsonl, precision, recipes, rng, runfolder, signals
from lib.augment import AUG_NAMES, MultiView, test_transform, view_recipes, view_transforms
from lib.checkpoint import CheckpointError
from lib.c2bin import ClusterContrast, default_scales
from lib.cli import BELOW_ONE, NON_NEGATIVE, POSITIVE, SEED, Range
from lib.cluster import grouping
from lib.data import (DATASET_NAMES, FOLDER_DATASETS, DatasetError, dataset_info, describe_unreadable, image_files,
                      load_dataset, unreadable_images)
from lib.batch_augment import covers
from lib.device_data import DeviceBatches
from lib.folder_device import FolderBatches, device_test_set
from lib.knn import knn_eval
from lib.losses import CrossLevel
from lib.lars import LARS, param_groups
from lib.models import ARCHS, GROUP_INPUTS, HEADS, INSTANCE_HEADS, NetworkSpec
from lib.partners import PARTNERS
from lib.sampler import EpochSampler
from lib.subsets import subset_dataset
from lib.schedule import lr_at

# Images and convolution weights are stored channels-last (NHWC): cuDNN's bf16 / fp16 convolutions need it
# for tensor cores, and on the CPU (oneDNN) it made a ResNet-20 step at 8 px 16% and a CIFAR ResNet-18 one
# at 32 px ~5% faster than NCHW (experiments/benchmark.py's machine, one thread).
LAYOUT = torch.channels_last
# Flags left unset take the value of the recipe row that fits the run (lib/recipes.py).
FROM_RECIPE = "default: the recipe row's (--print-config shows which)"


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="recipe rows (partner/dataset), the defaults of every flag left unset:\n"
                                  + recipes.help_table())
    p.add_argument("--dataset", default="digits", choices=DATASET_NAMES, help="digits is bundled with scikit-learn and needs no download")
    p.add_argument("--data", default=None, help="dataset root folder (docs/datasets.md)")
    p.add_argument("--subset", default=None, help="train on these images only: a file from make_longtail.py (e.g. CIFAR-10-LT)")
    p.add_argument("--out", required=True, help="run folder: config.json, metrics.jsonl, last.pth")
    p.add_argument("--arch", default=None, choices=ARCHS, help="default: the dataset's (CIFAR ResNet-18 for 32 px data, ResNet-50 for ImageNet)")
    p.add_argument("--image-size", type=int, default=None, help="default: the dataset's native size")
    p.add_argument("--print-config", action="store_true",
                   help="print the fully resolved settings, and where each came from, as JSON; then exit without touching data")
    # optimisation
    p.add_argument("--epochs", type=int, help="200 for CIFAR, STL-10 and ImageNet, 80 for Kitchen-HC (supplementary §2); " + FROM_RECIPE)
    p.add_argument("--batch-size", type=int, help="global batch over all processes; " + FROM_RECIPE)
    p.add_argument("--lr", type=float, help="base lr for batch 128; the run uses lr * batch/128 (authors); " + FROM_RECIPE)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--accumulate", type=int, default=1,
                   help="split each process's batch into this many micro-batches, one forward and backward each, "
                        "gradients summed into one step (less memory; BatchNorm and CLD's groups per micro-batch)")
    p.add_argument("--wd", type=float, help="weight decay (the supplementary says 1e-4 throughout; the CIFAR scripts use more); " + FROM_RECIPE)
    p.add_argument("--warmup-epochs", type=int, help="linear warmup from lr/100, then per-iteration cosine; " + FROM_RECIPE)
    p.add_argument("--optimizer", choices=["sgd", "lars"],
                   help="lars: BYOL's LARS, biases and BatchNorm excluded from adaptation and weight decay; " + FROM_RECIPE)
    p.add_argument("--lars-eta", type=float, help="LARS trust coefficient (BYOL: 0.001); " + FROM_RECIPE)
    p.add_argument("--lars-clip", action=argparse.BooleanOptionalAction,
                   help="cap each LARS step at the plain lr step (solo-learn's clip_lars_lr); " + FROM_RECIPE)
    p.add_argument("--min-lr", type=float, default=1e-6, help="where the cosine ends")
    p.add_argument("--aug", choices=AUG_NAMES, help="the authors' recipes, lib/augment.py; " + FROM_RECIPE)
    p.add_argument("--erasing", action=argparse.BooleanOptionalAction, help="RandomErasing on every view; " + FROM_RECIPE)
    # instance branch: the partner CLD joins
    p.add_argument("--partner", choices=tuple(PARTNERS), default="npid", help="the instance-level partner (lib/partners.py)")
    p.add_argument("--moco", action="store_true", help="the same as --partner moco: MoCo's key encoder and queue (CLDm)")
    p.add_argument("--byol", action="store_true",
                   help="the same as --partner byol: BYOL's target network (BYOL+CLD; --lam 0: plain BYOL); 32 px "
                        "defaults from solo-learn's CIFAR BYOL recipe, ImageNet's from BYOL / OpenSelfSup")
    p.add_argument("--c2bin", action="store_true",
                   help="C2BIN as we read its abstract: BYOL plus per-scale cluster heads whose batch assignments are "
                        "contrasted column by column (docs/methods.md); implies --partner byol")
    p.add_argument("--byol-tau", type=float, help="BYOL's base target decay, rising to 1 by a cosine; " + FROM_RECIPE)
    p.add_argument("--byol-hidden", type=int, default=4096, help="hidden width of BYOL's projector and predictor")
    p.add_argument("--byol-dim", type=int, default=256, help="BYOL's projection width")
    p.add_argument("--c2bin-scales", type=int, nargs="+",
                   help="K_s of C2BIN's cluster heads; default C, 2C, 4C for C classes (CIFAR-100: its 20 superclasses)")
    p.add_argument("--c2bin-t", type=float, default=1.0, help="temperature of C2BIN's column contrast")
    p.add_argument("--infomin", action="store_true",
                   help="the same as --partner infomin: InfoMin+CLD, MoCo's queue with three crops and a jigsaw branch")
    p.add_argument("--beta", type=float, default=0.5, help="InfoMin: weight of the jigsaw loss (authors: 0.5)")
    p.add_argument("--enqueue-twice", action="store_true",
                   help="InfoMin: the authors' trainer, which enqueues the keys after each query's loss, so the second "
                        "query meets its own key among the negatives (default: one enqueue after both; docs/methods.md)")
    p.add_argument("--dim", type=int, default=128, help="width of both heads")
    p.add_argument("--ins-t", type=float, help="T_I, the instance temperature, also the kNN sigma; " + FROM_RECIPE)
    p.add_argument("--instance-head", choices=INSTANCE_HEADS, help="byol: BYOL's projector and predictor; " + FROM_RECIPE)
    p.add_argument("--mlp", action=argparse.BooleanOptionalAction, help="MoCo v2's hidden layer shared by both heads; " + FROM_RECIPE)
    p.add_argument("--bank-momentum", type=float, default=0.5, help="m of the memory-bank update (NPID)")
    p.add_argument("--queue", type=int, help="MoCo queue length; " + FROM_RECIPE)
    p.add_argument("--moco-momentum", type=float, default=0.999, help="alpha of the key encoder's EMA (MoCo)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in the online network (several processes only)")
    # group branch (CLD)
    p.add_argument("--lam", type=float, help="weight of the CLD loss, 0 trains the plain partner; " + FROM_RECIPE)
    p.add_argument("--clusters", type=int, help="K groups per view per batch; " + FROM_RECIPE)
    p.add_argument("--cld-t", type=float, help="T_G, the cross-level temperature; " + FROM_RECIPE)
    p.add_argument("--group-head", choices=HEADS + ("shared",),
                   help="shared: no group head, CLD groups f_I itself (the one-branch ablation of supplementary "
                        "Table A.2); " + FROM_RECIPE)
    p.add_argument("--cross-view", action=argparse.BooleanOptionalAction, default=True,
                   help="CLD compares each view with the other view's groups (paper Eq. 3); --no-cross-view: with "
                        "its own view's (the ablation of supplementary Table A.2)")
    p.add_argument("--group-input", choices=GROUP_INPUTS, default="backbone",
                   help="what f_G (or C2BIN's cluster heads) reads with the byol head: the backbone feature, or the "
                        "projector's hidden layer (the authors do not say; docs/methods.md)")
    p.add_argument("--gather-groups", action="store_true",
                   help="cluster the batch gathered from all processes instead of each process's share (authors: per process)")
    p.add_argument("--kmeans-iters", type=int, default=5, help="EM iterations per step (authors: 5)")
    p.add_argument("--kmeans", default="spherical", choices=["spherical", "euclidean"],
                   help="spherical: the paper's; euclidean: the authors' code (unnormalised means, zero centroid when empty)")
    p.add_argument("--kmeans-init", default="first", choices=["first", "kmeans++"], help="first K rows of the batch (authors) or k-means++")
    p.add_argument("--cluster-method", default="kmeans", choices=["kmeans", "spectral"], help="supplementary §3")
    p.add_argument("--spectral-affinity", default="relu", choices=["relu", "abs"],
                   help="spectral: cosine with negatives set to 0 (ours) or |cos| (the authors' spectral_clustering.py)")
    # bookkeeping
    p.add_argument("--data-path", choices=["loader", "device"], default=None,
                   help="device: each batch's views built on the training device with batched tensor ops "
                        "(lib/batch_augment.py) from the whole uint8 training array held there, or for an image "
                        "folder from its files' bytes, read by --workers processes and decoded on the device "
                        "(lib/folder_device.py; nvJPEG on CUDA); loader: a DataLoader of PIL transforms in --workers "
                        "processes. Default: device, but loader for an image folder when training on the CPU")
    p.add_argument("--workers", type=int, default=4,
                   help="DataLoader processes per training process (loader path, the folder device path's file "
                        "reading, kNN)")
    p.add_argument("--sync-every", type=int, default=None,
                   help="read the step counters (skipped steps, stop signals) on the host every N steps and at the "
                        "end of each epoch; a signal is acted on at the next such step. Default: 1 on CPU, where a "
                        "read costs nothing, 20 on GPU, where each read waits for the queued work to finish")
    p.add_argument("--check-images", default="auto", choices=["auto", "on", "off"],
                   help="decode every image of a folder dataset (training and kNN test files) once before training "
                        "and list the unreadable ones; auto: on up to 50,000 files (about a minute), off above, where "
                        "a broken file stops the run at the step that meets it, naming the file")
    p.add_argument("--dist-timeout", type=float, default=1800,
                   help="seconds a process waits for the others in a collective before the run stops with an error "
                        "naming who did not answer (several processes only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-every", type=int, help="kNN monitor every N epochs, 0: only after the last; " + FROM_RECIPE)
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--save-every", type=int, default=0, help="also keep epoch_N.pth every N epochs")
    p.add_argument("--resume", default=None,
                   help="a checkpoint to continue from (last.pth or epoch_N.pth); auto: OUT/last.pth when it is "
                        "there, else a fresh start (for a requeued cluster job, or torchrun --max-restarts)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a --resume file that holds more than tensors and plain values (a checkpoint of an "
                        "earlier version) with full unpickling, which runs any code in it; only for files you trust")
    precision.add_flag(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--max-bad-steps", type=int, default=20,
                   help="stop after this many steps in a row with a non-finite loss, gradient or BatchNorm statistic "
                        "(each such step is skipped)")
    args = p.parse_args(argv)
    named = [name for name in ("moco", "byol", "infomin") if getattr(args, name)] + (["byol"] if args.c2bin else [])
    if len(set(named)) > 1:
        p.error(f"{' and '.join('--' + name for name in sorted(set(named)))} name different partners; pass one")
    if named:
        args.partner = named[0]
    args.moco = args.partner == "moco"  # kept in the config: checkpoints of earlier versions name the partner so
    args.byol, args.infomin = args.partner == "byol", args.partner == "infomin"
    info = dataset_info(args.dataset)
    args.arch = args.arch or info.default_arch
    args.image_size = info.image_size if args.image_size is None else args.image_size  # 0 is refused below, not replaced
    settings, args.sources = recipes.resolve(vars(args), args.partner, args.dataset)
    args.recipe = "/".join(recipes.row_name(args.partner, args.dataset))
    vars(args).update(settings)
    if args.c2bin:
        args.group_head, args.sources["group_head"] = "clusters", "--c2bin"
        args.c2bin_scales = args.c2bin_scales or list(default_scales(args.dataset))
    if (args.partner == "byol") != (args.instance_head == "byol"):
        p.error(f"--instance-head byol goes with the byol partner (--byol), got --instance-head {args.instance_head} "
                f"with --partner {args.partner}")
    if args.group_input == "hidden" and args.instance_head != "byol":
        p.error("--group-input hidden reads BYOL's projector hidden layer: it needs --byol")
    # A partner that feeds jigsaw tiles to the online network gets a jigsaw head of the instance head's kind.
    extra_input = hasattr(PARTNERS[args.partner], "extra_input")
    args.jigsaw_head = args.instance_head if extra_input else "none"
    # What only the loader path builds: a partner's extra input, a recipe's RandAugment.
    loader_only = ([f"the {args.partner} partner's jigsaw tiles"] if extra_input else []) + (
        [] if all(map(covers, view_recipes(args.aug, args.image_size))) else [f"the {args.aug} augmentation (RandAugment)"])
    # Image folders decode on the device only where it pays: on a CPU, PIL in --workers processes makes more
    # views per second than the training process alone (docs/imagenet-device-path.md).
    folder_on_cpu = args.dataset in FOLDER_DATASETS and training_device().type != "cuda"
    args.data_path = args.data_path or ("loader" if folder_on_cpu or loader_only else "device")
    if args.data_path == "device" and loader_only:
        p.error(f"--data-path device cannot build {' or '.join(loader_only)} on the device: use --data-path loader")
    try:
        precision.resolve(args.precision, training_device())
    except precision.PrecisionError as e:
        p.error(str(e))
    if args.sources["warmup_epochs"] == "flag" and args.warmup_epochs > args.epochs:  # a recipe's 5 fits any run
        p.error(f"--warmup-epochs must be at most --epochs ({args.epochs}), got {args.warmup_epochs}")
    check_args(p, args)
    return args


# What each numeric flag accepts; every float must also be finite.
RANGES = {
    "image_size": POSITIVE, "epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "momentum": BELOW_ONE,
    "wd": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "min_lr": NON_NEGATIVE, "dim": POSITIVE, "ins_t": POSITIVE,
    "bank_momentum": BELOW_ONE, "moco_momentum": BELOW_ONE, "lam": NON_NEGATIVE, "clusters": POSITIVE,
    "cld_t": POSITIVE, "kmeans_iters": POSITIVE, "workers": NON_NEGATIVE, "seed": SEED, "knn_every": NON_NEGATIVE,
    "knn_k": POSITIVE, "save_every": NON_NEGATIVE, "max_bad_steps": POSITIVE, "dist_timeout": POSITIVE,
    "lars_eta": POSITIVE, "byol_hidden": POSITIVE, "byol_dim": POSITIVE, "c2bin_scales": Range(2, text="2 or more"),
    "c2bin_t": POSITIVE,
    "sync_every": POSITIVE, "beta": Range(0, 1, text="in [0, 1]"), "accumulate": POSITIVE,
}


def check_args(p, args):
    """Everything that can be checked before any work starts: ranges, then the paths."""
    if args.resume == "auto":  # every process of a run decides alike: none has written anything yet
        last = os.path.join(args.out, "last.pth")
        args.resume = last if os.path.isfile(last) else None
    cli.check_ranges(p, args, {**RANGES, **({"queue": POSITIVE} if hasattr(PARTNERS[args.partner], "enqueue") else {}),
                               **({"byol_tau": BELOW_ONE} if args.partner == "byol" else {})})
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    cli.input_file(p, "--subset", args.subset, "a subset file written by make_longtail.py")
    cli.input_file(p, "--resume", args.resume, "a checkpoint, RUN/last.pth or RUN/epoch_N.pth")
    cli.output_folder(p, "--out", args.out)


METRICS = ("loss", "loss_ins", "loss_cld", "group_acc")
# What --resume reads from a checkpoint besides the network.
RESUME_CONFIG = ("dataset", "arch", "dim", "instance_head", "group_head", "mlp", "moco")
RESUME_STATE = ("memory", "optimizer", "scaler", "epoch", "step", "sums", "rng")
# What the loop keeps of a resumed checkpoint once its modules hold the rest.
POSITION = ("epoch", "step", "sums", "skipped_steps", "records", "rng")


def train_step(model, raw_model, partner, cld, views, indices, step, optimizer, scaler, autocast, stop_requested=False,
               accumulate=1):
    """One optimisation step. views: as many views of each image as the partner needs; the first two go
    through the online network (CLD runs between them), and any others the partner's online_views names.

    accumulate > 1 splits the batch into that many micro-batches, each forward and backward on its own
    (BatchNorm statistics and CLD's groups are then the micro-batch's, as they are each process's under
    torchrun), their gradients summed into one optimizer step; the partner updates once, after it, with
    what all micro-batches produced, as after one step on the whole batch (the bank rows of every image,
    every key enqueued, one EMA move).

    A step whose loss, gradient or BatchNorm statistics are not finite on any process changes nothing:
    no optimizer step, no partner update (bank rows, key encoder, queue), and the BatchNorm statistics its
    forward passes moved are put back; only an fp16 GradScaler lowers its scale, as it must to recover.
    Every process takes the same decision: the flag is all-reduced together with stop_requested (this
    process caught a signal), one collective per step. The decision stays on the device (optimizer,
    statistics and partner keep or drop their update with it), so the host never waits for the step.
    Returns (metrics [len(metric_names)], applied [] bool, any process asked to stop [] bool), all on the device.
    """
    volatile = batchnorm_buffers(raw_model) + batchnorm_buffers(partner)   # what a forward pass moves
    saved = [buffer.clone() for buffer in volatile]
    optimizer.zero_grad(set_to_none=True)
    metrics, pendings = [], []
    for k, (part, part_indices) in enumerate(micro_batches(views, indices, accumulate)):
        # DDP averages the gradients over processes once, in the last micro-batch's backward.
        syncing = k == accumulate - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if syncing else model.no_sync():
            online = [part[i] for i in getattr(partner, "online_views", (0, 1))]
            with autocast:
                (f1, g1), (f2, g2), *more = model(*online)                  # each [B, dim]
                loss_ins, pending, *partner_terms = partner.loss([f1, f2, *(f for f, _ in more)], part, part_indices)
                loss_cld, group_acc, grad_scale, *cld_terms = cld(g1, g2, step)
                loss = loss_ins + cld.lam * loss_cld
            objective = loss_ins + cld.lam * grad_scale * loss_cld
            scaler.scale(objective / accumulate if accumulate > 1 else objective).backward()
        metrics.append(torch.cat([torch.stack([loss, loss_ins, loss_cld, group_acc]).detach().float().flatten(),
                                  *(t.detach().float().flatten() for t in partner_terms + cld_terms)]))
        pendings.append(pending)
    metrics = torch.stack(metrics).mean(0) if accumulate > 1 else metrics[0]
    scaler.unscale_(optimizer)  # the gradients at their true scale; nothing to do without fp16
    grads = [p.grad for p in raw_model.parameters() if p.grad is not None]
    grad_norm = total_norm(grads) if grads else torch.zeros((), device=metrics.device)
    # A gradient norm beyond float32's range counts as non-finite; so does a BatchNorm statistic that overflowed
    # in a forward pass whose loss BatchNorm itself kept finite.
    statistics = torch.cat([buffer.flatten() for buffer in volatile if buffer.is_floating_point()] or [grad_norm[None]])
    bad = ~(torch.isfinite(metrics[0]) & torch.isfinite(grad_norm) & torch.isfinite(statistics).all())
    stop_flag = torch.full((), float(stop_requested), device=bad.device)  # a fill, not a copy from the host
    flags = dist.all_reduce_sum(torch.stack([bad.float(), stop_flag]))
    skip, any_stop = flags[0] > 0, flags[1] > 0
    with torch.no_grad():
        for buffer, value in zip(volatile, saved):
            buffer.copy_(torch.where(skip, value, buffer))
    step_unless(optimizer, skip)
    optimizer.zero_grad(set_to_none=True)
    partner.update(raw_model, merged(pendings), ~skip)  # bank, key encoder, queue: after the step, outside autograd
    scaler.update()
    return metrics, ~skip, any_stop


def micro_batches(views, indices, n):
    """The batch as n equal micro-batches: [(views, indices)], each view and indices cut alike along dim 0."""
    if n == 1:
        return [(views, indices)]
    cut = [v.chunk(n) for v in views]
    return list(zip(zip(*cut), indices.chunk(n)))


def merged(pendings):
    """What the partner's loss returned for each micro-batch, as one: tensors concatenated along dim 0, in
    micro-batch order, inside the same nesting of tuples and lists (None stays None)."""
    first = pendings[0]
    if len(pendings) == 1 or first is None:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(pendings)
    return type(first)(merged(list(parts)) for parts in zip(*pendings))


def metric_names(partner, cld):
    """The run's per-step numbers, in the order train_step returns them: METRICS, then the partner's own loss
    terms (lib/infomin.py: query and jigsaw), then the CLD term's (lib/c2bin.py: column contrast, entropy)."""
    return METRICS + tuple(getattr(partner, "terms", ())) + tuple(getattr(cld, "terms", ()))


def step_unless(optimizer, skip):
    """optimizer.step(), undone where skip (a bool tensor []) is True, without reading skip on the host.

    A fused optimizer takes the flag itself, as found_inf (how GradScaler skips steps without a sync).
    Any other steps and is then put back tensor by tensor; optimizer state the step created (the first
    step's momentum buffers) is left at zero, which for SGD without dampening is the same as none."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        start_momentum_at_zero(optimizer)
        optimizer.found_inf = skip.float()
        optimizer.step()
        del optimizer.found_inf
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    old_params = [p.detach().clone() for p in params]
    old_state = {p: {k: v.clone() for k, v in state.items() if torch.is_tensor(v)} for p, state in optimizer.state.items()}
    optimizer.step()
    with torch.no_grad():
        for p, old in zip(params, old_params):
            p.copy_(torch.where(skip, old, p))
        for p, state in optimizer.state.items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    old = old_state.get(p, {}).get(key)
                    value.copy_(torch.where(skip, torch.zeros_like(value) if old is None else old, value))


def start_momentum_at_zero(optimizer):
    """Fused SGD allocates its momentum buffers uninitialised (empty_like) on its first step and keeps them
    when that step is skipped; a zero buffer instead gives the same first step (momentum * 0 + gradient)."""
    for group in optimizer.param_groups:
        if group.get("momentum") and not group.get("dampening"):
            for p in group["params"]:
                if p.grad is not None and "momentum_buffer" not in optimizer.state[p]:
                    optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def batchnorm_buffers(module):
    """The running statistics of every BatchNorm layer in module, in module order."""
    return [b for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b in m.buffers()]


def total_norm(tensors):
    """The 2-norm of all tensors together (torch.nn.utils.get_total_norm, which torch < 2.6 lacks)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def first_non_finite(state, prefix=""):
    """The key path of the first floating-point tensor of a nested state (dicts, lists) that holds a NaN
    or an infinity, or None."""
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not torch.isfinite(value).all():
                return name
        elif isinstance(value, (dict, list, tuple)):
            found = first_non_finite(value, name)
            if found:
                return found
    return None


def refuse_non_finite(state, path):
    """CheckpointError when a weight, bank or queue entry or optimizer buffer is NaN or infinite: such a
    file would poison every resume and evaluation, and the one already at path (if any) must stay."""
    for part in ("model", "memory", "optimizer"):
        where = first_non_finite(state[part])
        if where:
            raise CheckpointError(f"not writing {path}: {part} entry {where} is not finite; "
                                  f"the checkpoint already there, if any, is kept")


# ---------------------------------------------------------------- the stages of main

def training_device():
    """The kind of device dist.setup trains on (a GPU when there is one), before it is set up."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolved_config(args, world):
    """Every setting of the run, as config.json and --print-config show it."""
    used, why = precision.resolve(args.precision, training_device())
    return {**vars(args), "world_size": world, "peak_lr": args.lr * args.batch_size / 128,
            "batch_per_process": args.batch_size // world, "precision": used, "precision_reason": why}


def check_run(args, world):
    """What needs the number of processes, and the run folder; warns when every image is its own group."""
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split evenly over {world} processes")
    if (args.batch_size // world) % args.accumulate:
        raise SystemExit(f"error: the {args.batch_size // world} images per process do not split into --accumulate "
                         f"{args.accumulate} equal micro-batches")
    per_process = args.batch_size // world // args.accumulate
    if args.lam > 0 and not args.c2bin and args.clusters >= per_process:
        zeros = (args.cluster_method == "kmeans" and args.kmeans == "euclidean" and args.kmeans_init == "first"
                 and args.clusters > per_process)
        where = "micro-batch (--accumulate)" if args.accumulate > 1 else "process"
        print(f"warning: --clusters {args.clusters} >= {per_process} images per {where}: every image becomes its own "
              f"group and CLD (paper Eq. 3) degenerates into a cross-view instance contrast within the batch over "
              f"{per_process} singleton groups"
              + (f", plus {args.clusters - per_process} zero centroids of the authors' k-means, each adding a "
                 "constant logit of 0" if zeros else ""), file=sys.stderr)
    if os.path.isdir(args.out) and dist.rank() == 0:
        runfolder.lock(args.out)  # a run still going there is named now, not taken for a finished one below
    if not args.resume and os.path.exists(os.path.join(args.out, "last.pth")):
        raise SystemExit(f"error: {args.out} already holds a run; continue it with --resume {args.out}/last.pth or pick another --out")


def make_data(args, views, rank, world, device):
    """(batches of `views` augmented views per image: a DataLoader or DeviceBatches, their sampler, kNN bank
    set, kNN test set)."""
    info = dataset_info(args.dataset)
    extra = getattr(PARTNERS[args.partner], "extra_input", None)  # e.g. InfoMin's jigsaw tiles
    augment = MultiView(view_transforms(info, args.aug, args.erasing, args.image_size), views,
                        extra and extra(info, args.image_size))
    pretrain_set = load_dataset(args.dataset, args.data, "pretrain", augment if args.data_path == "loader" else None)
    knn_train = load_dataset(args.dataset, args.data, "train", test_transform(info, args.image_size))
    knn_test = load_dataset(args.dataset, args.data, "test", test_transform(info, args.image_size))
    check_images(args, image_files(pretrain_set) + image_files(knn_test), rank, world)
    if args.subset:  # train, and take the kNN bank, on the subset only; the test set stays whole
        pretrain_set, knn_train = subset_dataset(pretrain_set, args.subset), subset_dataset(knn_train, args.subset)
    sampler = EpochSampler(len(pretrain_set), args.batch_size // world, rank, world, args.seed)
    if sampler.steps_per_epoch == 0:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the {len(pretrain_set)} training images")
    if args.data_path == "device" and args.dataset in FOLDER_DATASETS:  # files read as bytes, decoded on the device
        batches = FolderBatches.build(pretrain_set, sampler, view_recipes(args.aug, args.image_size), args.erasing, info,
                                      args.image_size, views, args.seed, rank, device, args.workers)
        return (batches, sampler, device_test_set(knn_train, info, args.image_size),
                device_test_set(knn_test, info, args.image_size))
    if args.data_path == "device":
        batches = DeviceBatches.build(pretrain_set, sampler, view_recipes(args.aug, args.image_size), args.erasing, info,
                                      args.image_size, views, args.seed, rank, device)
        return batches, sampler, knn_train, knn_test
    loader = DataLoader(pretrain_set, batch_size=args.batch_size // world, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True, generator=torch.Generator(),
                        worker_init_fn=signals.ignore_stop_signals)  # the main process decides
    return loader, sampler, knn_train, knn_test


CHECK_IMAGES_UP_TO = 50_000  # --check-images auto


def check_images(args, paths, rank, world):
    """Before any step: every image file decodes, or DatasetError listing those that do not. Each process
    reads its share; all of them raise alike."""
    if not paths or args.check_images == "off" or (args.check_images == "auto" and len(paths) > CHECK_IMAGES_UP_TO):
        if paths and args.check_images == "auto" and rank == 0:
            print(f"note: not checking the {len(paths)} image files before training (--check-images on does); a "
                  "broken one stops the run when a step meets it, naming the file", file=sys.stderr)
        return
    bad = [item for share in dist.gather_objects(unreadable_images(paths[rank::world], args.workers)) for item in share]
    if bad:
        raise DatasetError(describe_unreadable(sorted(bad), len(paths)))


def make_cross_level(args):
    if args.c2bin:
        return ClusterContrast(args.c2bin_scales, args.c2bin_t, args.lam)
    group = grouping(args.clusters, args.cluster_method, args.kmeans_iters, spherical=args.kmeans == "spherical",
                     init=args.kmeans_init, affinity=args.spectral_affinity)
    return CrossLevel(group, args.cld_t, args.lam, gather=args.gather_groups, seed=args.seed, cross=args.cross_view)


def make_network(args, spec, partner_class, dataset_size, world, device):
    """(online network, partner, optimizer, scaler, autocast), with identical initial values on every process."""
    torch.manual_seed(args.seed)
    raw_model = spec.build().to(device)
    partner = partner_class.build(raw_model, vars(args), dataset_size).to(device)
    if args.sync_bn and world > 1:  # after the key encoder's copy: it keeps plain BN and Shuffle-BN
        raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    if args.optimizer == "lars":
        optimizer = LARS(param_groups(raw_model, args.wd), lr=args.lr * args.batch_size / 128, momentum=args.momentum,
                         weight_decay=args.wd, eta=args.lars_eta, clip=args.lars_clip)
    else:
        optimizer = torch.optim.SGD(raw_model.parameters(), lr=args.lr * args.batch_size / 128,
                                    momentum=args.momentum, weight_decay=args.wd, fused=True)  # fused: skips a bad step on the device
    used, _ = precision.resolve(args.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=used == "fp16")
    return raw_model, partner, optimizer, scaler, precision.autocast(device, used)


def load_resume(args, spec, raw_model, partner, optimizer, scaler, world, train_images, width):
    """Restore a checkpoint into the run, whatever device it trains on; returns what the loop needs of it
    beyond the modules (POSITION: epoch, step, sums, skipped steps, records, RNG states).

    The file is read to the CPU and load_state_dict copies each tensor onto the module's device: the RNG
    states must stay CPU tensors (torch.set_rng_state takes no other), and nothing of the loaded file
    outlives this call (on a GPU a second copy of bank, optimizer and key encoder would)."""
    ckpt = checkpoint.load(args.resume, "cpu", trust=args.trust_checkpoint, needs=RESUME_CONFIG)
    absent = [key for key in RESUME_STATE if key not in ckpt]
    if absent:
        raise CheckpointError(f"{args.resume} cannot be resumed: it lacks {', '.join(absent)}; "
                              "pass a last.pth or epoch_N.pth written by train_cld.py")
    check_position(ckpt, args.resume, width)
    check_same_steps(args, ckpt, world, train_images)
    if args.trust_checkpoint:
        ckpt = checkpoint.convert_legacy(ckpt)
    saved = checkpoint.network_spec(ckpt, args.resume, spec.in_channels)
    for key in RESUME_CONFIG:
        if ckpt["config"].get(key) != getattr(args, key):
            raise CheckpointError(f"{args.resume} was trained with --{key.replace('_', '-')} {ckpt['config'][key]}, "
                                  f"this run asks for {getattr(args, key)}")
    for name, theirs, ours in saved.differences(spec):
        raise CheckpointError(f"{args.resume} holds a network with {name} {theirs}, this run builds {ours}")
    checkpoint.load_model_state(raw_model, ckpt["model"], args.resume)
    for key, what, target in (("memory", "partner", partner), ("optimizer", "optimizer", optimizer),
                              ("scaler", "gradient scaler", scaler)):
        try:
            if not isinstance(ckpt[key], dict):
                raise TypeError(f"a {type(ckpt[key]).__name__}, not a dict")
            target.load_state_dict(ckpt[key])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            reason = (str(e).splitlines() or [""])[0].strip() or type(e).__name__
            raise CheckpointError(f"{args.resume} cannot be resumed: its {what} state ({key!r}) does not fit this "
                                  f"run: {reason}") from None
    return {key: ckpt[key] for key in POSITION if key in ckpt}


def step_settings(config, world, train_images):
    """What decides which images step s of an epoch trains on: (flag, value) pairs."""
    return (("--batch-size", config.get("batch_size")), ("--seed", config.get("seed")),
            ("processes (WORLD_SIZE)", world), ("--subset", "given" if config.get("subset") else "none"),
            ("training images", train_images))


def check_same_steps(args, ckpt, world, train_images):
    """A checkpoint saved in the middle of an epoch resumes at its step, which means the same images only
    with the same batch size, seed, number of processes and training set: refuse otherwise. At an epoch
    boundary nothing of the old epoch is left to replay, and any of them may change."""
    if ckpt["step"] == 0:
        return
    saved = step_settings(ckpt["config"], ckpt.get("world_size", len(ckpt["rng"])), ckpt.get("train_images"))
    for (name, theirs), (_, ours) in zip(saved, step_settings(vars(args), world, train_images)):
        if theirs is not None and theirs != ours:
            raise CheckpointError(
                f"{args.resume} stopped in the middle of epoch {ckpt['epoch'] + 1} (after step {ckpt['step']}) with "
                f"{name} {theirs}; with {ours} its saved step would mean other images: resume with {name} {theirs}, "
                f"or from a checkpoint saved at the end of an epoch (epoch_N.pth)")


def check_position(ckpt, path, width):
    """The entries that say where a checkpoint stands must be what save() writes; width: the run's number of
    metrics (len(metric_names)), or the 4 of METRICS in a checkpoint written before a partner logged its terms."""
    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    problems = [
        (not count(ckpt["epoch"]), f"epoch {ckpt['epoch']!r} is not a count"),
        (not count(ckpt["step"]), f"step {ckpt['step']!r} is not a count"),
        (not count(ckpt.get("skipped_steps", 0)), f"skipped_steps {ckpt.get('skipped_steps')!r} is not a count"),
        (not (isinstance(ckpt["sums"], torch.Tensor) and ckpt["sums"].dim() in (1, 2)
              and ckpt["sums"].shape[-1] in (len(METRICS), width)),
         f"sums {tuple(getattr(ckpt['sums'], 'shape', ()))} is not [{width}] or [processes, {width}]"),
        (not (isinstance(ckpt["rng"], list) and ckpt["rng"] and all(isinstance(state, dict) and
                                                                     {"torch", "numpy", "python"} <= state.keys()
                                                                     for state in ckpt["rng"])),
         "rng is not a list of per-process generator states"),
    ]
    for bad, what in problems:
        if bad:
            raise CheckpointError(f"{path} cannot be resumed: its {what}; pass a last.pth or epoch_N.pth written "
                                  "by train_cld.py")


def claim_run_folder(args, rank, world, resumed, progress):
    """Process 0 locks --out for the run's life (another run there stops here, on every process), removes
    the temporaries killed writes left, writes config.json and brings metrics.jsonl in line with the
    checkpoint resumed from."""
    busy = None
    if rank == 0:
        try:
            runfolder.lock(args.out)
        except runfolder.FolderBusy as e:
            busy = str(e)
    busy = next((message for message in dist.gather_objects(busy) if message), None)
    if busy:
        raise runfolder.FolderBusy(busy)
    if rank == 0:
        removed = runfolder.remove_temporaries(args.out)
        if removed:
            print(f"note: removed {len(removed)} temporary file(s) that killed writes left in {args.out}: "
                  f"{', '.join(removed)}", file=sys.stderr)
        checkpoint.write_json_atomic(resolved_config(args, world), os.path.join(args.out, "config.json"))
        if resumed is not None:
            repair_metrics(args, progress)


def repair_metrics(args, progress):
    """metrics.jsonl of a resumed run: one line per epoch the checkpoint finished, whatever moment the
    previous process died at. A checkpoint resumed into another folder starts that folder's log afresh."""
    path = os.path.join(args.out, "metrics.jsonl")
    if os.path.exists(path) or os.path.samefile(os.path.dirname(os.path.abspath(args.resume)), args.out):
        runfolder.report_repair(path, *runfolder.repair_metrics(path, progress.epoch, progress.records))


def seed_processes(args, rank, world, resumed):
    """From here on each process draws its own augmentations; a resumed run continues its saved streams."""
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)
    if resumed is not None:
        states = resumed["rng"]
        if len(states) != world:
            print(f"warning: resuming {len(states)}-process RNG state on {world} processes: not bit-exact", file=sys.stderr)
        try:
            rng.restore(states[rank % len(states)])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"{args.resume} cannot be resumed: its RNG state of process {rank % len(states)} "
                                  f"is damaged ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None


@dataclass
class Run:
    """What the stages of a training run share: settings, process layout, data, network and its state."""
    args: argparse.Namespace
    rank: int
    world: int
    device: torch.device
    spec: NetworkSpec
    loader: object                  # a DataLoader or DeviceBatches (--data-path)
    sampler: EpochSampler
    knn_train: torch.utils.data.Dataset
    knn_test: torch.utils.data.Dataset
    model: torch.nn.Module          # what the step calls: raw_model, compiled and/or wrapped in DDP
    raw_model: torch.nn.Module      # what is saved and evaluated
    partner: torch.nn.Module
    cld: CrossLevel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object
    metrics: tuple                  # the names of what train_step returns per step (metric_names)


@dataclass
class Progress:
    """Where the run stands: the epoch, the steps of it already trained, the sums of the run's metrics
    (metric_names) over them, how
    many of them were skipped for a non-finite value, and how many steps in a row were (across epochs; not
    saved: a resumed run starts counting again)."""
    epoch: int
    step: int
    sums: torch.Tensor
    skipped: int = 0
    bad_streak: int = 0
    records: list = field(default_factory=list)  # the finished epochs' lines of metrics.jsonl, saved with the state

    @classmethod
    def start(cls, resumed, device, width, rank=0, world=1):
        """The position load_resume returned (None: the beginning), each process continuing its own sums of
        `width` metrics ([processes, width] since they are saved per process; earlier checkpoints hold
        process 0's only, which every process then takes, and the 4 of METRICS only, the partner's terms
        then starting from 0)."""
        if resumed is None:
            return cls(0, 0, torch.zeros(width, device=device))
        sums = resumed["sums"]
        if sums.dim() == 2:
            # Another number of processes only resumes at an epoch boundary (check_same_steps): all zero there.
            sums = sums[rank] if len(sums) == world else torch.zeros(sums.shape[-1])
        sums = torch.cat([sums, torch.zeros(width - len(sums))])
        return cls(resumed["epoch"], resumed["step"], sums.to(device), resumed.get("skipped_steps", 0),
                   records=list(resumed.get("records", [])))


class StopSignal:
    """SIGINT / SIGTERM set a flag; the next step shares it with every process, and at the next step the
    loop reads its counters (--sync-every) all of them save and exit with 128 + the signal."""

    def __init__(self):
        self.received = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: self.received.append(signum))

    def __bool__(self):
        return bool(self.received)

    def exit_code(self):
        return 128 + (self.received[0] if self.received else signal.SIGTERM)


def save(run, progress, path):
    state = {"config": vars(run.args), "network": asdict(run.spec), "model": run.raw_model.state_dict(),
             "memory": run.partner.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scaler": run.scaler.state_dict(), "epoch": progress.epoch, "step": progress.step,
             "skipped_steps": progress.skipped, "world_size": run.world, "train_images": run.sampler.size,
             "records": progress.records}
    refuse_non_finite(state, path)  # on every process: they hold the same state, so all stop alike
    # Every process's RNG and partial sums of the epoch, so that a multi-process resume is exact and each
    # process logs its own numbers.
    states, sums = zip(*dist.gather_objects((rng.capture(), progress.sums.cpu())))
    if run.rank == 0:
        checkpoint.save_atomic({**state, "sums": torch.stack(sums), "rng": list(states)}, path)


def train_epoch(run, progress, stop, last_good):
    """The rest of progress.epoch, step by step; saves and exits on a signal, or after --max-bad-steps
    non-finite steps in a row. The host reads how the steps went only every --sync-every steps and at the
    end of the epoch (a signal and a run of bad steps are acted on there). Returns the last lr."""
    args, steps = run.args, run.sampler.steps_per_epoch
    every = args.sync_every or (20 if run.device.type == "cuda" else 1)
    peak_lr = args.lr * args.batch_size / 128
    run.model.train()
    run.sampler.set_epoch(progress.epoch, progress.step)
    lr = lr_at(progress.epoch * steps + progress.step, steps, peak_lr, args.epochs, args.warmup_epochs, args.min_lr)
    bar = tqdm(epoch_batches(run, progress.epoch), total=steps, initial=progress.step,
               desc=f"epoch {progress.epoch + 1}/{args.epochs}", disable=True if run.rank else None, leave=False, dynamic_ncols=True)
    counts = StepCounts(progress, run.device)
    for step, (views, indices) in enumerate(bar, start=progress.step):
        global_step = progress.epoch * steps + step
        lr = lr_at(global_step, steps, peak_lr, args.epochs, args.warmup_epochs, args.min_lr)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        views = [v.contiguous(memory_format=LAYOUT) if v.dim() == 4 else v for v in views]  # not jigsaw tiles [B,T,C,h,w]
        with dist.guarded("a training step"):  # its collectives wait for the other processes
            metrics, applied, stopping = train_step(run.model, run.raw_model, run.partner, run.cld, views, indices,
                                                    global_step, run.optimizer, run.scaler, run.autocast, bool(stop),
                                                    args.accumulate)
        progress.step = step + 1
        progress.sums += torch.where(applied, metrics, 0.0)
        counts.add(applied, stopping, global_step, args.max_bad_steps)
        if progress.step % every and progress.step < steps:
            continue
        # ---- the host reads the counters: one wait for the device (and, on NCCL, for the others) per --sync-every steps
        with dist.guarded("reading the step counters"):
            stopping, tripped = counts.read(progress)
            loss = progress.sums[0].item() / max(1, step + 1 - progress.skipped)
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.4f}")
        if stopping:
            save(run, progress, os.path.join(args.out, "last.pth"))
            if run.rank == 0:
                print(f"stopped by signal in epoch {progress.epoch + 1}/{args.epochs} after step {step + 1} of {steps}; "
                      f"resume with --resume {args.out}/last.pth", file=sys.stderr)
            dist.cleanup()
            sys.exit(stop.exit_code())
        if tripped is not None:  # the same step on every process: the counts come from all-reduced flags
            bar.close()
            at = lr_at(tripped, steps, peak_lr, args.epochs, args.warmup_epochs, args.min_lr)
            if run.rank == 0:
                print(f"error: {args.max_bad_steps} steps in a row had a non-finite loss, gradient or BatchNorm "
                      f"statistic (epoch {tripped // steps + 1}/{args.epochs}, step {tripped % steps + 1} of {steps}, "
                      f"lr {at:.4g}), each skipped; stopped: {last_good}; "
                      f"lower --lr or raise --max-bad-steps", file=sys.stderr)
            dist.cleanup()
            sys.exit(1)
    return lr


def epoch_batches(run, epoch):
    """The rest of the epoch's (views, indices), on the training device."""
    if isinstance(run.loader, DeviceBatches):
        return iter(run.loader)
    run.loader.generator.manual_seed(hash((run.args.seed, run.rank, epoch)) & 0xFFFFFFFF)  # replays workers' seeds
    batches = signals.start_workers(run.loader)  # workers that leave SIGINT / SIGTERM to this process
    return (([v.to(run.device, non_blocking=True) for v in views], indices.to(run.device, non_blocking=True))
            for views, _, indices in batches)


class StepCounts:
    """What the loop must know of its steps, counted on the device: steps skipped this epoch, bad steps in a
    row, the first global step at which that run reached --max-bad-steps (-1: none yet), whether any
    process asked to stop. The host reads them with read(), once per --sync-every steps."""

    def __init__(self, progress, device):
        self.values = torch.tensor([progress.skipped, progress.bad_streak, -1, 0], device=device)

    def add(self, applied, stopping, global_step, max_bad_steps):
        skipped, streak, tripped, stop = self.values.unbind()
        bad = (~applied).long()
        streak = (streak + 1) * bad
        tripped = torch.where((tripped < 0) & (streak >= max_bad_steps), global_step, tripped)
        self.values = torch.stack([skipped + bad, streak, tripped, stop | stopping.long()])

    def read(self, progress):
        """Copies the counts into progress -> (stop, the step the bad run reached the limit at, or None)."""
        progress.skipped, progress.bad_streak, tripped, stop = self.values.tolist()
        return bool(stop), (tripped if tripped >= 0 else None)


def epoch_record(run, progress, lr, steps_run, train_seconds):
    """The epoch's line of metrics.jsonl: means over the applied steps (null when none was), kNN, speed."""
    args, steps = run.args, run.sampler.steps_per_epoch
    dist.average_buffers(run.raw_model)
    record = {"epoch": progress.epoch + 1, "lr": lr}
    record.update(zip(run.metrics, (dist.all_reduce_sum(progress.sums) / ((steps - progress.skipped) * run.world)).tolist()))
    record["skipped_steps"] = progress.skipped
    if (args.knn_every and (progress.epoch + 1) % args.knn_every == 0) or progress.epoch + 1 == args.epochs:
        run.raw_model.eval()
        with run.autocast:
            record["knn_top1"], record["knn_top5"] = knn_eval(run.raw_model.embed, run.knn_train, run.knn_test,
                                                              run.device, args.knn_k, args.ins_t, workers=args.workers)
    record["images_per_s"] = steps_run * args.batch_size / train_seconds
    return record


def main(args):
    """Train; returns the model and the partner (for callers that import this script)."""
    rank, world, device = dist.setup(args.dist_timeout)
    check_run(args, world)
    spec = NetworkSpec.from_config(vars(args), dataset_info(args.dataset).channels)
    partner_class = PARTNERS[args.partner]

    # ---- data, network, partner, CLD term, optimiser
    batches, sampler, knn_train, knn_test = make_data(args, partner_class.views, rank, world, device)
    raw_model, partner, optimizer, scaler, autocast = make_network(args, spec, partner_class, sampler.size, world, device)
    raw_model.to(memory_format=LAYOUT)  # in place: the optimizer keeps its parameters
    partner.to(memory_format=LAYOUT)
    cld = make_cross_level(args)
    metrics = metric_names(partner, cld)

    # ---- where to start: a checkpoint's position, or the beginning
    resumed = (load_resume(args, spec, raw_model, partner, optimizer, scaler, world, sampler.size, len(metrics))
               if args.resume else None)
    progress = Progress.start(resumed, device, len(metrics), rank, world)
    model = torch.compile(raw_model) if args.compile else raw_model
    if world > 1:  # with --lam 0 the group head gets no gradient, which DDP must be told
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                        find_unused_parameters=args.lam == 0)
    seed_processes(args, rank, world, resumed)
    claim_run_folder(args, rank, world, resumed, progress)
    run = Run(args, rank, world, device, spec, batches, sampler, knn_train, knn_test, model, raw_model, partner, cld,
              optimizer, scaler, autocast, metrics)
    stop = StopSignal()
    last_good = f"{args.resume} is untouched" if args.resume else "no checkpoint was written"

    # ---- the loop: train an epoch, record it, save, log
    while progress.epoch < args.epochs:
        started, first_step = time.time(), progress.step
        lr = train_epoch(run, progress, stop, last_good)
        record = epoch_record(run, progress, lr, sampler.steps_per_epoch - first_step, time.time() - started)
        record["seconds"] = time.time() - started
        progress = Progress(progress.epoch + 1, 0, progress.sums.zero_(), bad_streak=progress.bad_streak,
                            records=progress.records + [jsonl.strict(record)])
        save(run, progress, os.path.join(args.out, "last.pth"))
        last_good = f"{args.out}/last.pth (epoch {progress.epoch}) holds the last good state"
        if args.save_every and progress.epoch % args.save_every == 0:
            save(run, progress, os.path.join(args.out, f"epoch_{progress.epoch}.pth"))
        if rank == 0:
            jsonl.append(os.path.join(args.out, "metrics.jsonl"), record)
            tqdm.write(jsonl.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
    dist.cleanup()
    runfolder.release(args.out)
    return raw_model, partner


def main_answering_for_peers(args):
    """main, where a collective that another process left unanswered for --dist-timeout is one line."""
    with dist.peers_answer(args.dist_timeout):
        return main(args)


if __name__ == "__main__":
    args = parse_args()
    if args.print_config:
        print(jsonl.dumps(resolved_config(args, int(os.environ.get("WORLD_SIZE", 1))), indent=2))
        sys.exit(0)
    cli.run_main(main_answering_for_peers, args, errors=(dist.PeerTimeout,))
