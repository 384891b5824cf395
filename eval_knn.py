"""Weighted kNN accuracy of a trained checkpoint (NPID's protocol, paper Sec. 4: k = 200).

    python eval_knn.py --ckpt runs/digits/last.pth
    torchrun --nproc_per_node=8 eval_knn.py --ckpt runs/imagenet/last.pth

Train and test features are recomputed with the test transform from the online network's
L2-normalised f_I (a BYOL run's: its backbone feature); each of the k nearest train images (cosine) votes for its class with weight
exp(cos / sigma). A run trained on a subset (train_cld.py --subset, e.g. a long-tailed one) uses
that subset as the bank and also reports many / medium / few-shot accuracy. Prints one JSON line.
"""
import argparse

from lib import checkpoint, cli, dist, jsonl, precision
from lib.cli import NON_NEGATIVE, POSITIVE
from lib.augment import test_transform
from lib.data import FOLDER_DATASETS, dataset_info, load_dataset
from lib.folder_device import device_test_set
from lib.subsets import subset_dataset
from lib.knn import knn_predict, topk_accuracy
from lib.longtail import class_counts, shot_accuracy


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a checkpoint written by train_cld.py (RUN/last.pth)")
    p.add_argument("--k", type=int, default=200, help="neighbours (NPID, CLD: 200)")
    p.add_argument("--sigma", type=float, default=None, help="vote temperature; default: the run's T_I (--ins-t), as the authors")
    p.add_argument("--data", default=None, help="dataset root, if it moved since training")
    p.add_argument("--subset", default=None, help="the run's subset file (train_cld.py --subset), if it moved since training")
    p.add_argument("--many", type=int, default=100, help="many-shot classes have more training images than this (ImageNet-LT, OLTR: 100)")
    p.add_argument("--few", type=int, default=20, help="few-shot classes have fewer training images than this (ImageNet-LT, OLTR: 20)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--data-path", choices=["loader", "device"], default=None,
                   help="image folders: device reads the files' bytes in --workers processes and decodes and "
                        "test-transforms them on the GPU (lib/folder_device.py); loader: PIL in --workers processes. "
                        "Default: device on a GPU, loader on the CPU (the array datasets always take the loader)")
    precision.add_flag(p)
    cli.add_result(p)
    cli.add_trust_checkpoint(p)
    args = p.parse_args(argv)
    cli.check_ranges(p, args, {"k": POSITIVE, "sigma": POSITIVE, "many": NON_NEGATIVE, "few": NON_NEGATIVE,
                               "batch_size": POSITIVE, "workers": NON_NEGATIVE})
    if args.few > args.many:
        p.error(f"--few must be at most --many ({args.many}), got {args.few}")
    cli.input_file(p, "--ckpt", args.ckpt, "a checkpoint written by train_cld.py (RUN/last.pth)")
    cli.input_folder(p, "--data", args.data, "the dataset's root folder")
    cli.input_file(p, "--subset", args.subset, "a subset file written by make_longtail.py")
    cli.output_file(p, "--result", args.result)
    return args


def main(args):
    rank, world, device = dist.setup()
    ckpt = checkpoint.load(args.ckpt, trust=args.trust_checkpoint, needs=("ins_t", "data"))
    config = ckpt["config"]
    sigma = args.sigma or config["ins_t"]
    info = dataset_info(config["dataset"])
    root = args.data or config["data"]
    train_set = load_dataset(config["dataset"], root, "train", test_transform(info, config["image_size"]))
    test_set = load_dataset(config["dataset"], root, "test", test_transform(info, config["image_size"]))
    subset = args.subset or config.get("subset")
    if subset:  # the bank is what the run trained on
        train_set = subset_dataset(train_set, subset)
    data_path = args.data_path or ("device" if device.type == "cuda" else "loader")
    if config["dataset"] in FOLDER_DATASETS and data_path == "device":  # the files decoded on the device
        train_set, test_set = (device_test_set(d, info, config["image_size"]) for d in (train_set, test_set))

    model = checkpoint.load_network(ckpt, args.ckpt, info.channels).to(device).eval()
    used, _ = precision.resolve(args.precision, device)
    with precision.autocast(device, used):  # the network; the similarities and votes are float32 (lib/knn.py)
        ranked, test_labels = knn_predict(model.embed, train_set, test_set, device, args.k, sigma, args.batch_size,
                                          args.workers)
    top1, top5 = topk_accuracy(ranked, test_labels)
    result = {"top1": round(top1, 2), "top5": round(top5, 2)}
    if subset:
        counts = class_counts(train_set.targets, train_set.num_classes)
        correct = (ranked[:, 0] == test_labels).cpu().numpy()
        shots = shot_accuracy(correct, test_labels.cpu().numpy(), counts, args.many, args.few)
        result.update({name: None if value is None else round(value, 2) for name, value in shots.items()})
        result.update({"many_above": args.many, "few_below": args.few, "subset": subset})
    result.update({"k": args.k, "sigma": sigma, "precision": used,
                   "features": ("backbone feature (a BYOL run's evaluation feature)" if config.get("instance_head") == "byol"
                                else "f_I (instance head)") + ", L2-normalised, recomputed with the test transform",
                   "dataset": config["dataset"], "train_images": len(train_set), "test_images": len(test_set),
                   "epoch": ckpt.get("epoch"), "checkpoint": args.ckpt})
    if rank == 0:
        print(jsonl.dumps(result))
        if args.result:
            jsonl.write_atomic(args.result, jsonl.dumps(result) + "\n")
    dist.cleanup()


if __name__ == "__main__":
    cli.run_main(main, parse_args())
