"""The authors' training settings, one row per (instance-level partner, dataset).

train_cld.py fills every setting the user leaves unset from the row that fits the run, and records
where each value came from. A dataset without a row of its own (digits, Fashion-MNIST, image folders,
synthetic) takes the partner's CIFAR-10 row: the small-image settings (our choice). A new partner
adds its rows here.
"""
from dataclasses import dataclass

# The settings a row may fix. Anything else keeps the flag's own default.
SETTINGS = ("epochs", "batch_size", "lr", "wd", "warmup_epochs", "clusters", "lam", "ins_t", "cld_t",
            "instance_head", "group_head", "mlp", "aug", "erasing", "queue", "knn_every", "optimizer", "lars_eta",
            "lars_clip", "byol_tau")
# What the NPID and MoCo rows fix of the BYOL settings: SGD (the authors'); LARS's trust coefficient is
# BYOL's, should --optimizer lars be asked for; byol_tau is unused (0), like an NPID row's queue.
SGD = dict(optimizer="sgd", lars_eta=0.001, lars_clip=False, byol_tau=0.0)


@dataclass(frozen=True)
class Row:
    source: str       # where the values come from: a script of the authors, or the paper
    values: dict      # setting -> value; lr is the base lr per 128 images (the run uses lr * batch / 128)


NPID_CIFAR10 = dict(epochs=200, batch_size=256, lr=0.03, wd=7e-4, warmup_epochs=5, clusters=128, lam=1.0, ins_t=0.1,
                    cld_t=0.2, instance_head="linear", group_head="linear", mlp=False, aug="default", erasing=False,
                    queue=0, knn_every=1, **SGD)
MOCO_CIFAR10 = dict(epochs=200, batch_size=256, lr=0.03, wd=8e-4, warmup_epochs=5, clusters=200, lam=0.8, ins_t=0.07,
                    cld_t=0.2, instance_head="normlinear", group_head="normlinear", mlp=False, aug="aug-plus",
                    erasing=True, queue=12288, knn_every=1, **SGD)
# MoCo v2+CLD on ImageNet: lr 0.2 at batch 512 is 0.05 per 128 images; cosine without warm-up. The kNN
# monitor runs only after the last epoch: re-embedding 1.28M images every epoch costs a third of one.
MOCO_IMAGENET = dict(epochs=200, batch_size=512, lr=0.05, wd=1e-4, warmup_epochs=0, clusters=120, lam=0.25, ins_t=0.2,
                     cld_t=0.4, instance_head="normlinear", group_head="normlinear", mlp=True, aug="aug-plus",
                     erasing=False, queue=65536, knn_every=0, **SGD)
# NPID+CLD on ImageNet: the supplementary (§2.1) gives batch 256 and lr 0.03 (0.015 per 128), batch 512
# and lr 0.8 (0.2 per 128) on ImageNet-100, and weight decay 1e-4. It gives neither K nor lambda: we take
# the ImageNet MoCo v2+CLD K 120 and the lambda 0.25 of the paper's ImageNet-100 sweep (Table 8).
NPID_IMAGENET = dict(NPID_CIFAR10, batch_size=256, lr=0.015, wd=1e-4, clusters=120, lam=0.25, knn_every=0)
# InfoMin+CLD on ImageNet (--method CLD of the authors' main_imagenet_infomin_cld.py, with
# scripts/imagenet/train_imagenet_infomin_cld.sh): T_I 0.15 from their utils/infomin_base_options.py,
# queue 65,536 (their -k default), lr 0.2 at batch 512 with cosine decay (0.05 per 128), weight decay
# 1e-4; their batch above 256 turns on 5 warm-up epochs (utils/infomin_train_options.py). 100 epochs as
# the script; the paper's 200-epoch number is the same recipe with --epochs 200.
INFOMIN_IMAGENET = dict(MOCO_IMAGENET, epochs=100, warmup_epochs=5, ins_t=0.15, cld_t=0.8, aug="infomin")
# Small images: MoCo+CLD's CIFAR-10 row with InfoMin's own settings (temperatures, lambda, NormMLP heads,
# augmentation) in place of MoCo's (our choice: the authors never ran InfoMin+CLD below 224 px).
INFOMIN_CIFAR10 = dict(MOCO_CIFAR10, ins_t=0.15, cld_t=0.8, lam=0.25, mlp=True, aug="infomin", erasing=False)

# BYOL on 32 px data: solo-learn's CIFAR recipe (scripts/pretrain/cifar/byol.yaml): LARS with trust
# coefficient 0.02 and clipping, lr 1.0 at batch 256 (0.5 per 128 images), wd 1e-5, 1000 epochs, tau 0.99
# -> 1, projector and predictor 4096 -> 256; its warm-up is 10 epochs (solo-learn's warmup_cosine default).
# The CLD settings (K 128, T_G 0.2, lambda 1, NormLinear f_G) are the NPID+CLD CIFAR values and the
# project's NormLinear convention: no source gives BYOL+CLD's (our choice). ins_t is only the kNN sigma.
BYOL_CIFAR10 = dict(epochs=1000, batch_size=256, lr=0.5, wd=1e-5, warmup_epochs=10, clusters=128, lam=1.0, ins_t=0.1,
                    cld_t=0.2, instance_head="byol", group_head="normlinear", mlp=False, aug="byol", erasing=False,
                    queue=0, knn_every=1, optimizer="lars", lars_eta=0.02, lars_clip=True, byol_tau=0.99)
