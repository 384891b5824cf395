"""Self-supervised training with an instance-level loss (NPID's memory bank) plus CLD.

    python train_cld.py --dataset digits --out runs/digits              # one process, CPU or GPU
    torchrun --nproc_per_node=8 train_cld.py --dataset cifar10 --data ROOT --out runs/c10

Defaults are the authors' CIFAR-10 NPID+CLD setting; --lam 0 is the NPID baseline.
"""
import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from lib import checkpoint, cli, dist, jsonl, rng
from lib.checkpoint import CheckpointError
from lib.cli import BELOW_ONE, NON_NEGATIVE, POSITIVE, SEED
from lib.data import (DATASET_NAMES, MultiView, dataset_info, load_dataset, subset_dataset, test_transform,
                      train_transform)
from lib.knn import knn_eval
from lib.losses import cld_terms, npid_loss
from lib.memory import MemoryBank
from lib.moco import MomentumEncoder
from lib.models import ARCHS, HEADS, build_model


# The authors' settings, as their scripts/cifar/train_cifar10_{npid,moco}_cld.sh and
# scripts/imagenet/train_imagenet_mocov2_cld.sh pass them. A flag left unset takes its value from the
# recipe that fits the run:
# NPID+CLD (any dataset), MoCo+CLD on small images (their CIFAR-10 script), MoCo v2+CLD on ImageNet
# (their ImageNet script: lr 0.2 at batch 512 is base 0.05 per 128 images, no warm-up). On ImageNet the
# kNN monitor only runs after the last epoch: re-embedding 1.28M images every epoch costs a third of one.
RECIPES = {
    "npid": dict(batch_size=256, lr=0.03, wd=7e-4, warmup_epochs=5, clusters=128, lam=1.0, ins_t=0.1, cld_t=0.2,
                 instance_head="linear", group_head="linear", mlp=False, aug="default", erasing=False, queue=0, knn_every=1),
    "moco": dict(batch_size=256, lr=0.03, wd=8e-4, warmup_epochs=5, clusters=200, lam=0.8, ins_t=0.07, cld_t=0.2,
                 instance_head="normlinear", group_head="normlinear", mlp=False, aug="aug-plus", erasing=True, queue=12288,
                 knn_every=1),
    "moco-imagenet": dict(batch_size=512, lr=0.05, wd=1e-4, warmup_epochs=0, clusters=120, lam=0.25, ins_t=0.2, cld_t=0.4,
                          instance_head="normlinear", group_head="normlinear", mlp=True, aug="aug-plus", erasing=False,
                          queue=65536, knn_every=0),
}


def recipe_name(args):
    if not args.moco:
        return "npid"
    return "moco-imagenet" if args.dataset in ("imagenet", "imagenet100") else "moco"


