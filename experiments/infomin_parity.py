"""InfoMin+CLD against the CLD authors' own code, from the same state, on a tiny input.

    python experiments/infomin_parity.py [--authors /path/to/CLD-UnsupervisedLearning] [--steps 3]

Loads their modules from a copy of their repository (infomin/build_backbone.py RGBTriHeads,
infomin/mem_moco.py RGBMoCo, infomin/contrast_trainer.py ContrastTrainer._train_moco_cld, and their
spectral_clustering.py KMeans) with .cuda() made a no-op and a one-process gloo group for their
Shuffle-BN. Both sides start from the same ResNet-50 and head weights and the same queue, and see the
same batches (random tensors: three 32 px crops and nine 16 px jigsaw tiles per image). Each step
runs their whole training-loop body on one batch, and train_cld.train_step on ours. Both online
forwards are preceded by the same torch seed, so the jigsaw head's tile shuffle draws alike.

Compared after every step: the loss terms, the online weights, the key encoder's weights (EMA) and
the queue. Their queue takes each step's keys in Shuffle-BN order (they enqueue the gathered keys
before un-shuffling), ours in batch order, so queues are compared row-matched: for each of our rows,
the nearest of theirs. Run once with --enqueue-twice (their behaviour: should match) and once without
(the default: shows the difference). Prints one strict-JSON object.

A ResNet-50 on batches of 8 random images amplifies rounding quickly: after the first step, two runs of
their own code that differ only in the Shuffle-BN permutation (in one process a reordering of float
sums, nothing else) drift apart too. Each step also reports that drift, their code against itself, as
the noise floor the ours-vs-theirs differences are to be read against.

Last, timm's RandAugment (which --aug infomin uses) against their datasets/RandAugment.py on 300 images
under the same seeds: how many outputs are identical.
"""
import argparse
import contextlib
import json
import os
import sys
import types

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lib.cluster import grouping  # noqa: E402
from lib.infomin import InfoMin  # noqa: E402
from lib.losses import CrossLevel  # noqa: E402
from lib.models import CLDNet  # noqa: E402
from train_cld import train_step  # noqa: E402

B, SIZE, TILE, QUEUE, DIM, K = 8, 32, 16, 40, 128, 4
LR, WD, ALPHA, T_I, T_G, LAM, BETA, ITERS = 0.05, 1e-4, 0.99, 0.15, 0.8, 0.25, 0.5, 5


