"""The paper's feature analysis (Table 3, Fig. 7, Figs. 4-6) for one or several checkpoints.

    python eval_features.py --ckpt runs/npid/last.pth runs/cld/last.pth --figures docs/analysis
    torchrun --nproc_per_node=8 eval_features.py --ckpt runs/imagenet100/last.pth

For each feature (backbone f, instance head f_I, group head f_G; all L2-normalised, test transform):
  R(f, Y)   top-1 retrieval: a test image's nearest training image (cosine) has its class;
  NMI(f, Y) spherical k-means (K = number of classes, best of several restarts) of the test features
            against the labels, normalised by sqrt(H(C) H(Y)); the same clusters' accuracy after
            Hungarian matching and adjusted Rand index (C2BIN's clustering quality);
  kNN       top-1 of the weighted-kNN protocol of eval_knn.py (k = 200, sigma = T_I).
Label-based numbers are percentages, as in Table 3.

Unsupervised selection score (Fig. 7), from two views of the training images drawn with the run's own
training augmentation: NMI(f, f') between the k-means labels of the two views, R(f, f') the fraction of
images whose nearest view-2 feature is their own, and the product. These are fractions in [0, 1].

stdout: one JSON line per checkpoint, then, for several checkpoints, one JSON line with the ranking and
Spearman correlations of the score (and of each factor) with kNN top-1. stderr: the same as a table.

What each measure costs, for N train, M test and S selection images, K clusters and d the summed widths of
the features measured (ResNet-50: backbone 2048, f_I and f_G 128 each), with the defaults (5 k-means restarts
of 50 iterations; S = all training images); figures for ImageNet (N 1.28M, M 50k, K 1000), in floating-point
operations (flop, two per multiply-add):
  features      (N + M + 2 S) x 2304 float32 on every process: 36 GB (13 GB with --selection-images 50000);
  R(f, Y), kNN  2 M N d flop each, in blocks of about 1 GiB (lib/knn.py): 1.6e13 per feature of d = 128,
                seconds on a GPU, about 20 minutes on one CPU core (experiments/benchmark.py knn-imagenet);
  NMI(f, Y)     k-means of the M test features: restarts x M x K floats at once (1 GB), 2 x restarts x
                iterations x M K d flop (5.8e13 for all three features: seconds on a GPU, ~20 min on 2 cores);
  selection     two views of S training images through the network (the loader path: PIL in --workers
                processes), k-means of each view (restarts x S x K floats: 26 GB), and R(f, f') over all S^2
                pairs (2 S^2 d flop: 4.2e14 for f_I alone, hours on 2 CPU cores; 7.6e15 for all three, minutes on
                a GPU, days on the CPU).
Before extracting anything the script prints a warning naming the flag that bounds a measure whose memory
exceeds the machine's (the GPU's, or the host's on the CPU) or which would take more than an hour at a rough
rate (cost_warnings; --selection-images bounds S, --restarts and --kmeans-iters the k-means).
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from lib import analysis, checkpoint, cli, dist, jsonl, precision
from lib.cli import NON_NEGATIVE, POSITIVE, SEED
from lib.augment import MultiView, test_transform, view_transforms
from lib.data import FOLDER_DATASETS, dataset_info, load_dataset
from lib.folder_device import device_test_set
from lib.subsets import subset_dataset
from lib.knn import extract_features, knn_ranked, topk_accuracy

FEATURES = ("backbone", "f_I", "f_G")
CLASS_NAMES = {"fashion-mnist": ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                                 "bag", "ankle boot")}


class InputError(Exception):
    """Input that only shows as wrong once the checkpoints are read (runs that cannot share one figure)."""


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", nargs="+", required=True, help="checkpoints written by train_cld.py (RUN/last.pth)")
    p.add_argument("--names", nargs="+", default=None, help="a display name per checkpoint; default: its run folder")
    p.add_argument("--features", nargs="+", choices=FEATURES, default=None,
                   help="default: backbone, f_I and, when the run trained one (lam > 0), f_G")
    p.add_argument("--clusters", type=int, default=None, help="K of NMI(f, Y); default: the number of classes")
    p.add_argument("--restarts", type=int, default=5, help="k-means++ restarts; the best objective is kept")
    p.add_argument("--kmeans-iters", type=int, default=50)
    p.add_argument("--k", type=int, default=200, help="kNN neighbours")
    p.add_argument("--sigma", type=float, default=None, help="kNN vote temperature; default: the run's T_I")
    p.add_argument("--selection-images", type=int, default=None,
                   help="training images (a fixed random choice) for the selection score; default: all")
    p.add_argument("--selection-feature", choices=FEATURES, default="f_I",
                   help="the feature whose score is ranked against kNN (our choice: f_I, the one kNN evaluates)")
    p.add_argument("--selection-clusters", type=int, default=None,
                   help="K of NMI(f, f'); default: the number of classes")
    p.add_argument("--figures", default=None, help="write tsne.png, retrieval.png, similarity.png, curves.png here")
    p.add_argument("--curves", nargs="+", default=[],
                   help="more run folders for curves.png (the checkpoints' own folders are always used)")
    p.add_argument("--tsne-images", type=int, default=1000, help="test images in the t-SNE plot")
    p.add_argument("--grid-queries", type=int, default=8, help="query rows of the retrieval grid")
    p.add_argument("--hist-images", type=int, default=1000, help="images whose view pairs make the histograms")
    p.add_argument("--seed", type=int, default=0, help="augmentations, k-means seeding, image choices")
    p.add_argument("--data", default=None, help="dataset root, if it moved since training")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--data-path", choices=["loader", "device"], default=None,
                   help="image folders: device decodes the train and test files on the GPU and applies the test "
                        "transform there (lib/folder_device.py; the selection views stay on the loader); loader: "
                        "PIL in --workers processes. Default: device on a GPU, loader on the CPU")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints that hold more than tensors and plain values (of an earlier version) with "
                        "full unpickling, which runs any code in them; only for files you trust")
    precision.add_flag(p)
    cli.add_result(p)
    args = p.parse_args(argv)
    cli.check_ranges(p, args, {name: POSITIVE for name in (
        "restarts", "kmeans_iters", "k", "sigma", "selection_images", "clusters", "selection_clusters", "tsne_images",
        "grid_queries", "hist_images", "batch_size")})
    cli.check_ranges(p, args, {"seed": SEED, "workers": NON_NEGATIVE})
    if args.names is not None and len(args.names) != len(args.ckpt):
        p.error(f"--names gives {len(args.names)} names for {len(args.ckpt)} checkpoints")
    # Every path before minutes of feature extraction, not after.
    for path in args.ckpt:
        cli.input_file(p, "--ckpt", path, "a checkpoint written by train_cld.py (RUN/last.pth)")
    for folder in args.curves:
        cli.input_file(p, "--curves", os.path.join(folder, "metrics.jsonl"), "run folders written by train_cld.py --out")
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    if args.figures is not None:
        cli.output_folder(p, "--figures", args.figures)
    cli.output_file(p, "--result", args.result)
    return args


def main(args):
    rank, world, device = dist.setup()
    if args.figures and rank == 0:
        os.makedirs(args.figures, exist_ok=True)
    runs, lines = [], []
    for i, path in enumerate(args.ckpt):
        run = load_run(path, args.names[i] if args.names else None, args, device)
        if rank == 0:
            for line in cost_warnings(run, args, device):
                print(line, file=sys.stderr, flush=True)
        extract(run, args, device)
        if rank == 0:
            run["result"] = evaluate(run, args)
            lines.append(jsonl.dumps(run["result"]))
            print(lines[-1], flush=True)
        runs.append(run)
    if rank == 0:
        ranking = rank_runs(runs, args) if len(runs) > 1 else None
        if ranking:
            lines.append(jsonl.dumps(ranking))
            print(lines[-1], flush=True)
        if args.result:
            jsonl.write_atomic(args.result, "".join(line + "\n" for line in lines))
        print_table(runs, ranking, args)
        if args.figures:
            write_figures(runs, args)
    dist.cleanup()


# ---------------------------------------------------------------- loading

def run_name(path):
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return folder or os.path.basename(path)


def load_run(path, name, args, device):
    """The model of one checkpoint in eval mode, its config, and its labelled train (the bank: the subset the
    run trained on, if any) and test sets with the test transform."""
    ckpt = checkpoint.load(path, trust=args.trust_checkpoint, needs=("ins_t", "data", "aug", "erasing"))
    config = ckpt["config"]
    info = dataset_info(config["dataset"])
    root = args.data or config["data"]
    train_set = load_dataset(config["dataset"], root, "train", test_transform(info, config["image_size"]))
    test_set = load_dataset(config["dataset"], root, "test", test_transform(info, config["image_size"]))
    if config.get("subset"):
        train_set = subset_dataset(train_set, config["subset"])
    model = checkpoint.load_network(ckpt, path, info.channels).to(device).eval()
    features = list(args.features or (["backbone", "f_I"] + (["f_G"] if config.get("lam", 0) > 0 else [])))
    if args.selection_feature not in features:
        features.append(args.selection_feature)
    run = {"path": path, "name": name or run_name(path), "config": config, "info": info, "epoch": ckpt.get("epoch"),
           "model": model, "train_set": train_set, "test_set": test_set, "root": root,
           "features": [f for f in FEATURES if f in features]}
    # What the features are extracted from: the sets themselves, or (image folders on the device path) their
    # files, decoded and test-transformed on the device; the sets stay for the labels and figures.
    on_device = (args.data_path or ("device" if device.type == "cuda" else "loader")) == "device"
    on_device = on_device and config["dataset"] in FOLDER_DATASETS
    run["inputs"] = ([device_test_set(d, info, config["image_size"]) for d in (train_set, test_set)] if on_device
                     else [train_set, test_set])
    run["selection_set"] = selection_set(run, args)
    return run


# ---------------------------------------------------------------- features

def all_features(model):
    """images [B, C, H, W] -> [B, width + dim_I + dim_G]: normalised backbone feature, f_I and f_G side by side,
    from one forward (CLDNet.parts, as in training; f_I is model.embed except with the byol head, whose f_I is
    the prediction and whose embed is the backbone feature). C2BIN's cluster logits are normalised here too."""
    def embed(x):
        h, f_i, g = model.parts(x)
        return torch.cat([F.normalize(h.float(), dim=1), f_i.float(), F.normalize(g.float(), dim=1)], dim=1)
    return embed


