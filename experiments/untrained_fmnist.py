"""The untrained networks of experiments/seeds.sh's byol-fmnist block, scored like its runs: kNN top-1 (k 200,
sigma 0.1; bank: the balanced 10k subset) and k-means NMI / ACC / ARI (K 10, best of 5) of the 10,000 test
images, on each arm's evaluation feature at its initial weights (torch.manual_seed(seed) then the network,
as train_cld.py builds it): the backbone feature for the BYOL arms, f_I of NPID's Linear and MoCo's
NormLinear heads. Prints one JSON line.

    python experiments/untrained_fmnist.py --subset runs/fmnist_10k.json
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from lib import analysis  # noqa: E402
from lib.augment import test_transform  # noqa: E402
from lib.data import dataset_info, load_dataset  # noqa: E402
from lib.knn import extract_features, knn_eval  # noqa: E402
from lib.models import CLDNet  # noqa: E402
from lib.subsets import subset_dataset  # noqa: E402

NETWORKS = {  # arm -> the network its run starts from
    "byol": dict(instance_head="byol", group_head="normlinear", byol_hidden=512),
    "npid": dict(instance_head="linear", group_head="linear"),
    "moco": dict(instance_head="normlinear", group_head="normlinear"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subset", required=True, help="the block's fmnist_10k.json")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    info = dataset_info("fashion-mnist")
    train = subset_dataset(load_dataset("fashion-mnist", args.data, "train", test_transform(info, 8)), args.subset)
    test = load_dataset("fashion-mnist", args.data, "test", test_transform(info, 8))
    result = {}
    for arm, heads in NETWORKS.items():
        for seed in args.seeds:
            torch.manual_seed(seed)
            net = CLDNet("resnet20", 1, **heads).eval()
            with torch.no_grad():
                top1, _ = knn_eval(net.embed, train, test, "cpu", 200, 0.1)
                features = extract_features(net.embed, test, "cpu", 256, 0)
            labels = analysis.kmeans_labels(features, 10, 5, 50, 0).numpy()
            quality = analysis.clustering_quality(labels, test.targets)
            result[f"{arm}_s{seed}"] = {"knn_top1": round(top1, 2),
                                        **{k: round(100 * v, 2) for k, v in quality.items()}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
