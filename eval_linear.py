"""Linear evaluation, semi-supervised fine-tuning and backbone export of a trained checkpoint (paper Tables 1, 5, 6).

    python eval_linear.py --ckpt runs/digits/last.pth --cached-features        # the cheap path, CPU-sized
    torchrun --nproc_per_node=8 eval_linear.py --ckpt runs/in_cld/last.pth      # MoCo's linear protocol
    torchrun --nproc_per_node=4 eval_linear.py --ckpt runs/in_cld/last.pth --label-fraction 0.01
    python eval_linear.py --ckpt runs/in_cld/last.pth --export r50.pth --export-only

Modes (the JSON line says which one ran):
  linear         frozen backbone in eval mode, a linear classifier on its pooled feature, trained on
                 augmented images; afterwards every backbone weight and BatchNorm buffer is compared
                 with its value before training and the run fails if one moved.
  linear-cached  the same classifier on features computed once with the test transform, no augmentation.
  finetune       --label-fraction F: the whole network (BatchNorm in train mode) is fine-tuned on a
                 class-balanced fraction F of the training labels.
The dataset is the checkpoint's unless --dataset/--data say otherwise. A run pretrained on a subset of
it (train_cld.py --subset, e.g. a long-tailed one) trains the classifier on that subset and also reports
ImageNet-LT's many (> 100 training images) / medium / few (< 20) accuracy.
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Subset, TensorDataset
from tqdm import tqdm

from lib import checkpoint, cli, dist, jsonl, precision
from lib.cli import BELOW_ONE, NON_NEGATIVE, POSITIVE, SEED
from lib.augment import test_transform
from lib.data import DATASET_NAMES, DatasetError, dataset_info, load_dataset
from lib.subsets import subset_dataset
from lib.knn import extract_features
from lib.linear import (BackboneChanged, ExportError, balanced_subset, check_unchanged, linear_head, probe_transform,
                        snapshot, torchvision_state)
from lib.longtail import class_counts, shot_accuracy

# Each mode's schedule. linear: MoCo's protocol (He et al. 2020, main_lincls.py), which the authors'
# scripts/imagenet/test_imagenet_moco_cld.sh runs on their ImageNet models; used here for every
# dataset. finetune: the semi-supervised recipe of the supplementary (§2, item 5: OpenSelfSup's
# benchmark), chosen there by a grid search.
RECIPES = {
    "linear": dict(epochs=100, lr=30.0, batch_size=256, wd=0.0, milestones=[60, 80], gamma=0.1),
    "finetune": dict(epochs=20, lr=0.01, batch_size=256, wd=1e-4, milestones=[12, 16], gamma=0.2),
}
SOURCES = {"linear": "MoCo", "finetune": "CLD supplementary"}


def recipe_help(name):
    return "default " + ", ".join(f"{RECIPES[mode][name]} ({mode}, {SOURCES[mode]})" for mode in RECIPES)


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by train_cld.py (RUN/last.pth)")
    p.add_argument("--dataset", default=None, choices=DATASET_NAMES,
                   help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data", default=None, help="dataset root; default: the checkpoint's")
    p.add_argument("--cached-features", action="store_true",
                   help="compute the backbone features once, then train the classifier on them without augmentation")
    p.add_argument("--label-fraction", type=float, default=None,
                   help="fine-tune the whole network on this class-balanced fraction of the training labels, "
                        "in (0, 1]; the paper: 0.01 and 0.1 of ImageNet")
    p.add_argument("--export", default=None, metavar="PATH",
                   help="also write the pretrained backbone as a torchvision ResNet state dict without fc")
    p.add_argument("--export-only", action="store_true", help="write --export and stop, without evaluating")
    # optimisation
    p.add_argument("--epochs", type=int, help="passes over the labelled images; " + recipe_help("epochs"))
    p.add_argument("--lr", type=float, help="classifier lr (linear), backbone lr (finetune); " + recipe_help("lr"))
    p.add_argument("--head-lr-mult", type=float, default=100.0,
                   help="finetune: the classifier's lr is --lr times this (CLD supplementary: 100)")
    p.add_argument("--batch-size", type=int, help="global batch over all processes; " + recipe_help("batch_size"))
    p.add_argument("--wd", type=float, help="weight decay; " + recipe_help("wd"))
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (MoCo's main_lincls.py; supplementary §2: 0.9)")
    p.add_argument("--milestones", type=int, nargs="+", help="epochs at which the lr is multiplied by --gamma; "
                   + recipe_help("milestones"))
    p.add_argument("--gamma", type=float, help="lr step factor; " + recipe_help("gamma"))
    p.add_argument("--aug", action=argparse.BooleanOptionalAction, default=True,
                   help="augment the training images (linear, finetune); --no-aug feeds them the test transform, "
                        "the images --cached-features computes its features from")
    # bookkeeping
    p.add_argument("--seed", type=int, default=0, help="classifier init, data order and the labelled subset")
    p.add_argument("--eval-batch-size", type=int, default=256, help="images per forward pass when nothing is trained")
    p.add_argument("--workers", type=int, default=4, help="DataLoader processes per training process")
    precision.add_flag(p)
    cli.add_result(p)
    cli.add_trust_checkpoint(p)
    args = p.parse_args(argv)
    if args.label_fraction is not None and not 0 < args.label_fraction <= 1:
        p.error(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
    if args.label_fraction is not None and args.cached_features:
        p.error("--cached-features trains only a linear classifier; --label-fraction fine-tunes the backbone too")
    if args.export_only and not args.export:
        p.error("--export-only needs --export PATH")
    args.mode = "finetune" if args.label_fraction is not None else "linear-cached" if args.cached_features else "linear"
    for name, value in RECIPES["finetune" if args.mode == "finetune" else "linear"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    cli.check_ranges(p, args, {"epochs": POSITIVE, "lr": POSITIVE, "head_lr_mult": POSITIVE, "batch_size": POSITIVE,
                               "wd": NON_NEGATIVE, "momentum": BELOW_ONE, "milestones": POSITIVE, "gamma": POSITIVE,
                               "seed": SEED, "eval_batch_size": POSITIVE, "workers": NON_NEGATIVE})
    cli.input_file(p, "--ckpt", args.ckpt, "a checkpoint written by train_cld.py (RUN/last.pth)")
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    cli.output_file(p, "--export", args.export)
    cli.output_file(p, "--result", args.result)
    return args


def export_backbone(backbone, config, channels, path, write):
    """Every process checks that the backbone is exportable (so all fail alike); one writes the file."""
    state, name, how = torchvision_state(backbone, config["arch"], channels)
    if write:
        checkpoint.save_atomic(state, path)
    return {"export": path, "torchvision_model": name, "export_loading": how or "strict apart from fc"}


def labelled_data(args, config, dataset, root, size):
    """(train set, its labels [N], test set, whether the run's pretraining subset applies)."""
    info = dataset_info(dataset)
    augment = args.aug and args.mode != "linear-cached"
    train_set = load_dataset(dataset, root, "train", probe_transform(info, size) if augment else test_transform(info, size))
    test_set = load_dataset(dataset, root, "test", test_transform(info, size))
    on_subset = bool(config.get("subset")) and dataset == config["dataset"]
    if on_subset:  # the classifier sees the (long-tailed) subset the backbone was pretrained on
        train_set = subset_dataset(train_set, config["subset"])
    labels = np.asarray(train_set.targets)
    if args.mode == "finetune":
        keep = balanced_subset(labels, args.label_fraction, args.seed)
        train_set, labels = Subset(train_set, keep), labels[keep]
    return train_set, labels, test_set, on_subset


def make_loader(args, train_set, rank, world):
    """This process's share of a fresh permutation each epoch (the sampler's set_epoch)."""
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    if args.mode == "linear-cached":  # a batch is one slice of the feature tensor, no per-item collation
        return DataLoader(train_set, sampler=BatchSampler(sampler, args.batch_size // world, drop_last=False),
                          batch_size=None), sampler
    return DataLoader(train_set, batch_size=args.batch_size // world, sampler=sampler, num_workers=args.workers,
                      pin_memory=torch.cuda.is_available()), sampler


def make_classifier(args, backbone, num_classes, device, world):
    """(head, the network the loop trains, optimizer, lr schedule). linear: the head alone, on features;
    finetune: backbone + head on images, the head's lr multiplied by --head-lr-mult."""
    head = linear_head(backbone.out_dim, num_classes).to(device)
    if args.mode == "finetune":
        net = nn.Sequential(backbone, head)                                  # images [B, C, H, W] -> logits [B, K]
        groups = [{"params": backbone.parameters(), "lr": args.lr},
                  {"params": head.parameters(), "lr": args.lr * args.head_lr_mult}]
    else:
        backbone.requires_grad_(False)
        net = head                                                           # features [B, out_dim] -> logits [B, K]
        groups = [{"params": head.parameters(), "lr": args.lr}]
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.milestones, args.gamma)
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return head, net, optimizer, scheduler


def train(args, net, backbone, loader, sampler, optimizer, scheduler, device, rank, autocast, scaler):
    """linear: the frozen backbone's forward under `autocast`, the classifier and its loss in float32 (a
    probe is a measurement). finetune: the whole network under `autocast`, fp16 with the gradient scaler."""
    bar = tqdm(range(args.epochs), desc=args.mode, disable=True if rank else None, leave=False, dynamic_ncols=True)
    for epoch in bar:
        sampler.set_epoch(epoch)
        net.train()
        backbone.train(args.mode == "finetune")  # linear: BatchNorm keeps the running statistics of pretraining
        total, count = 0.0, 0
        for x, y, *_ in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.mode == "finetune":
                with autocast:
                    logits = net(x)
            else:
                if args.mode == "linear":
                    with torch.no_grad(), autocast:
                        x = backbone(x)                                      # [B, out_dim]
                logits = net(x.float())
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total, count = total + loss.item() * len(y), count + len(y)
        scheduler.step()
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")


@torch.no_grad()
def test_logits(args, backbone, head, test_set, test_features, device, autocast):
    """[M, K] for the test split: the head on the cached features, or the images through backbone (under
    `autocast`) and head (float32)."""
    backbone.eval()
    head.eval()
    if test_features is not None:
        return head(test_features)
    classify = precision.float32(head)

    def logits(images):
        with autocast:
            return classify(backbone(images))
    return extract_features(logits, test_set, device, args.eval_batch_size, args.workers)


def accuracy(logits, labels):
    """logits [M, K], labels [M] -> (top1, top5) in percent and the top-1 hits [M]."""
    ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices             # [M, 5]
    hits = ranked == labels[:, None]
    return hits[:, 0].float().mean().item() * 100, hits.any(dim=1).float().mean().item() * 100, hits[:, 0]


def shot_metrics(hits, test_labels, train_labels, num_classes):
    """many (> 100 training images) / medium / few (< 20) accuracy, ImageNet-LT's split of the classes."""
    counts = class_counts(train_labels, num_classes)                         # [K]
    shots = shot_accuracy(hits.cpu().numpy(), test_labels.cpu().numpy(), counts, many=100, few=20)
    return {group: None if value is None else round(value, 2) for group, value in shots.items()}  # None: no such class


def settings(args, config, dataset, size):
    """What the JSON line says about how the numbers were made."""
    out = {"mode": args.mode, "epochs": args.epochs, "lr": args.lr, "batch": args.batch_size, "wd": args.wd,
           "milestones": args.milestones, "gamma": args.gamma}
    if args.mode == "finetune":
        out.update(label_fraction=args.label_fraction, head_lr=args.lr * args.head_lr_mult)
    if not args.aug or args.mode == "linear-cached":
        out["augmentation"] = "none (test transform)"
    else:
        out["augmentation"] = "padded random crop + flip" if size <= 96 else "RandomResizedCrop + flip"
    return {**out, "dataset": dataset, "arch": config["arch"], "image_size": size, "seed": args.seed}


def main(args):
    started = time.time()
    rank, world, device = dist.setup()
    if args.batch_size % world:
        raise SystemExit(f"error: --batch-size {args.batch_size} does not split evenly over {world} processes")
    ckpt = checkpoint.load(args.ckpt, trust=args.trust_checkpoint)
    config, pretrain_epoch = ckpt["config"], ckpt.get("epoch")
    dataset = args.dataset or config["dataset"]
    root = args.data if args.data is not None else config.get("data") if dataset == config["dataset"] else None
    channels, size = dataset_info(config["dataset"]).channels, config["image_size"]
    if dataset_info(dataset).channels != channels:
        raise DatasetError(f"{args.ckpt} takes {channels}-channel images and {dataset} has {dataset_info(dataset).channels}")

    # ---- model: the pretrained backbone; heads, memory bank and optimizer state are dropped
    torch.manual_seed(args.seed)
    # The online network's backbone ("model", also in MoCo checkpoints, whose key encoder is skipped).
    backbone = checkpoint.load_network(ckpt, args.ckpt, channels).backbone.to(device).eval()
    del ckpt
    exported = export_backbone(backbone, config, channels, args.export, rank == 0) if args.export else {}
    if args.export_only:
        if rank == 0:
            print(jsonl.dumps({**exported, "arch": config["arch"], "checkpoint": args.ckpt, "epoch": pretrain_epoch}))
        return dist.cleanup()

    # ---- data: with --cached-features, one pass of the frozen backbone over each split, shared out over the processes
    used, _ = precision.resolve(args.precision, device)
    autocast = precision.autocast(device, used)
    scaler = torch.amp.GradScaler(device.type, enabled=used == "fp16" and args.mode == "finetune")
    train_set, train_labels, test_set, on_subset = labelled_data(args, config, dataset, root, size)
    test_features = None
    if args.mode == "linear-cached":
        with autocast:  # extract_features returns them as float32
            train_features = extract_features(backbone, train_set, device, args.eval_batch_size, args.workers)  # [N, out_dim]
            test_features = extract_features(backbone, test_set, device, args.eval_batch_size, args.workers)    # [M, out_dim]
        train_set = TensorDataset(train_features.cpu(), torch.as_tensor(train_labels))
    loader, sampler = make_loader(args, train_set, rank, world)

    # ---- training, then proof that a linear evaluation left the backbone as it found it
    frozen = snapshot(backbone) if args.mode != "finetune" else None
    head, net, optimizer, scheduler = make_classifier(args, backbone, test_set.num_classes, device, world)
    train(args, net, backbone, loader, sampler, optimizer, scheduler, device, rank, autocast, scaler)
    if args.mode == "finetune":
        dist.average_buffers(backbone)  # every process then tests the same network
    else:
        check_unchanged(backbone, frozen)

    # ---- evaluation on the test split
    test_labels = torch.as_tensor(test_set.targets, device=device)
    top1, top5, hits = accuracy(test_logits(args, backbone, head, test_set, test_features, device, autocast), test_labels)

    # ---- output
    result = {"top1": round(top1, 2), "top5": round(top5, 2)}
    if on_subset:
        result.update(shot_metrics(hits, test_labels, train_labels, test_set.num_classes), subset=config["subset"])
    result.update(settings(args, config, dataset, size))
    result.update({"train_images": len(train_labels), "test_images": len(test_labels), "classes": test_set.num_classes,
                   "feature": f"pooled backbone output, {backbone.out_dim}-d", "precision": used, "checkpoint": args.ckpt,
                   "epoch": pretrain_epoch, "processes": world, "seconds": round(time.time() - started, 1), **exported})
    if rank == 0:
        print(jsonl.dumps(result))
        if args.result:
            jsonl.write_atomic(args.result, jsonl.dumps(result) + "\n")
    dist.cleanup()


if __name__ == "__main__":
    cli.run_main(main, parse_args(), errors=(BackboneChanged, ExportError))
