"""Clustering quality of a trained checkpoint on the test set: NMI, adjusted Rand index and accuracy after
Hungarian matching (the three numbers C2BIN and Contrastive Clustering report), as percentages.

    python eval_clusters.py --ckpt runs/c2bin/last.pth

Two assignments are scored against the labels (CIFAR-100: its 20 superclasses, unless --fine):
  head     a C2BIN run's own cluster heads: the argmax of the smallest-K head (no k-means);
  kmeans   spherical k-means of the evaluation feature (model.embed: f_I, or the backbone feature of a
           BYOL run) with K = the number of label classes, best of --restarts k-means++ runs: the same
           measure for every run, C2BIN's included.
Prints one JSON line.
"""
import argparse

import numpy as np
import torch

from lib import analysis, checkpoint, cli, dist, jsonl, precision
from lib.augment import test_transform
from lib.cli import POSITIVE, NON_NEGATIVE, SEED
from lib.data import cifar100_superclasses, dataset_info, load_dataset
from lib.knn import extract_features
from lib.models import ClusterHeads


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by train_cld.py (RUN/last.pth)")
    p.add_argument("--data", default=None, help="dataset root, if it moved since training")
    p.add_argument("--fine", action="store_true", help="CIFAR-100: score against the 100 classes, not the 20 superclasses")
    p.add_argument("--restarts", type=int, default=5, help="k-means++ restarts; the best objective is kept")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="k-means seeding")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=4)
    precision.add_flag(p)
    cli.add_result(p)
    cli.add_trust_checkpoint(p)
    args = p.parse_args(argv)
    cli.check_ranges(p, args, {"restarts": POSITIVE, "kmeans_iters": POSITIVE, "seed": SEED,
                               "batch_size": POSITIVE, "workers": NON_NEGATIVE})
    cli.input_file(p, "--ckpt", args.ckpt, "a checkpoint written by train_cld.py (RUN/last.pth)")
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    cli.output_file(p, "--result", args.result)
    return args


def head_assignments(model):
    """images -> [B, 1]: the cluster of the smallest-K head, from the same forward as training's f_G."""
    heads = model.group_head
    smallest = heads.scales.index(min(heads.scales))

    def assign(x):
        logits = model.parts(x)[2].split(list(heads.scales), dim=1)[smallest]
        return logits.argmax(dim=1, keepdim=True).float()
    return assign


def quality(pred, labels):
    return {name: round(100 * value, 2) for name, value in analysis.clustering_quality(pred, labels).items()}


def main(args):
    rank, world, device = dist.setup()
    ckpt = checkpoint.load(args.ckpt, trust=args.trust_checkpoint, needs=("data",))
    config = ckpt["config"]
    info = dataset_info(config["dataset"])
    root = args.data or config["data"]
    test_set = load_dataset(config["dataset"], root, "test", test_transform(info, config["image_size"]))
    labels, label_kind = np.asarray(test_set.targets), "classes"
    if config["dataset"] == "cifar100" and not args.fine:
        labels, label_kind = cifar100_superclasses(root, "test"), "superclasses"
    classes = len(np.unique(labels))
    model = checkpoint.load_network(ckpt, args.ckpt, info.channels).to(device).eval()
    used, _ = precision.resolve(args.precision, device)
    with torch.no_grad(), precision.autocast(device, used):  # the network; k-means and scores are float32
        features = extract_features(model.embed, test_set, device, args.batch_size, args.workers)
        heads = None
        if isinstance(model.group_head, ClusterHeads):
            heads = extract_features(head_assignments(model), test_set, device, args.batch_size, args.workers)
    result = {"checkpoint": args.ckpt, "epoch": ckpt.get("epoch"), "dataset": config["dataset"], "labels": label_kind,
              "label_classes": classes, "test_images": len(test_set), "precision": used}
    if rank == 0:
        clusters = analysis.kmeans_labels(features.float(), classes, args.restarts, args.kmeans_iters, args.seed)
        result["kmeans"] = quality(clusters.cpu().numpy(), labels)
        result["kmeans"].update({"k": classes, "restarts": args.restarts, "iters": args.kmeans_iters})
        if heads is not None:
            result["head"] = quality(heads[:, 0].long().cpu().numpy(), labels)
            result["head"]["k"] = min(model.group_head.scales)
        print(jsonl.dumps(result), flush=True)
        if args.result:
            jsonl.write_atomic(args.result, jsonl.dumps(result) + "\n")
    dist.cleanup()


if __name__ == "__main__":
    cli.run_main(main, parse_args())
