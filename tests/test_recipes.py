"""Flags left unset take the authors' settings for the partner and the dataset; a flag the user sets wins;
--print-config shows the result and where every value came from, without touching any data."""
import json
import os

import pytest

import train_cld
from lib import recipes
from tests.common import as_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The authors' scripts as they pass their flags (scripts/cifar/*.sh, scripts/imagenet/*.sh), and the
# supplementary's §2 for the rows no script covers (Kitchen-HC's 80 epochs; STL-10; NPID+CLD on ImageNet
# and ImageNet-100, whose K and lambda are ours). Written out here, not read from lib/recipes.py.
EXPECTED = {
    ("npid", "cifar10"): dict(batch_size=256, lr=0.03, wd=7e-4, warmup_epochs=5, clusters=128, lam=1.0, ins_t=0.1,
                              cld_t=0.2, instance_head="linear", mlp=False, aug="default", erasing=False, epochs=200),
    ("moco", "cifar10"): dict(batch_size=256, lr=0.03, wd=8e-4, warmup_epochs=5, clusters=200, lam=0.8, ins_t=0.07,
                              cld_t=0.2, instance_head="normlinear", mlp=False, aug="aug-plus", erasing=True,
                              queue=12288, epochs=200),
    ("moco", "imagenet"): dict(batch_size=512, lr=0.05, wd=1e-4, warmup_epochs=0, clusters=120, lam=0.25, ins_t=0.2,
                               cld_t=0.4, instance_head="normlinear", group_head="normlinear", mlp=True,
                               aug="aug-plus", erasing=False, queue=65536, knn_every=0),
    ("npid", "cifar100"): dict(batch_size=256, lr=0.03, wd=7e-4, warmup_epochs=5, clusters=200, lam=1.0, ins_t=0.1,
                               cld_t=0.2, instance_head="linear", aug="default", erasing=False, epochs=200),
    ("moco", "cifar100"): dict(batch_size=128, lr=0.03, wd=7e-4, warmup_epochs=5, clusters=100, lam=0.25, ins_t=0.07,
                               cld_t=0.2, instance_head="normlinear", group_head="normlinear", mlp=False,
                               aug="default", erasing=False, queue=4096, epochs=200),
    ("npid", "kitchen-hc"): dict(epochs=80, batch_size=256, lr=0.03, clusters=128, lam=1.0),
    ("moco", "kitchen-hc"): dict(epochs=80, batch_size=256, lr=0.03, clusters=200, queue=12288),
    ("npid", "stl10"): dict(epochs=200, batch_size=256, lr=0.03, clusters=128),
    ("moco", "stl10"): dict(epochs=200, batch_size=256, lr=0.03, clusters=200),
    ("npid", "imagenet"): dict(batch_size=256, lr=0.015, wd=1e-4, clusters=120, lam=0.25, knn_every=0),
    ("npid", "imagenet100"): dict(batch_size=512, lr=0.2, wd=1e-4, clusters=120, lam=0.25, knn_every=0),
    ("moco", "imagenet100"): dict(batch_size=512, lr=0.05, wd=1e-4, clusters=120, lam=0.25, ins_t=0.2, cld_t=0.4,
                                  mlp=True, queue=65536),
    # solo-learn's scripts/pretrain/cifar/byol.yaml: lars, lr 1.0 at batch 256, wd 1e-5, eta 0.02, clip_lr,
    # 1000 epochs, base_tau 0.99; asymmetric views.
    ("byol", "cifar10"): dict(batch_size=256, lr=0.5, wd=1e-5, epochs=1000, optimizer="lars", lars_eta=0.02,
                              lars_clip=True, byol_tau=0.99, aug="byol", instance_head="byol",
                              group_head="normlinear"),
    # BYOL §3.3: LARS (eta 0.001), lr 0.2 x batch/256, wd 1.5e-6, batch 4096, tau 0.996.
    ("byol", "imagenet"): dict(batch_size=4096, lr=0.1, wd=1.5e-6, optimizer="lars", lars_eta=0.001,
                               lars_clip=False, byol_tau=0.996, aug="byol", warmup_epochs=10),
    # scripts/imagenet/train_imagenet_infomin_cld.sh (lr 0.2 at batch 512, 100 epochs, normmlp, Lambda 0.25,
    # cld-t 0.8, 120 clusters) with --method CLD's nce_t 0.15 and aug 'D' (utils/infomin_base_options.py),
    # the 5 warm-up epochs that a batch above 256 turns on (utils/infomin_train_options.py), -k 65536.
    ("infomin", "imagenet"): dict(epochs=100, batch_size=512, lr=0.05, wd=1e-4, warmup_epochs=5, clusters=120,
                                  lam=0.25, ins_t=0.15, cld_t=0.8, instance_head="normlinear",
                                  group_head="normlinear", mlp=True, aug="infomin", erasing=False, queue=65536,
                                  knn_every=0),
    ("infomin", "cifar10"): dict(batch_size=256, lr=0.03, clusters=200, lam=0.25, ins_t=0.15, cld_t=0.8, mlp=True,
                                 aug="infomin", erasing=False, queue=12288),
}