def split_features(x, model):
    """[N, width + dim_I + dim_G] -> {"backbone": [N, width], "f_I": [N, dim_I], "f_G": [N, dim_G]}."""
    return dict(zip(FEATURES, x.split(list(model.part_dims), dim=1)))


class StackedViews(torch.utils.data.Dataset):
    """Items (views [n, C, H, W], target, index) of a dataset whose transform returns a list of n views."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        views, target, index = self.dataset[i]
        return torch.stack(views), target, index


def two_views(model):
    """views [B, 2, C, H, W] -> [B, 2 F]: both views through all_features (BatchNorm is in eval mode, so
    stacking the views into one batch changes nothing)."""
    embed = all_features(model)

    def run(views):
        b = views.shape[0]
        return embed(views.flatten(0, 1)).view(b, 2, -1).flatten(1)
    return run


def selection_set(run, args):
    """The run's training images (its subset, if any) seen through its own two-view training augmentation;
    --selection-images picks a fixed random share of them."""
    config, info = run["config"], run["info"]
    views = MultiView(view_transforms(info, config["aug"], config["erasing"], config["image_size"]), 2)
    images = load_dataset(config["dataset"], run["root"], "pretrain", views)
    if config.get("subset"):
        images = subset_dataset(images, config["subset"])
    if args.selection_images and args.selection_images < len(images):
        pick = np.random.RandomState(args.seed).permutation(len(images))[:args.selection_images]
        images = Subset(images, np.sort(pick).tolist())
    return StackedViews(images)


def extract(run, args, device):
    """Adds run["train"], run["test"] ({feature: [N, d]}) and run["views"] ({feature: ([N, d], [N, d])})."""
    model = run["model"]
    used, _ = precision.resolve(args.precision, device)
    run["precision"] = used
    with precision.autocast(device, used):  # the network; every measure below is float32 (lib/analysis.py)
        train_input, test_input = run["inputs"]
        run["train"] = split_features(extract_features(all_features(model), train_input, device,
                                                       args.batch_size, args.workers), model)
        run["test"] = split_features(extract_features(all_features(model), test_input, device,
                                                      args.batch_size, args.workers), model)
        # The augmentations draw from the global generator (in this process when --workers 0).
        torch.manual_seed(args.seed + dist.rank())
        pairs = extract_features(two_views(model), run["selection_set"], device, args.batch_size, args.workers)
    half = pairs.shape[1] // 2
    first, second = split_features(pairs[:, :half], model), split_features(pairs[:, half:], model)
    run["views"] = {f: (first[f], second[f]) for f in FEATURES}


# ---------------------------------------------------------------- what the measures cost

# Rough sustained float32 rates for the time estimates (our choice): 10 TFLOP/s on a datacentre GPU; 25 GFLOP/s
# per CPU thread, about what one core of experiments/benchmark.py's machine multiplies at (AVX2, no AVX-512).
GPU_FLOPS, CPU_FLOPS_PER_THREAD = 1e13, 2.5e10
HOUR = 3600


def machine_memory(device):
    """Bytes of memory the measures can use: the GPU's, or the host's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def measure_costs(n_train, n_test, n_select, all_dims, dims, k_label, k_views, restarts, iters):
    """[(what, bytes held at once, floating-point operations, the flags that bound it)] of eval_features'
    measures; all_dims: the widths of every feature extracted, dims: of those measured."""
    d, kmeans_passes = sum(dims), restarts * (iters + 1)  # k-means++ seeding costs about one more pass
    return [
        ("the features of the train, test and selection images", (n_train + n_test + 2 * n_select) * sum(all_dims) * 4,
         0, "--selection-images"),
        ("NMI(f, Y)'s k-means of the test features", restarts * n_test * k_label * 4,
         2 * kmeans_passes * n_test * k_label * d, "--restarts or --kmeans-iters"),
        ("R(f, Y) and kNN over the train features", 0, 2 * 2 * n_test * n_train * d, "--features"),
        ("the selection score's k-means of both views", restarts * n_select * k_views * 4,
         2 * 2 * kmeans_passes * n_select * k_views * d, "--selection-images (or --restarts)"),
        ("the selection score's R(f, f') over every pair of views", 0, 2 * n_select ** 2 * d, "--selection-images"),
    ]