def from_recipes(name):
    """Help text listing a flag's default under each recipe."""
    values = {r: RECIPES[r][name] for r in RECIPES}
    return "default " + ", ".join(f"{v} ({r})" for r, v in values.items())


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=DATASET_NAMES, help="digits is bundled with scikit-learn and needs no download")
    p.add_argument("--data", default=None, help="dataset root folder (README, Datasets)")
    p.add_argument("--subset", default=None, help="train on these images only: a file from make_longtail.py (e.g. CIFAR-10-LT)")
    p.add_argument("--out", required=True, help="run folder: config.json, metrics.jsonl, last.pth")
    p.add_argument("--arch", default=None, choices=ARCHS, help="default: the dataset's (CIFAR ResNet-18 for 32 px data, ResNet-50 for ImageNet)")
    p.add_argument("--image-size", type=int, default=None, help="default: the dataset's native size")
    # optimisation
    p.add_argument("--epochs", type=int, default=200, help="200 for CIFAR and ImageNet (paper)")
    p.add_argument("--batch-size", type=int, help="global batch over all processes; " + from_recipes("batch_size"))
    p.add_argument("--lr", type=float, help="base lr for batch 128; the run uses lr * batch/128 (authors); " + from_recipes("lr"))
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--wd", type=float, help="weight decay; " + from_recipes("wd") + " (the supplementary says 1e-4 throughout)")
    p.add_argument("--warmup-epochs", type=int, help="linear warmup from lr/100, then per-iteration cosine; " + from_recipes("warmup_epochs"))
    p.add_argument("--min-lr", type=float, default=1e-6, help="where the cosine ends")
    p.add_argument("--aug", choices=["default", "aug-plus"], help="the authors' recipes, lib/augment.py; " + from_recipes("aug"))
    p.add_argument("--erasing", action=argparse.BooleanOptionalAction, help="RandomErasing on every view; " + from_recipes("erasing"))
    # instance branch: NPID's memory bank, or MoCo's momentum encoder and queue
    p.add_argument("--moco", action="store_true", help="MoCo instead of NPID as the instance-level partner (CLDm)")
    p.add_argument("--dim", type=int, default=128, help="width of both heads")
    p.add_argument("--ins-t", type=float, help="T_I, the instance temperature, also the kNN sigma; " + from_recipes("ins_t"))
    p.add_argument("--instance-head", choices=HEADS, help=from_recipes("instance_head"))
    p.add_argument("--mlp", action=argparse.BooleanOptionalAction, help="MoCo v2's hidden layer shared by both heads; " + from_recipes("mlp"))
    p.add_argument("--bank-momentum", type=float, default=0.5, help="m of the memory-bank update (NPID)")
    p.add_argument("--queue", type=int, help="MoCo queue length: 12288 CIFAR-10, 4096 CIFAR-100, 65536 ImageNet; " + from_recipes("queue"))
    p.add_argument("--moco-momentum", type=float, default=0.999, help="alpha of the key encoder's EMA (MoCo)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in the online network (several processes only)")
    # group branch (CLD)
    p.add_argument("--lam", type=float, help="weight of the CLD loss, 0 trains the plain partner; " + from_recipes("lam"))
    p.add_argument("--clusters", type=int, help="K groups per view per batch (200 for CIFAR-100 NPID+CLD); " + from_recipes("clusters"))
    p.add_argument("--cld-t", type=float, help="T_G, the cross-level temperature; " + from_recipes("cld_t"))
    p.add_argument("--group-head", choices=HEADS, help=from_recipes("group_head"))
    p.add_argument("--gather-groups", action="store_true",
                   help="cluster the batch gathered from all processes instead of each process's share (authors: per process)")
    p.add_argument("--kmeans-iters", type=int, default=5, help="EM iterations per step (authors: 5)")
    p.add_argument("--kmeans", default="spherical", choices=["spherical", "euclidean"],
                   help="spherical: the paper's; euclidean: the authors' code (unnormalised means, zero centroid when empty)")
    p.add_argument("--kmeans-init", default="first", choices=["first", "kmeans++"], help="first K rows of the batch (authors) or k-means++")
    p.add_argument("--cluster-method", default="kmeans", choices=["kmeans", "spectral"], help="supplementary §3")
    # bookkeeping
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes per training process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-every", type=int, help="kNN monitor every N epochs, 0: only after the last; " + from_recipes("knn_every"))
    p.add_argument("--knn-k", type=int, default=200)
    p.add_argument("--save-every", type=int, default=0, help="also keep epoch_N.pth every N epochs")
    p.add_argument("--resume", default=None, help="a checkpoint to continue from (last.pth or epoch_N.pth)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a --resume file that holds more than tensors and plain values (a checkpoint of an "
                        "earlier version) with full unpickling, which runs any code in it; only for files you trust")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--max-bad-steps", type=int, default=20,
                   help="stop after this many steps in a row with a non-finite loss, gradient or BatchNorm statistic "
                        "(each such step is skipped)")
    args = p.parse_args(argv)
    args.recipe = recipe_name(args)
    for name, value in RECIPES[args.recipe].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
        elif name == "warmup_epochs" and getattr(args, name) > args.epochs:  # a recipe's 5 also fits shorter runs
            p.error(f"--warmup-epochs must be at most --epochs ({args.epochs}), got {args.warmup_epochs}")
    check_args(p, args)
    return args