def load_authors(path):
    """Their modules, importable on a CPU-only machine."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    sys.modules.setdefault("tensorboard_logger", types.ModuleType("tensorboard_logger"))  # imported, unused here
    sys.path.insert(0, path)
    from infomin.build_backbone import RGBTriHeads
    from infomin.contrast_trainer import ContrastTrainer
    from infomin.mem_moco import RGBMoCo
    return RGBTriHeads, ContrastTrainer, RGBMoCo


def their_args():
    return argparse.Namespace(jigsaw=True, beta=BETA, Lambda=LAM, cld_t=T_G, use_kmeans=True, clusters=K,
                              num_iters=ITERS, alpha=ALPHA, amp=False, warm=False, gpu=None, local_rank=0, node_rank=0,
                              ngpus_per_node=1, print_freq=10 ** 9, method="CLD", mem="moco")


def ours_from_theirs(theirs):
    """Their RGBTriHeads state dict under our CLDNet names (NormLinear stored [in, out] there, [out, in] here)."""
    rename = {"encoder.": "backbone.", "head.0.": "projector.0.", "proj1.0.": "instance_head.",
              "proj2.0.": "group_head.", "head_jig.": "jigsaw_head."}
    normed = {"proj1.0.weight", "proj2.0.weight", "head_jig.fc1.2.weight", "head_jig.fc2.weight"}
    out = {}
    for key, value in theirs.items():
        prefix = next(p for p in rename if key.startswith(p))
        out[rename[prefix] + key[len(prefix):]] = value.t() if key in normed else value
    return out


class Seeded(nn.Module):
    """Calls `net`, seeding torch first when `seed` is set; `module` as DDP has it (their trainer uses it)."""

    def __init__(self, net):
        super().__init__()
        self.module, self.seed = net, None

    def forward(self, *args, **kwargs):
        if self.seed is not None:
            torch.manual_seed(self.seed)
        return self.module(*args, **kwargs)


def max_diff(a, b):
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b, strict=True))


def max_rel_diff(mapped, net):
    """Over the BatchNorm running statistics: max |ours - theirs| / max |ours| per tensor."""
    params = {k for k, _ in net.named_parameters()}
    return max(float((mapped[k].float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-12))
               for k, v in net.state_dict().items() if k not in params and v.is_floating_point())


def queue_diff(ours, theirs):
    """max over our rows of the distance to the nearest row of theirs (0: the same rows, in any order)."""
    return float(torch.cdist(ours.double(), theirs.double()).min(dim=1).values.max())


class Theirs:
    """Their network, key encoder, queue, optimizer and trainer, from seed 0."""

    def __init__(self, authors):
        RGBTriHeads, ContrastTrainer, RGBMoCo = authors
        torch.manual_seed(0)
        self.net, self.ema = RGBTriHeads("resnet50", "normmlp", DIM), RGBTriHeads("resnet50", "normmlp", DIM)
        ContrastTrainer.momentum_update(self.net, self.ema, 0)    # their wrap_up: the EMA starts as a copy
        self.contrast = RGBMoCo(DIM, QUEUE, T_I)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
        self.trainer = ContrastTrainer(their_args())
        self.cld = []                                             # CLD of each step, before their Lambda
        grouping_ = self.trainer.grouping
        self.trainer.grouping = lambda g1, g2, t, args: self.cld.append(grouping_(g1, g2, t, args)) or self.cld[-1]
        self.seeded = Seeded(self.net)

    def step(self, crops, tiles, seed, shuffle_seed):
        """Their _train_moco_cld on one batch -> (instance term (1 - beta) L + beta J, CLD)."""
        self.seeded.seed = seed
        torch.manual_seed(shuffle_seed)                           # their Shuffle-BN permutation
        loss, _, loss_jig, _ = self.trainer._train_moco_cld(
            1, [(torch.cat(crops, dim=1), torch.arange(B), tiles)], self.seeded, self.ema, self.contrast,
            nn.CrossEntropyLoss(), self.optimizer)
        return (1 - BETA) * loss + BETA * loss_jig, float(self.cld[-1])


def run(authors, enqueue_twice, steps):
    theirs, again = Theirs(authors), Theirs(authors)
    their_net, their_ema, contrast = theirs.net, theirs.ema, theirs.contrast
    net = CLDNet("resnet50", 3, DIM, "normlinear", "normlinear", mlp=True, jigsaw_head="normlinear")
    net.load_state_dict(ours_from_theirs(their_net.state_dict()))
    partner = InfoMin(net, QUEUE, DIM, ALPHA, T_I, BETA, enqueue_twice)
    partner.queue.copy_(contrast.memory)
    cld = CrossLevel(grouping(K, "kmeans", ITERS, spherical=False, init="first"), T_G, LAM)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    ours = Seeded(net)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    torch.manual_seed(1)
    batches = [([torch.randn(B, 3, SIZE, SIZE) for _ in range(3)], torch.randn(B, 9, 3, TILE, TILE))
               for _ in range(steps)]
    report = []
    for step, (crops, tiles) in enumerate(batches):
        their_ins, their_cld = theirs.step(crops, tiles, 100 + step, 200 + step)
        # Their code again with another Shuffle-BN permutation, in one process the same computation up to
        # the order of float sums: how far rounding alone carries two runs apart (the noise floor).
        again_ins, again_cld = again.step(crops, tiles, 100 + step, 300 + step)
        ours.seed = 100 + step
        metrics, applied, _ = train_step(ours, net, partner, cld, [*crops, tiles], torch.arange(B), step, optimizer,
                                         scaler, contextlib.nullcontext())
        loss_all, loss_ins, loss_cld, _ = metrics.tolist()
        mapped_net, mapped_ema = ours_from_theirs(their_net.state_dict()), ours_from_theirs(their_ema.state_dict())
        report.append({
            "step": step + 1, "applied": bool(applied),
            "loss_ins": {"ours": loss_ins, "theirs": their_ins, "abs_diff": abs(loss_ins - their_ins)},
            "loss_cld": {"ours": loss_cld, "theirs": their_cld, "abs_diff": abs(loss_cld - their_cld)},
            "loss": {"ours": loss_all, "theirs": their_ins + LAM * their_cld,
                     "abs_diff": abs(loss_all - their_ins - LAM * their_cld)},
            "params_max_abs_diff": max_diff([mapped_net[k] for k, _ in net.named_parameters()],
                                            [p for _, p in net.named_parameters()]),
            "ema_params_max_abs_diff": max_diff([mapped_ema[k] for k, _ in partner.encoder.named_parameters()],
                                                [p for _, p in partner.encoder.named_parameters()]),
            "bn_statistics_max_rel_diff": max_rel_diff(mapped_net, net),
            "queue_row_matched_max_dist": queue_diff(partner.queue, contrast.memory),
            "queue_pointer": {"ours": int(partner.ptr), "theirs": int(contrast.index)},
            "noise_floor_theirs_vs_theirs": {
                "loss_ins_abs_diff": abs(again_ins - their_ins), "loss_cld_abs_diff": abs(again_cld - their_cld),
                "params_max_abs_diff": max_diff(list(again.net.parameters()), list(their_net.parameters())),
                "queue_row_matched_max_dist": queue_diff(again.contrast.memory, contrast.memory)},
        })
    return report


def randaugment_check(path, n=300):
    """timm's RandAugment against the authors' datasets/RandAugment.py: the same policy string and
    hyper-parameters (their aug 'D'), n random 40x48 RGB images, the same seeds -> how many outputs are
    identical to the byte."""
    import importlib.util
    import random

    import numpy as np
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    spec = importlib.util.spec_from_file_location("authors_randaugment", os.path.join(path, "datasets", "RandAugment.py"))
    theirs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(theirs)
    hparams = lambda: dict(translate_const=int(224 * 0.45), img_mean=(124, 116, 104))  # noqa: E731
    a = theirs.rand_augment_transform("rand-n2-m10-mstd0.5", hparams())
    b = rand_augment_transform("rand-n2-m10-mstd0.5", hparams())
    images = np.random.RandomState(0).randint(0, 256, (n, 40, 48, 3)).astype(np.uint8)
    identical = 0
    for i, image in enumerate(images):
        outputs = []
        for policy in (a, b):
            random.seed(i)
            np.random.seed(i)
            outputs.append(np.asarray(policy(Image.fromarray(image))))
        identical += int(np.array_equal(*outputs))
    return {"images": n, "identical": identical}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--authors", default="/work/authors", help="a copy of the authors' repository")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if not os.path.isfile(os.path.join(args.authors, "infomin", "contrast_trainer.py")):
        raise SystemExit(f"error: {args.authors} holds no infomin/contrast_trainer.py; pass --authors, the folder of "
                         "a copy of github.com/frank-xwang/CLD-UnsupervisedLearning")
    torch.set_num_threads(1)
    authors = load_authors(args.authors)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)   # their Shuffle-BN gathers and broadcasts
    result = {"setting": dict(batch=B, crop_px=SIZE, tile_px=TILE, queue=QUEUE, dim=DIM, clusters=K, lr=LR, wd=WD,
                              ema=ALPHA, ins_t=T_I, cld_t=T_G, lam=LAM, beta=BETA, kmeans_iters=ITERS,
                              arch="resnet50", precision="fp32", device="cpu"),
              "enqueue_twice (theirs)": run(authors, True, args.steps),
              "enqueue_once (our default)": run(authors, False, args.steps),
              "randaugment_timm_vs_theirs": randaugment_check(args.authors)}
    torch.distributed.destroy_process_group()
    print(json.dumps(result, allow_nan=False, indent=1))


if __name__ == "__main__":
    main()