def cost_warnings(run, args, device):
    """One warning line per measure that would need more memory than the machine has (with the features, which
    are held throughout), or more than an hour."""
    classes = run["train_set"].num_classes
    dims = dict(zip(FEATURES, run["model"].part_dims))
    costs = measure_costs(len(run["train_set"]), len(run["test_set"]), len(run["selection_set"]), dims.values(),
                          [dims[f] for f in run["features"]], args.clusters or classes,
                          args.selection_clusters or classes, args.restarts, args.kmeans_iters)
    memory = machine_memory(device)
    rate = GPU_FLOPS if device.type == "cuda" else CPU_FLOPS_PER_THREAD * torch.get_num_threads()
    where = "this GPU" if device.type == "cuda" else "this machine"
    lines, features = [], costs[0][1]
    for k, (what, size, flops, flag) in enumerate(costs):
        # Every measure runs with the features held; it is named when it takes a good part of the memory itself
        # (a quarter, our choice: the 1 GB of a test-set k-means is not what fills a 24 GiB machine).
        held = size + (features if k else 0)
        if held > memory and size >= (memory / 4 if k else 0):
            lines.append(f"warning: {run['name']}: {what} need about {held / 2**30:.0f} GiB"
                         f"{' with the features' if k else ''}, more than {where}'s {memory / 2**30:.0f} GiB; "
                         f"{flag} bounds it")
        if flops / rate > HOUR:
            lines.append(f"warning: {run['name']}: {what} take about {flops / rate / HOUR:.0f} h at {rate:.1e} "
                         f"float operations/s (a rough rate); {flag} bounds it")
    return lines