# What each numeric flag accepts; every float must also be finite.
RANGES = {
    "image_size": POSITIVE, "epochs": POSITIVE, "batch_size": POSITIVE, "lr": POSITIVE, "momentum": BELOW_ONE,
    "wd": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "min_lr": NON_NEGATIVE, "dim": POSITIVE, "ins_t": POSITIVE,
    "bank_momentum": BELOW_ONE, "moco_momentum": BELOW_ONE, "lam": NON_NEGATIVE, "clusters": POSITIVE,
    "cld_t": POSITIVE, "kmeans_iters": POSITIVE, "workers": NON_NEGATIVE, "seed": SEED, "knn_every": NON_NEGATIVE,
    "knn_k": POSITIVE, "save_every": NON_NEGATIVE, "max_bad_steps": POSITIVE,
}


def check_args(p, args):
    """Everything that can be checked before any work starts: ranges, then the paths."""
    cli.check_ranges(p, args, {**RANGES, **({"queue": POSITIVE} if args.moco else {})})
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    cli.input_file(p, "--subset", args.subset, "a subset file written by make_longtail.py")
    cli.input_file(p, "--resume", args.resume, "a checkpoint, RUN/last.pth or RUN/epoch_N.pth")
    cli.output_folder(p, "--out", args.out)


class EpochSampler(Sampler):
    """This process's share of a fresh permutation every epoch.

    The permutation depends only on (seed, epoch), the tail that does not fill a global batch is
    dropped (a 5-image batch would make k-means meaningless), and global batch s is the block
    perm[s*B : (s+1)*B] whatever the number of processes. start_step skips batches already trained,
    which is how a run resumes in the middle of an epoch.
    """

    def __init__(self, size, batch_per_rank, rank, world, seed):
        self.size, self.batch, self.rank, self.world, self.seed = size, batch_per_rank, rank, world, seed
        self.steps_per_epoch = size // (batch_per_rank * world)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = perm[: self.steps_per_epoch * self.batch * self.world][self.rank::self.world]
        return iter(mine[self.start_step * self.batch:].tolist())

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.batch


def lr_at(step, steps_per_epoch, peak_lr, args):
    """Linear warmup from peak/100, then per-iteration cosine down to --min-lr."""
    warmup = args.warmup_epochs * steps_per_epoch
    if step < warmup:
        return peak_lr / 100 + (peak_lr - peak_lr / 100) * step / warmup
    progress = (step - warmup) / max(1, args.epochs * steps_per_epoch - warmup)
    return args.min_lr + 0.5 * (peak_lr - args.min_lr) * (1 + math.cos(math.pi * progress))


METRICS = ("loss", "loss_ins", "loss_cld", "group_acc")
# What --resume reads from a checkpoint besides the network.
RESUME_CONFIG = ("dataset", "arch", "dim", "instance_head", "group_head", "mlp", "moco")
RESUME_STATE = ("memory", "optimizer", "scaler", "epoch", "step", "sums", "rng")


def train_step(model, raw_model, memory, views, indices, step, optimizer, scaler, autocast, args, stop_requested=False):
    """One optimisation step. views: the two query views, plus the key view with --moco.

    A step whose loss, gradient or BatchNorm statistics are not finite on any process changes nothing:
    no optimizer step, no bank update, no key-encoder update or enqueue, and the BatchNorm statistics its
    forward passes moved are put back; only an fp16 GradScaler lowers its scale, as it must to recover.
    Every process takes the same decision: the flag is all-reduced together with stop_requested (this
    process caught a signal), one collective and one host sync per step, the one the loop already paid
    for the signal.
    Returns (metrics [4], whether the step was applied, whether any process asked to stop).
    """
    # Buffers a forward pass moves: BatchNorm statistics of the online network (and of the key encoder).
    volatile = [*raw_model.buffers(), *(memory.encoder.buffers() if args.moco else ())]
    saved = [buffer.clone() for buffer in volatile]
    with autocast:
        (f1, g1), (f2, g2) = model(views[0], views[1])                      # each [B, dim]
        if args.moco:
            keys = memory.keys(views[2])                                    # [B, dim], no gradient
            loss_ins = (memory.loss(f1, keys, args.ins_t) + memory.loss(f2, keys, args.ins_t)) / 2
        else:
            loss_ins = (npid_loss(f1, indices, memory, args.ins_t) + npid_loss(f2, indices, memory, args.ins_t)) / 2
        loss_cld = group_acc = torch.zeros((), device=f1.device)
        grad_scale = 1
        if args.lam > 0:
            loss_cld, group_acc, grad_scale = group_loss(g1, g2, step, args)
        loss = loss_ins + args.lam * loss_cld
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss_ins + args.lam * grad_scale * loss_cld).backward()
    scaler.unscale_(optimizer)  # the gradients at their true scale; nothing to do without fp16
    grads = [p.grad for p in raw_model.parameters() if p.grad is not None]
    grad_norm = total_norm(grads) if grads else torch.zeros((), device=loss.device)
    # A gradient norm beyond float32's range counts as non-finite; so does a BatchNorm statistic that overflowed
    # in a forward pass whose loss BatchNorm itself kept finite.
    statistics = torch.cat([buffer.flatten() for buffer in volatile if buffer.is_floating_point()] or [grad_norm[None]])
    bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm) & torch.isfinite(statistics).all())
    flags = dist.all_reduce_sum(torch.stack([bad.float(), torch.tensor(float(stop_requested), device=bad.device)]))
    any_bad, any_stop = (value > 0 for value in flags.tolist())
    if any_bad:
        with torch.no_grad():
            for buffer, value in zip(volatile, saved):
                buffer.copy_(value)
        optimizer.zero_grad(set_to_none=True)
    else:
        scaler.step(optimizer)
        # The bank, or the key encoder and queue, move only after the step, outside autograd.
        if args.moco:
            memory.update(raw_model, keys)
        else:
            memory.update(indices, f1.detach(), f2.detach())
    scaler.update()
    metrics = torch.stack([loss.detach(), loss_ins.detach(), loss_cld.detach(), group_acc.detach()]).float()
    return metrics, not any_bad, any_stop