# BYOL on ImageNet (Grill et al. 2020 §3.3, as OpenSelfSup's BYOL): LARS with trust coefficient 0.001,
# lr 0.2 x batch/256 (0.1 per 128), wd 1.5e-6, batch 4096 over all processes, 10 warm-up epochs, tau
# 0.996; 200 epochs, the length of mmselfsup's BYOL ImageNet configs (byol_resnet50_8xb32-accum16-coslr-
# 200e_in1k.py; BYOL itself trains 1000). K 120, lambda 0.25 and T_G 0.4 are the MoCo v2+CLD ImageNet
# values (our choice).
BYOL_IMAGENET = dict(BYOL_CIFAR10, epochs=200, batch_size=4096, lr=0.1, wd=1.5e-6, clusters=120, lam=0.25,
                     cld_t=0.4, knn_every=0, lars_eta=0.001, lars_clip=False, byol_tau=0.996)

ROWS = {
    ("npid", "cifar10"): Row("authors' scripts/cifar/train_cifar10_npid_cld.sh", NPID_CIFAR10),
    ("npid", "cifar100"): Row("authors' scripts/cifar/train_cifar100_npid_cld.sh", dict(NPID_CIFAR10, clusters=200)),
    ("npid", "stl10"): Row("supplementary §2.3: CIFAR's batch 256 and lr 0.03, 96 px", NPID_CIFAR10),
    ("npid", "kitchen-hc"): Row("supplementary §2.2: CIFAR's settings, 80 epochs", dict(NPID_CIFAR10, epochs=80)),
    ("npid", "imagenet"): Row("supplementary §2.1 (batch 256, lr 0.03, wd 1e-4); K and lambda ours", NPID_IMAGENET),
    ("npid", "imagenet100"): Row("supplementary §2.1 (batch 512, lr 0.8, wd 1e-4); K and lambda ours",
                                 dict(NPID_IMAGENET, batch_size=512, lr=0.2)),
    ("moco", "cifar10"): Row("authors' scripts/cifar/train_cifar10_moco_cld.sh", MOCO_CIFAR10),
    ("moco", "cifar100"): Row("authors' scripts/cifar/train_cifar100_moco_cld.sh",
                              dict(MOCO_CIFAR10, batch_size=128, wd=7e-4, clusters=100, lam=0.25, queue=4096,
                                   aug="default", erasing=False)),
    ("moco", "stl10"): Row("supplementary §2.3: CIFAR's settings, 96 px", MOCO_CIFAR10),
    ("moco", "kitchen-hc"): Row("supplementary §2.2: CIFAR's settings, 80 epochs", dict(MOCO_CIFAR10, epochs=80)),
    ("moco", "imagenet"): Row("authors' scripts/imagenet/train_imagenet_mocov2_cld.sh", MOCO_IMAGENET),
    ("moco", "imagenet100"): Row("authors' scripts/imagenet/train_imagenet_mocov2_cld.sh (ImageNet's values)",
                                 MOCO_IMAGENET),
    ("byol", "cifar10"): Row("solo-learn's scripts/pretrain/cifar/byol.yaml; CLD settings ours", BYOL_CIFAR10),
    ("byol", "cifar100"): Row("solo-learn's scripts/pretrain/cifar/byol.yaml (CIFAR-100 too); CLD settings ours",
                              BYOL_CIFAR10),
    ("byol", "stl10"): Row("solo-learn's CIFAR BYOL recipe at 96 px (our choice); CLD settings ours", BYOL_CIFAR10),
    ("byol", "imagenet"): Row("BYOL §3.3 (LARS, lr 0.2 x batch/256, wd 1.5e-6, batch 4096, tau 0.996), as "
                              "OpenSelfSup's BYOL; 200 epochs as mmselfsup's config; CLD settings ours. 512 images "
                              "per GPU on 8 GPUs hold ~76 GiB of activations in bf16: add --accumulate 2 on 80 GB "
                              "GPUs, 4 on 40 GB ones (docs/training.md)", BYOL_IMAGENET),
    ("byol", "imagenet100"): Row("BYOL's ImageNet settings (our choice); CLD settings ours", BYOL_IMAGENET),
    ("infomin", "imagenet"): Row("authors' scripts/imagenet/train_imagenet_infomin_cld.sh with --method CLD's "
                                 "settings", INFOMIN_IMAGENET),
    ("infomin", "imagenet100"): Row("authors' scripts/imagenet/train_imagenet_infomin_cld.sh (ImageNet's values)",
                                    INFOMIN_IMAGENET),
    ("infomin", "cifar10"): Row("MoCo+CLD's CIFAR-10 row with InfoMin+CLD's temperatures, lambda, heads and "
                                "augmentation (ours)", INFOMIN_CIFAR10),
}


def row_name(partner, dataset):
    """The row a run of `partner` on `dataset` takes: its own, else the partner's CIFAR-10 row."""
    if (partner, dataset) in ROWS:
        return partner, dataset
    if (partner, "cifar10") in ROWS:
        return partner, "cifar10"
    raise ValueError(f"no training settings for the partner {partner!r}; add its rows to lib/recipes.py")


def resolve(settings, partner, dataset):
    """settings: name -> value, None where the user set nothing. Returns (the settings with every None of
    the row's names filled in, name -> where its value came from)."""
    key = row_name(partner, dataset)
    row = ROWS[key]
    label = f"recipe {key[0]}/{key[1]}" + ("" if key[1] == dataset else f" (no {dataset} row)")
    resolved, sources = dict(settings), {}
    for name in SETTINGS:
        if name not in settings:
            continue
        if settings[name] is None:
            resolved[name] = row.values[name]
            sources[name] = f"{label}: {row.source}"
        else:
            sources[name] = "flag"
    return resolved, sources


def help_table():
    """Each row's values as lines of text, for --help."""
    lines = []
    for (partner, dataset), row in ROWS.items():
        values = " ".join(f"{name}={row.values[name]}" for name in SETTINGS)
        lines.append(f"  {partner}/{dataset}: {values}\n      ({row.source})")
    return "\n".join(lines)