# ---------------------------------------------------------------- measures

def evaluate(run, args):
    """The JSON record of one checkpoint."""
    config, train_set, test_set = run["config"], run["train_set"], run["test_set"]
    device = run["test"]["f_I"].device
    train_labels = torch.as_tensor(train_set.targets, device=device)
    test_labels = torch.as_tensor(test_set.targets, device=device)
    classes = train_set.num_classes
    k_label = args.clusters or classes
    k_views = args.selection_clusters or classes
    sigma = args.sigma or config["ins_t"]
    result = {"run": run["name"], "checkpoint": run["path"], "epoch": run["epoch"], "dataset": config["dataset"],
              "seed": config.get("seed"), "lam": config.get("lam"), "cld_t": config.get("cld_t"),
              "features": {}, "selection": {}}
    for f in run["features"]:
        train, test = run["train"][f], run["test"][f]
        clusters = analysis.kmeans_labels(test, k_label, args.restarts, args.kmeans_iters, args.seed)
        quality = analysis.clustering_quality(clusters.cpu().numpy(), test_set.targets)
        top1, _ = topk_accuracy(knn_ranked(test, train, train_labels, classes, args.k, sigma), test_labels)
        result["features"][f] = {
            "retrieval_top1": 100 * analysis.retrieval_top1(test, test_labels, train, train_labels),
            "nmi": 100 * quality["nmi"], "knn_top1": top1,
            "cluster_acc": 100 * quality["acc"], "ari": 100 * quality["ari"]}
        result["selection"][f] = analysis.selection_score(*run["views"][f], k_views, args.restarts, args.kmeans_iters,
                                                          args.seed)
    result.update({"selection_feature": args.selection_feature, "label_clusters": k_label,
                   "selection_clusters": k_views, "selection_images": int(run["views"]["f_I"][0].shape[0]),
                   "train_images": len(train_set), "test_images": len(test_set), "kmeans_restarts": args.restarts,
                   "kmeans_iters": args.kmeans_iters, "knn_k": args.k, "sigma": sigma, "precision": run["precision"],
                   "units": "features.*: percent; selection.*: fractions in [0, 1]"})
    return round_floats(result)


