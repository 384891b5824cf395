"""kNN of the network a run starts from, before any step: built from the run's config.json as
train_cld.py builds it (torch.manual_seed(seed), then the network), evaluated as its kNN monitor is
(same transforms, k, sigma = T_I). Prints one JSON line.

    python experiments/untrained_knn.py --run runs/fmnist_infomin
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.augment import test_transform  # noqa: E402
from lib.data import dataset_info, load_dataset  # noqa: E402
from lib.knn import knn_eval  # noqa: E402
from lib.models import NetworkSpec  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder of train_cld.py (its config.json)")
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args()
    config = json.load(open(os.path.join(args.run, "config.json")))
    info = dataset_info(config["dataset"])
    torch.manual_seed(config["seed"])
    net = NetworkSpec.from_config(config, info.channels).build().eval()
    transform = test_transform(info, config["image_size"])
    train = load_dataset(config["dataset"], config["data"], "train", transform)
    test = load_dataset(config["dataset"], config["data"], "test", transform)
    top1, top5 = knn_eval(net.embed, train, test, "cpu", config["knn_k"], config["ins_t"], workers=args.workers)
    print(json.dumps({"run": args.run, "untrained_knn_top1": top1, "untrained_knn_top5": top5}))


if __name__ == "__main__":
    main()