def total_norm(tensors):
    """The 2-norm of all tensors together (torch.nn.utils.get_total_norm, which torch < 2.6 lacks)."""
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(tensors)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def group_loss(g1, g2, step, args):
    """CLD on this process's share of the batch (the authors' way), or with --gather-groups on the batch
    gathered from every process. Returns (loss, group accuracy, gradient scale)."""
    options = dict(method=args.cluster_method, **kmeans_options(args))
    world = dist.world_size()
    if not args.gather_groups or world == 1:
        return (*cld_terms(g1, g2, args.clusters, args.cld_t, args.kmeans_iters, **options), 1)
    g1, g2 = dist.all_gather_with_grad(g1), dist.all_gather_with_grad(g2)   # [world * B, dim]
    # Every process clusters the same gathered batch, so random seeding must draw the same numbers too.
    with torch.random.fork_rng(devices=[g1.device] if g1.device.type == "cuda" else []):
        torch.manual_seed(args.seed * 1_000_003 + step)
        loss, accuracy = cld_terms(g1, g2, args.clusters, args.cld_t, args.kmeans_iters, **options)
    # Each process only holds the gradient through its own rows and DDP averages over processes:
    # scaling by the world size turns that average into the gradient of the gathered loss.
    return loss, accuracy, world


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