def round_floats(obj, digits=6):
    """Significant digits rather than decimals: a selection score of 0.0012 keeps its precision too."""
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, float) and math.isfinite(obj):
        return float(f"{obj:.{digits}g}")
    return obj


def rank_runs(runs, args):
    """Fig. 7's claim as numbers: does the selection score order the runs as kNN top-1 (of f_I) does?"""
    f = args.selection_feature
    rows = [{"run": r["name"], "knn_top1": r["result"]["features"]["f_I"]["knn_top1"],
             **{key: r["result"]["selection"][f][key] for key in ("nmi", "r", "score")}} for r in runs]
    knn = [row["knn_top1"] for row in rows]
    correlations = {f"{key}_vs_knn": analysis.spearman([row[key] for row in rows], knn) for key in ("score", "nmi", "r")}
    rows.sort(key=lambda row: -row["score"])
    return {"ranking": rows, "spearman": round_floats(correlations), "selection_feature": f,
            "knn_feature": "f_I"}


def print_table(runs, ranking, args):
    out = sys.stderr
    head = f"{'run':<24} {'feature':<9} {'R(f,Y)':>7} {'NMI(f,Y)':>8} {'kNN':>6} {'ACC':>6} {'ARI':>6} " \
           f"{'NMI(f,f)':>8} {'R(f,f)':>7} {'score':>8}"
    print(head, file=out)
    for run in runs:
        res = run["result"]
        for f, m in res["features"].items():
            s = res["selection"][f]
            print(f"{run['name'][:24]:<24} {f:<9} {m['retrieval_top1']:7.2f} {m['nmi']:8.2f} {m['knn_top1']:6.2f} "
                  f"{m['cluster_acc']:6.2f} {m['ari']:6.2f} {s['nmi']:8.4f} {s['r']:7.4f} {s['score']:8.2e}", file=out)
    if ranking:
        rho = ", ".join(f"{k} {v:.3f}" if v is not None and math.isfinite(v) else f"{k} undefined"
                        for k, v in ranking["spearman"].items())
        print(f"Spearman with kNN top-1 of f_I ({ranking['selection_feature']} score): {rho}", file=out)