def resolved(*argv):
    return train_cld.parse_args(["--out", "unused", *argv])


@pytest.mark.parametrize("partner,dataset", list(EXPECTED))
def test_each_row_resolves_as_its_source_says(partner, dataset):
    args = resolved("--dataset", dataset, "--partner", partner)
    for name, value in EXPECTED[partner, dataset].items():
        assert getattr(args, name) == value, name
        assert args.sources[name].startswith(f"recipe {partner}/{dataset}: ")


def test_a_dataset_without_a_row_takes_the_cifar10_row_and_says_so():
    args = resolved("--dataset", "digits")
    assert args.clusters == 128 and args.recipe == "npid/cifar10"
    assert args.sources["clusters"] == "recipe npid/cifar10 (no digits row): authors' scripts/cifar/train_cifar10_npid_cld.sh"


def test_a_set_flag_wins_and_is_recorded_as_such():
    args = resolved("--dataset", "imagenet", "--moco", "--clusters", "7", "--no-mlp", "--lr", "0.1")
    assert (args.clusters, args.mlp, args.lr) == (7, False, 0.1)
    assert args.sources["clusters"] == args.sources["mlp"] == args.sources["lr"] == "flag"
    assert args.batch_size == 512 and args.sources["batch_size"].startswith("recipe moco/imagenet")


def test_moco_flag_is_the_moco_partner():
    assert resolved("--moco").partner == "moco" and resolved("--partner", "moco").moco


def test_byol_and_c2bin_flags_are_the_byol_partner():
    assert resolved("--byol").partner == "byol" and resolved("--partner", "byol").byol
    args = resolved("--c2bin", "--dataset", "cifar100", "--data", ROOT)
    assert args.partner == "byol" and args.group_head == "clusters" and args.c2bin_scales == [20, 40, 80]
    assert resolved("--c2bin", "--c2bin-scales", "5", "7").c2bin_scales == [5, 7]
def test_infomin_flag_is_the_infomin_partner_with_a_jigsaw_head():
    args = resolved("--infomin", "--dataset", "imagenet")
    assert args.partner == "infomin" and not args.moco and args.jigsaw_head == "normlinear"
    assert (args.beta, args.enqueue_twice) == (0.5, False)      # TrainOptions' --beta default; the fixed queue
    assert resolved("--moco").jigsaw_head == "none"


def test_every_row_fixes_every_setting():
    for key, row in recipes.ROWS.items():
        assert set(row.values) == set(recipes.SETTINGS), key


def test_print_config_shows_the_resolved_settings_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code, printed, err = as_main(capsys, "train_cld.py", "--dataset", "cifar10", "--data", tmp_path / "nowhere",
                                 "--moco", "--clusters", "50", "--out", out, "--print-config")
    assert code == 0, err
    config = json.loads(printed)
    assert config["clusters"] == 50 and config["sources"]["clusters"] == "flag"
    assert config["queue"] == 12288 and config["sources"]["queue"].startswith("recipe moco/cifar10: ")
    assert config["peak_lr"] == pytest.approx(0.03 * 256 / 128) and config["batch_per_process"] == 256
    assert not out.exists()  # nothing written, and the missing dataset was never looked for