def ignore_sigint(worker_id):
    """DataLoader workers ignore Ctrl-C: the main process saves a checkpoint and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def kmeans_options(args):
    if args.cluster_method == "spectral":
        return {}
    return {"spherical": args.kmeans == "spherical", "init": args.kmeans_init}


def main(args):
    """Train; returns the model and the memory bank (for callers that import this script)."""
    rank, world, device = dist.setup()
    info = dataset_info(args.dataset)
    args.arch = args.arch or info.default_arch
    args.image_size = args.image_size or info.image_size
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split evenly over {world} processes")
    batch_per_rank = args.batch_size // world
    peak_lr = args.lr * args.batch_size / 128
    if args.lam > 0 and args.clusters >= batch_per_rank:
        zeros = (args.cluster_method == "kmeans" and args.kmeans == "euclidean" and args.kmeans_init == "first"
                 and args.clusters > batch_per_rank)
        print(f"warning: --clusters {args.clusters} >= {batch_per_rank} images per process: every image becomes its own "
              f"group and CLD (paper Eq. 3) degenerates into a cross-view instance contrast within the batch over "
              f"{batch_per_rank} singleton groups"
              + (f", plus {args.clusters - batch_per_rank} zero centroids of the authors' k-means, each adding a "
                 "constant logit of 0" if zeros else ""), file=sys.stderr)
    if not args.resume and os.path.exists(os.path.join(args.out, "last.pth")):
        raise SystemExit(f"error: {args.out} already holds a run; continue it with --resume {args.out}/last.pth or pick another --out")

    # ---- data
    pretrain_set = load_dataset(args.dataset, args.data, "pretrain",
                                MultiView(train_transform(info, args.aug, args.erasing, args.image_size), 3 if args.moco else 2))
    knn_train = load_dataset(args.dataset, args.data, "train", test_transform(info, args.image_size))
    knn_test = load_dataset(args.dataset, args.data, "test", test_transform(info, args.image_size))
    if args.subset:  # train, and take the kNN bank, on the subset only; the test set stays whole
        pretrain_set, knn_train = subset_dataset(pretrain_set, args.subset), subset_dataset(knn_train, args.subset)
    sampler = EpochSampler(len(pretrain_set), batch_per_rank, rank, world, args.seed)
    if sampler.steps_per_epoch == 0:
        raise SystemExit(f"error: --batch-size {args.batch_size} is larger than the {len(pretrain_set)} training images")
    loader_rng = torch.Generator()  # seeds the loader's workers; re-seeded each epoch so resuming replays them
    loader = DataLoader(pretrain_set, batch_size=batch_per_rank, sampler=sampler, num_workers=args.workers,
                        pin_memory=device.type == "cuda", drop_last=True, generator=loader_rng,
                        worker_init_fn=ignore_sigint)

    # ---- model, bank, optimiser: identical initial values on every process
    torch.manual_seed(args.seed)
    raw_model = build_model(vars(args), info.channels).to(device)
    if args.moco:
        memory = MomentumEncoder(raw_model, args.queue, args.dim, args.moco_momentum).to(device)
    else:
        memory = MemoryBank(len(pretrain_set), args.dim, args.bank_momentum).to(device)
    if args.sync_bn and world > 1:  # after the key encoder's copy: it keeps plain BN and Shuffle-BN
        raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(raw_model)
    optimizer = torch.optim.SGD(raw_model.parameters(), lr=peak_lr, momentum=args.momentum, weight_decay=args.wd)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start_epoch, start_step, sums = 0, 0, torch.zeros(len(METRICS), device=device)
    skipped = 0  # steps of this epoch skipped for a non-finite loss or gradient
    if args.resume:
        ckpt = checkpoint.load(args.resume, device, trust=args.trust_checkpoint, needs=RESUME_CONFIG)
        absent = [key for key in RESUME_STATE if key not in ckpt]
        if absent:
            raise CheckpointError(f"{args.resume} cannot be resumed: it lacks {', '.join(absent)}; "
                                  "pass a last.pth or epoch_N.pth written by train_cld.py")
        if args.trust_checkpoint:
            ckpt = checkpoint.convert_legacy(ckpt)
        for key in RESUME_CONFIG:
            if ckpt["config"].get(key) != getattr(args, key):
                raise CheckpointError(f"{args.resume} was trained with --{key.replace('_', '-')} {ckpt['config'][key]}, "
                                      f"this run asks for {getattr(args, key)}")
        checkpoint.load_model_state(raw_model, ckpt["model"], args.resume)
        memory.load_state_dict(ckpt["memory"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step, sums = ckpt["epoch"], ckpt["step"], ckpt["sums"].to(device)
        skipped = ckpt.get("skipped_steps", 0)
    model = torch.compile(raw_model) if args.compile else raw_model
    if world > 1:  # with --lam 0 the group head gets no gradient, which DDP must be told
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                        find_unused_parameters=args.lam == 0)
    torch.manual_seed(args.seed + rank)  # from here on each process draws its own augmentations
    np.random.seed(args.seed + rank)
    random.seed(args.seed + rank)
    if args.resume:
        states = ckpt["rng"]
        if len(states) != world:
            print(f"warning: resuming {len(states)}-process RNG state on {world} processes: not bit-exact", file=sys.stderr)
        rng.restore(states[rank % len(states)])

    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        checkpoint.write_json_atomic({**vars(args), "world_size": world, "peak_lr": peak_lr,
                                      "batch_per_process": batch_per_rank, "precision": precision}, os.path.join(args.out, "config.json"))

    # SIGINT / SIGTERM: finish the current step, save, exit. Every process must stop at the same step,
    # so the flag is summed over processes after each step.
    stop_signal = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    last_good = (f"{args.resume} is untouched" if args.resume else "no checkpoint was written")

    def save(path, epoch, step):
        state = {"config": vars(args), "model": raw_model.state_dict(), "memory": memory.state_dict(),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch, "step": step, "sums": sums.cpu(), "skipped_steps": skipped}
        refuse_non_finite(state, path)  # on every process: they hold the same state, so all stop alike
        states = dist.gather_objects(rng.capture())  # every process's RNG, so a multi-process resume is exact too
        if rank == 0:
            checkpoint.save_atomic({**state, "rng": states}, path)

    # ---- training loop
    steps = sampler.steps_per_epoch
    bad_streak = 0  # steps in a row skipped for a non-finite loss or gradient
    for epoch in range(start_epoch, args.epochs):
        model.train()
        sampler.set_epoch(epoch, start_step)
        loader_rng.manual_seed(hash((args.seed, rank, epoch)) & 0xFFFFFFFF)
        lr = lr_at(epoch * steps + start_step, steps, peak_lr, args)
        started = time.time()
        bar = tqdm(loader, total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{args.epochs}",
                   disable=rank != 0, leave=False, dynamic_ncols=True)
        for step, (views, _, indices) in enumerate(bar, start=start_step):
            lr = lr_at(epoch * steps + step, steps, peak_lr, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            views = [v.to(device, non_blocking=True) for v in views]
            metrics, applied, stop = train_step(model, raw_model, memory, views, indices.to(device, non_blocking=True),
                                                epoch * steps + step, optimizer, scaler, autocast, args, bool(stop_signal))
            if applied:
                sums += metrics
                bad_streak = 0
            else:
                skipped, bad_streak = skipped + 1, bad_streak + 1
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sums[0].item() / max(1, step + 1 - skipped):.3f}", lr=f"{lr:.4f}")
            if stop:
                save(os.path.join(args.out, "last.pth"), epoch, step + 1)
                if rank == 0:
                    print(f"stopped by signal after epoch {epoch} step {step + 1}; resume with --resume {args.out}/last.pth", file=sys.stderr)
                dist.cleanup()
                sys.exit(128 + (stop_signal[0] if stop_signal else signal.SIGTERM))
            if bad_streak >= args.max_bad_steps:  # the same count on every process
                bar.close()
                if rank == 0:
                    print(f"error: {bad_streak} steps in a row had a non-finite loss, gradient or BatchNorm statistic (epoch {epoch + 1}, "
                          f"step {step + 1}, lr {lr:.4g}), each skipped; stopped: {last_good}; "
                          f"lower --lr or raise --max-bad-steps", file=sys.stderr)
                dist.cleanup()
                sys.exit(1)
        train_seconds = time.time() - started
        n_steps_run = steps - start_step
        start_step = 0

        dist.average_buffers(raw_model)
        record = {"epoch": epoch + 1, "lr": lr}
        # Means over the applied steps; an epoch without one has none (null in metrics.jsonl).
        record.update(zip(METRICS, (dist.all_reduce_sum(sums) / ((steps - skipped) * world)).tolist()))
        record["skipped_steps"] = skipped
        if (args.knn_every and (epoch + 1) % args.knn_every == 0) or epoch + 1 == args.epochs:
            raw_model.eval()
            with autocast:
                record["knn_top1"], record["knn_top5"] = knn_eval(raw_model.embed, knn_train, knn_test, device,
                                                                  args.knn_k, args.ins_t, workers=args.workers)
        record["images_per_s"] = n_steps_run * args.batch_size / train_seconds
        record["seconds"] = time.time() - started
        sums.zero_()
        skipped = 0
        save(os.path.join(args.out, "last.pth"), epoch + 1, 0)
        last_good = f"{args.out}/last.pth (epoch {epoch + 1}) holds the last good state"
        if args.save_every and (epoch + 1) % args.save_every == 0:
            save(os.path.join(args.out, f"epoch_{epoch + 1}.pth"), epoch + 1, 0)
        if rank == 0:
            jsonl.append(os.path.join(args.out, "metrics.jsonl"), record)
            tqdm.write(jsonl.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
    dist.cleanup()
    return raw_model, memory


if __name__ == "__main__":
    cli.run_main(main, parse_args())