# ---------------------------------------------------------------- figures

def write_figures(runs, args):
    from lib import figures  # matplotlib only when figures are asked for
    same_data(runs)
    folder = args.figures
    rng = np.random.RandomState(args.seed)
    test_set, config, info = runs[0]["test_set"], runs[0]["config"], runs[0]["info"]
    labels = np.asarray(test_set.targets)
    names = CLASS_NAMES.get(config["dataset"], tuple(str(c) for c in range(test_set.num_classes)))

    pick = np.sort(rng.permutation(len(labels))[:args.tsne_images])
    panels = [(tsne_title(r), figures.tsne_2d(r["test"]["f_I"][pick].cpu().numpy(), args.seed)) for r in runs]
    figures.save(figures.tsne_figure(panels, labels[pick], names), os.path.join(folder, "tsne.png"))

    queries = np.sort(rng.permutation(len(labels))[:args.grid_queries])
    display = test_transform(info)  # native resolution: easier to recognise than the training size
    grid = [neighbour_images(r, queries, display) for r in runs[:2]]
    query_images = [to_image(image_of(test_set, q, display), info) for q in queries]
    figures.save(figures.retrieval_figure(query_images, labels[queries], grid, names),
                 os.path.join(folder, "retrieval.png"))

    sims = [(r["name"], {f: analysis.pair_similarities(r["views"][f][0][:args.hist_images],
                                                       r["views"][f][1][:args.hist_images])
                         for f in ("f_I", "backbone")}) for r in runs]
    figures.save(figures.similarity_figure(sims), os.path.join(folder, "similarity.png"))

    folders = [(os.path.dirname(os.path.abspath(r["path"])), r["name"]) for r in runs]
    curves = read_curves(folders + [(os.path.abspath(d), None) for d in args.curves])
    if curves:
        figures.save(figures.curves_figure(curves), os.path.join(folder, "curves.png"))


def same_data(runs):
    keys = {(r["config"]["dataset"], len(r["test_set"])) for r in runs}
    if len(keys) > 1:
        raise InputError("the figures compare runs on one test set; these checkpoints use different datasets")


def tsne_title(run):
    return f"{run['name']} (kNN {run['result']['features']['f_I']['knn_top1']:.1f}%)"


def image_of(dataset, index, transform):
    # Swap the transform for one item only: the dataset stays as the measures used it.
    saved, dataset.transform = dataset.transform, transform
    try:
        return dataset[int(index)][0]
    finally:
        dataset.transform = saved


def to_image(tensor, info):
    """Normalised [C, H, W] -> [H, W] or [H, W, 3] in 0..1 for imshow."""
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    image = (tensor * std + mean).clamp(0, 1).numpy()
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def neighbour_images(run, queries, display, k=8):
    """(name, images [Q][k], labels [Q][k]) of each query's k nearest training images under the run's f_I."""
    _, idx = analysis.nearest(run["test"]["f_I"][queries], run["train"]["f_I"], k)
    idx = idx.cpu().numpy()
    targets = np.asarray(run["train_set"].targets)
    images = [[to_image(image_of(run["train_set"], j, display), run["info"]) for j in row] for row in idx]
    return run["name"], images, targets[idx]


def read_curves(folders):
    """[(name, records)] of every (folder, name) whose folder holds a metrics.jsonl, each folder once; a
    missing name is the folder's."""
    out, seen = [], set()
    for folder, name in folders:
        path = os.path.join(folder, "metrics.jsonl")
        if folder in seen or not os.path.isfile(path):
            continue
        seen.add(folder)
        with open(path) as f:
            out.append((name or os.path.basename(os.path.normpath(folder)),
                        [json.loads(line) for line in f if line.strip()]))
    return out


def command_line(argv=None):
    cli.run_main(main, parse_args(argv), errors=(InputError,))


if __name__ == "__main__":
    command_line()
