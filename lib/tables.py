"""The paper's tables as data: every table and figure of the paper and its supplementary that reports numbers,
the rows of the authors' README, and the BYOL / C2BIN systems, each one entry of TABLES.

An entry holds its rows (a method on a dataset, with the paper's numbers), the runs that make each row at each
budget, and the claims the paper draws from the table, as statements that reproduce.py checks on the runs:

  paper  the paper's datasets, networks and schedules: the commands a GPU user runs (train_cld.py fills every
         flag left out from lib/recipes.py, so --print-config of a command shows the paper's settings);
  cpu    a proxy that runs on a 2-core CPU in about an hour per table with 3 seeds: Fashion-MNIST subsets,
         fashion-mnist-hc, digits, a ResNet-20 at 8 px, a stated epoch budget; each row says what stands in
         for what, and why; a row without a sensible proxy has no cpu run;
  smoke  minutes: digits, one epoch, for the tests.

Commands are argument lists with three placeholders, filled by reproduce.py: {data} (its --data: the folder
holding cifar-10-batches-py/, cifar-100-python/, stl10_binary/, and imagenet/, imagenet_lt/, kitchen-hc/),
{runs} (the table's runs folder, where prepared subset files go) and {fmnist} (Debian's Fashion-MNIST folder).
Plain data: no code runs here; reproduce.py runs, reads and judges.
"""
from dataclasses import dataclass, field

BUDGETS = ("paper", "cpu", "smoke")


@dataclass(frozen=True)
class Run:
    """One network at one budget: train_cld.py's arguments (reproduce.py adds --seed, --out and --resume auto)
    and its evaluations, each (name, extra arguments); name is a key of reproduce.py's EVALS."""
    train: tuple
    evals: tuple = (("monitor", ()),)


@dataclass(frozen=True)
class Row:
    key: str                 # the run folders' name: RUNS/<key>_s<seed>
    label: str               # the row as the paper names it
    paper: dict              # metric -> the paper's number (absent: the paper reports none)
    runs: dict               # budget -> Run
    proxy: str = ""          # what the cpu run stands in with, and why; "" when it has no cpu run


@dataclass(frozen=True)
class Claim:
    """A statement the paper makes from the table, checked seed by seed on our runs.

    above:  value(left) > value(right), same seed; left and right are (row key, metric);
    within: |value(left) - value(right)| < tolerance, same seed (an equivalence);
    best:   among `rows`, the largest `metric` is one of `expected`;
    positive: the table-level number `metric` (one per seed, e.g. a rank correlation) is above 0.
    A metric may be a tuple of names: the first one that both sides have is compared (the linear probe where
    the runs have one, else kNN). A claim whose rows a budget does not run is not evaluated there."""
    text: str
    kind: str
    left: tuple = ()
    right: tuple = ()
    rows: tuple = ()
    expected: tuple = ()
    metric: str = ""
    tolerance: float = 0.0


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    source: str              # where the paper's numbers come from
    metrics: tuple           # the columns shown, in order
    rows: tuple
    claims: tuple
    prepare: dict = field(default_factory=dict)   # budget -> [(file made under {runs}, command)]
    after: dict = field(default_factory=dict)     # budget -> table-level evaluation name (reproduce.py AFTER)
    runs_of: str = ""        # another table whose runs (and runs folder) this one evaluates
    note: str = ""


def above(text, left, right, metric):
    return Claim(text, "above", left=(left, metric), right=(right, metric))


# ---------------------------------------------------------------------------------------------- the budgets

# cpu: ResNet-20 at 8 px (CIFAR's 32 px is 16x the pixels; a 2-core CPU trains the 8 px network at ~1,000
# images/s), one warm-up epoch, the kNN monitor after the last epoch only, the training set on the device path.
CPU = ("--arch", "resnet20", "--image-size", "8", "--warmup-epochs", "1", "--workers", "0", "--knn-every", "0")
FM10K = ("--dataset", "fashion-mnist", "--data", "{fmnist}", "--subset", "{runs}/fmnist_10k.json") + CPU
FM5K = ("--dataset", "fashion-mnist", "--data", "{fmnist}", "--subset", "{runs}/fmnist_5k.json") + CPU
FMLT = ("--dataset", "fashion-mnist", "--data", "{fmnist}", "--subset", "{runs}/fmnist_lt100.json") + CPU
FMHC = ("--dataset", "fashion-mnist-hc", "--data", "{fmnist}") + CPU
# The README's quick start: digits, 30 epochs of batch 128, K 10 (the NPID+CLD CIFAR-10 row otherwise).
DIGITS = ("--dataset", "digits", "--arch", "resnet20", "--epochs", "30", "--batch-size", "128", "--clusters", "10",
          "--workers", "0", "--knn-every", "0")
# MoCo in a few hundred steps: the key encoder's alpha 0.99 (0.999 barely leaves its start in 300 steps), a
# queue of 4096 (the CIFAR-100 MoCo row's), K 10 (= the classes; the CIFAR-10 row's K 200 is close to the batch).
CPU_MOCO = ("--moco", "--clusters", "10", "--queue", "4096", "--moco-momentum", "0.99")
DIGITS_MOCO = ("--moco", "--queue", "1024", "--moco-momentum", "0.99")
SMOKE = ("--dataset", "digits", "--arch", "resnet20", "--epochs", "1", "--batch-size", "128", "--clusters", "10",
         "--workers", "0", "--knn-every", "0")
SMOKE_MOCO = ("--moco", "--queue", "512", "--moco-momentum", "0.99")

# Subset files the cpu proxies train on, made once per runs folder.
FM_SUBSETS = {
    "fmnist_10k.json": ("make_longtail.py", "--dataset", "fashion-mnist", "--data", "{fmnist}", "--ratio", "1",
                        "--per-class", "1000", "--out", "{runs}/fmnist_10k.json"),
    "fmnist_5k.json": ("make_longtail.py", "--dataset", "fashion-mnist", "--data", "{fmnist}", "--ratio", "1",
                       "--per-class", "500", "--out", "{runs}/fmnist_5k.json"),
    "fmnist_lt100.json": ("make_longtail.py", "--dataset", "fashion-mnist", "--data", "{fmnist}", "--ratio", "100",
                          "--out", "{runs}/fmnist_lt100.json"),
}


def fm(*names):
    return [(name, FM_SUBSETS[name]) for name in names]


LT_SUBSETS = [
    ("cifar10_lt100.json", ("make_longtail.py", "--dataset", "cifar10", "--data", "{data}", "--ratio", "100",
                            "--out", "{runs}/cifar10_lt100.json")),
    ("cifar100_lt100.json", ("make_longtail.py", "--dataset", "cifar100", "--data", "{data}", "--ratio", "100",
                             "--out", "{runs}/cifar100_lt100.json")),
    ("imagenet_lt.json", ("make_longtail.py", "--dataset", "imagenet-lt", "--data", "{data}/imagenet", "--lists",
                          "{data}/imagenet_lt", "--out", "{runs}/imagenet_lt.json")),
]

# The instance partner and CLD of each method, as train_cld.py flags (the recipe rows do the rest).
METHOD = {"NPID": ("--lam", "0"), "MoCo": ("--moco", "--lam", "0"), "CLD": (), "CLDm": ("--moco",)}
KNN = (("monitor", ()),)
EVAL_KNN = (("knn", ()),)
LINEAR = (("linear", ()),)
LINEAR_CPU = (("linear", ("--cached-features",)),)


def cifar(dataset):
    return ("--dataset", dataset, "--data", "{data}")


# Paper-scale ImageNet runs: 8 GPUs (reproduce.py --launcher 'torchrun --nproc_per_node=8'). The NPID rows take
# the npid/imagenet(100) recipe rows (supplementary §2.1: batch 256, lr 0.03; ImageNet-100 batch 512, lr 0.8)
# and cluster the gathered batch: 32 or 64 images per GPU would leave every image its own group.
IMAGENET = ("--dataset", "imagenet", "--data", "{data}/imagenet", "--gather-groups")
IMAGENET100 = ("--dataset", "imagenet100", "--data", "{data}/imagenet", "--gather-groups")
# Table 5's CLDm without the MLP (R50, 24M parameters) is MoCo v1+CLD: no hidden layer, MoCo v1's augmentation
# and T_I 0.07 (MoCo v1's); the moco/imagenet row (MoCo v2+CLD) otherwise: our reading, the paper gives no
# more. CLDm with the MLP is the moco/imagenet row as it is.
MOCO_V1 = ("--moco", "--no-mlp", "--aug", "default", "--ins-t", "0.07")


# ---------------------------------------------------------------------------------------------- Table 1

def _table1():
    rows = []
    for ds, name, top1, top5 in (("cifar10", "CIFAR-10-LT", (32.3, 34.2, 41.1, 43.1), (74.8, 76.7, 78.9, 80.4)),
                                 ("cifar100", "CIFAR-100-LT", (10.2, 19.7, 21.7, 25.4), (29.8, 42.6, 44.3, 50.0))):
        for (method, flags), t1, t5 in zip(METHOD.items(), top1, top5):
            cpu = {}
            if ds == "cifar10":
                extra = CPU_MOCO[1:] if method in ("MoCo", "CLDm") else ()
                cpu = {"cpu": Run(FMLT + ("--epochs", "4") + flags + extra, EVAL_KNN),
                       "smoke": Run(SMOKE + flags + (SMOKE_MOCO[1:] if "--moco" in flags else ()), EVAL_KNN)}
            rows.append(Row(f"{ds}lt_{method.lower()}", f"{name} {method}", {"top1": t1, "top5": t5},
                            {"paper": Run(cifar(ds) + ("--subset", f"{{runs}}/{ds}_lt100.json") + flags, EVAL_KNN),
                             **cpu},
                            "Fashion-MNIST-LT (ratio 100, 14,886 images, 6000 ... 60 per class; LDAM-DRW's profile, "
                            "as CIFAR-10-LT), 4 epochs: the same imbalance over 10 classes" if cpu else ""))
    for method, flags, numbers in (("NPID", ("--lam", "0"), (47.5, 21.3, 6.6, 29.5, 51.1)),
                                   ("CLD", (), (52.4, 25.0, 8.3, 33.4, 56.6))):
        rows.append(Row(f"imagenetlt_{method.lower()}", f"ImageNet-LT {method}",
                        dict(zip(("linear_many", "linear_medium", "linear_few", "linear_top1", "linear_top5"), numbers)),
                        {"paper": Run(IMAGENET + ("--subset", "{runs}/imagenet_lt.json") + flags, LINEAR)}))
    claims = []
    for ds, name in (("cifar10", "CIFAR-10-LT"), ("cifar100", "CIFAR-100-LT")):
        claims += [above(f"CLD above NPID on {name} (top-1)", f"{ds}lt_cld", f"{ds}lt_npid", "top1"),
                   above(f"CLDm above MoCo on {name} (top-1)", f"{ds}lt_cldm", f"{ds}lt_moco", "top1"),
                   Claim(f"CLDm best of the four on {name} (top-1)", "best", metric="top1",
                         rows=tuple(f"{ds}lt_{m.lower()}" for m in METHOD), expected=(f"{ds}lt_cldm",))]
    claims += [above("CLD above NPID on CIFAR-10-LT's medium-shot classes", "cifar10lt_cld", "cifar10lt_npid",
                     "medium")]
    claims += [above(f"CLD above NPID on ImageNet-LT ({shot})", "imagenetlt_cld", "imagenetlt_npid", f"linear_{shot}")
               for shot in ("many", "medium", "few", "top1", "top5")]
    return Table("table1", "Long-tailed data: kNN on CIFAR-10-LT / CIFAR-100-LT, linear on ImageNet-LT",
                 "paper Table 1", ("top1", "top5", "many", "medium", "few", "linear_many", "linear_medium",
                                   "linear_few", "linear_top1", "linear_top5"), tuple(rows), tuple(claims),
                 prepare={"paper": LT_SUBSETS, "cpu": fm("fmnist_lt100.json")},
                 note="top1/top5: kNN (k 200) on CIFAR-LT; linear_*: the linear probe on ImageNet-LT; many/medium/few: "
                      "more than 100, 20 to 100, fewer than 20 training images (OLTR's groups). Fashion-MNIST-LT's "
                      "two smallest classes (100, 60) are its medium-shot classes; it has no few-shot class.")


# ---------------------------------------------------------------------------------------------- Table 2

def _table2():
    paper = {"stl10": (79.1, 80.8, 83.6, 84.3), "cifar10": (80.8, 82.1, 86.7, 87.5), "cifar100": (51.6, 53.1, 57.5, 58.1)}
    names = {"stl10": "STL-10", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
    rows = []
    for ds, numbers in paper.items():
        for (method, flags), top1 in zip(METHOD.items(), numbers):
            moco = "--moco" in flags
            runs = {"paper": Run(cifar(ds) + flags, KNN)}
            proxy = ""
            if ds == "cifar10":
                runs["cpu"] = Run(FM10K + ("--epochs", "5") + flags + (CPU_MOCO[1:] if moco else ()), KNN)
                runs["smoke"] = Run(SMOKE + flags + (SMOKE_MOCO[1:] if moco else ()), KNN)
                proxy = ("Fashion-MNIST, a balanced 10k subset (1,000 per class), 5 epochs: 10 classes of natural "
                         "images like CIFAR-10's, small enough for a CPU")
            if ds == "stl10":
                runs["cpu"] = Run(DIGITS + flags + (DIGITS_MOCO[1:] if moco else ()), KNN)
                proxy = "digits, the README's quick start (30 epochs of 1,437 images): a second, different dataset"
            rows.append(Row(f"{ds}_{method.lower()}", f"{names[ds]} {method}", {"top1": top1}, runs, proxy))
    claims = []
    for ds, name in names.items():
        claims += [above(f"CLD above NPID on {name}", f"{ds}_cld", f"{ds}_npid", "top1"),
                   above(f"CLDm above MoCo on {name}", f"{ds}_cldm", f"{ds}_moco", "top1"),
                   Claim(f"CLDm best of the four on {name}", "best", metric="top1",
                         rows=tuple(f"{ds}_{m.lower()}" for m in METHOD), expected=(f"{ds}_cldm",))]
    return Table("table2", "kNN top-1 on STL-10, CIFAR-10 and CIFAR-100", "paper Table 2", ("top1", "top5"),
                 tuple(rows), tuple(claims), prepare={"cpu": fm("fmnist_10k.json")},
                 note="kNN top-1 (k 200, sigma T_I) of the last epoch, L2-normalised f_I recomputed with the test "
                      "transform; the paper's STL-10 trains on train + unlabeled (105k images).")


# ---------------------------------------------------------------------------------------------- Table 3

def _table3():
    paper = {"cifar10": {"npid": (75.1, 57.7, 80.8, None), "cld": (78.6, 63.5, 86.7, (75.6, 69.0, 81.4))},
             "cifar100": {"npid": (48.7, 36.1, 51.6, None), "cld": (50.2, 43.8, 57.5, (48.8, 49.4, 51.8))}}
    rows = []
    for ds, methods in paper.items():
        for method, (r, nmi, knn, group) in methods.items():
            numbers = {"f_I.retrieval": r, "f_I.nmi": nmi, "f_I.knn": knn}
            if group:
                numbers.update(zip(("f_G.retrieval", "f_G.nmi", "f_G.knn"), group))
            flags = METHOD["NPID" if method == "npid" else "CLD"]
            runs = {"paper": Run(cifar(ds) + flags, (("features", ()),))}
            proxy = ""
            if ds == "cifar10":
                runs["cpu"] = Run(FM5K + ("--epochs", "8") + flags, (("features", ()),))
                runs["smoke"] = Run(SMOKE + flags, (("features", ("--selection-images", "256")),))
                proxy = "Fashion-MNIST, a balanced 5k subset, 8 epochs (the analysis runs' budget)"
            rows.append(Row(f"{ds}_{method}", f"{'CIFAR-10' if ds == 'cifar10' else 'CIFAR-100'} "
                                              f"{'NPID' if method == 'npid' else 'CLD'}", numbers, runs, proxy))
    claims = []
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        for m, what in (("retrieval", "retrieval"), ("nmi", "NMI"), ("knn", "kNN")):
            claims.append(Claim(f"CLD's f_I above NPID's f_I in {what} ({name})", "above",
                                left=(f"{ds}_cld", f"f_I.{m}"), right=(f"{ds}_npid", f"f_I.{m}")))
        claims += [Claim(f"CLD: f_G has the higher NMI ({name})", "above", left=(f"{ds}_cld", "f_G.nmi"),
                         right=(f"{ds}_cld", "f_I.nmi")),
                   Claim(f"CLD: f_I has the higher retrieval ({name})", "above", left=(f"{ds}_cld", "f_I.retrieval"),
                         right=(f"{ds}_cld", "f_G.retrieval")),
                   Claim(f"CLD: f_I has the higher kNN ({name})", "above", left=(f"{ds}_cld", "f_I.knn"),
                         right=(f"{ds}_cld", "f_G.knn"))]
    return Table("table3", "Feature quality of f_I and f_G: retrieval R(f, Y), NMI(f, Y), kNN", "paper Table 3",
                 ("f_I.retrieval", "f_I.nmi", "f_I.knn", "f_G.retrieval", "f_G.nmi", "f_G.knn"), tuple(rows),
                 tuple(claims), prepare={"cpu": fm("fmnist_5k.json")},
                 note="eval_features.py: top-1 retrieval and NMI of spherical k-means (K = classes, best of 5 "
                      "restarts) on the test set, kNN as eval_knn.py.")


# ---------------------------------------------------------------------------------------------- Table 4

def _table4():
    rows = [Row("cifar100_moco", "CIFAR-100 MoCo (baseline)", {"top1": 53.1},
                {"paper": Run(cifar("cifar100") + METHOD["MoCo"], KNN)})]
    for k, top1 in ((10, 55.2), (20, 55.4), (60, 56.7), (80, 57.4), (100, 57.7), (128, 58.1)):
        rows.append(Row(f"cifar100_k{k}", f"CIFAR-100 CLDm, {k} groups", {"top1": top1},
                        {"paper": Run(cifar("cifar100") + ("--moco", "--clusters", str(k)), KNN)}))
    proxy = "Fashion-MNIST 10k, 3 epochs, MoCo+CLD: 10 classes, so the groups run from a fifth to 8 times the classes"
    rows.append(Row("fmnist_moco", "Fashion-MNIST MoCo (baseline)", {},
                    {"cpu": Run(FM10K + ("--epochs", "3") + CPU_MOCO + ("--lam", "0"), KNN),
                     "smoke": Run(SMOKE + SMOKE_MOCO + ("--lam", "0"), KNN)}, proxy))
    for k in (2, 5, 10, 20, 40, 80):
        cpu_moco = ("--moco", "--queue", "4096", "--moco-momentum", "0.99", "--clusters", str(k))
        runs = {"cpu": Run(FM10K + ("--epochs", "3") + cpu_moco, KNN)}
        if k in (5, 20):
            runs["smoke"] = Run(SMOKE + SMOKE_MOCO + ("--clusters", str(k)), KNN)
        rows.append(Row(f"fmnist_k{k}", f"Fashion-MNIST CLDm, {k} groups", {}, runs, proxy))
    paper_k = tuple(f"cifar100_k{k}" for k in (10, 20, 60, 80, 100, 128))
    cpu_k = tuple(f"fmnist_k{k}" for k in (2, 5, 10, 20, 40, 80))
    claims = (Claim("CLDm best with #groups near #classes (CIFAR-100: 100 or 128 groups)", "best", metric="top1",
                    rows=paper_k, expected=("cifar100_k100", "cifar100_k128")),
              above("CLDm above MoCo already at 10 groups (CIFAR-100)", "cifar100_k10", "cifar100_moco", "top1"),
              Claim("CLDm best with #groups near #classes (Fashion-MNIST: 5 to 20 groups)", "best", metric="top1",
                    rows=cpu_k, expected=("fmnist_k5", "fmnist_k10", "fmnist_k20")),
              above("CLDm above MoCo at #groups = #classes (Fashion-MNIST, 10 groups)", "fmnist_k10", "fmnist_moco",
                    "top1"),
              above("CLDm above MoCo at 5 groups (Fashion-MNIST)", "fmnist_k5", "fmnist_moco", "top1"))
    return Table("table4", "CLDm's kNN top-1 against the number of groups", "paper Table 4", ("top1",), tuple(rows),
                 claims, prepare={"cpu": fm("fmnist_10k.json")},
                 note="The paper's CIFAR-100 MoCo+CLD trains with batch 128 (the authors' script), so 128 groups "
                      "make every image its own group. The cpu rows are their own sweep, not the paper's K values.")


# ---------------------------------------------------------------------------------------------- Table 5

def _table5():
    rows = []
    for (method, flags), top1 in zip(METHOD.items(), (75.3, 77.6, 79.7, 81.7)):
        moco = "--moco" in flags
        paper_flags = (MOCO_V1 + flags[1:]) if moco else flags
        rows.append(Row(f"imagenet100_{method.lower()}", f"ImageNet-100 {method}", {"linear_top1": top1},
                        {"paper": Run(IMAGENET100 + paper_flags, LINEAR),
                         "cpu": Run(FM10K + ("--epochs", "5") + flags + (CPU_MOCO[1:] if moco else ()), LINEAR_CPU),
                         "smoke": Run(SMOKE + flags + (SMOKE_MOCO[1:] if moco else ()), LINEAR_CPU)},
                        "Fashion-MNIST 10k, 5 epochs, the linear probe on cached features (100 epochs): a small "
                        "stand-in for a 100-class linear evaluation"))
    for (method, flags), top1 in zip(METHOD.items(), (56.5, 60.6, 60.6, 63.4)):
        paper_flags = (MOCO_V1 + flags[1:]) if "--moco" in flags else flags
        rows.append(Row(f"imagenet_{method.lower()}", f"ImageNet {method}", {"linear_top1": top1},
                        {"paper": Run(IMAGENET + paper_flags, LINEAR)}))
    rows.append(Row("imagenet_cldm_mlp", "ImageNet CLDm, MLP head (MoCo v2+CLD)", {"linear_top1": 69.4},
                    {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--moco",
                                   "--instance-head", "linear", "--group-head", "linear"), LINEAR)}))
    claims = (above("CLD above NPID (ImageNet-100)", "imagenet100_cld", "imagenet100_npid", "linear_top1"),
              above("CLDm above MoCo (ImageNet-100)", "imagenet100_cldm", "imagenet100_moco", "linear_top1"),
              Claim("CLDm best of the four (ImageNet-100)", "best", metric="linear_top1",
                    rows=tuple(f"imagenet100_{m.lower()}" for m in METHOD), expected=("imagenet100_cldm",)),
              above("CLDm above MoCo (ImageNet)", "imagenet_cldm", "imagenet_moco", "linear_top1"),
              above("CLD above NPID (ImageNet)", "imagenet_cld", "imagenet_npid", "linear_top1"),
              above("the MLP head adds to CLDm (ImageNet)", "imagenet_cldm_mlp", "imagenet_cldm", "linear_top1"))
    return Table("table5", "Linear probe top-1 on ImageNet-100 and ImageNet (ResNet-50, 200 epochs)", "paper Table 5",
                 ("linear_top1", "linear_top5"), tuple(rows), claims, prepare={"cpu": fm("fmnist_10k.json")},
                 note="ImageNet itself has no CPU proxy. The paper's ImageNet MLP row is 69.4 with linear heads; "
                      "the authors' README has 70.0 with NormMLP heads (table authors-readme).")


# ---------------------------------------------------------------------------------------------- Table 6

def _table6():
    semi_cpu = (("semi", ("--label-fraction", "0.01", "--epochs", "100", "--milestones", "60", "80",
                          "--batch-size", "64")),
                ("semi", ("--label-fraction", "0.1", "--epochs", "30", "--milestones", "18", "24",
                          "--batch-size", "64")))
    semi_paper = (("semi", ("--label-fraction", "0.01")), ("semi", ("--label-fraction", "0.1")))
    semi_smoke = (("semi", ("--label-fraction", "0.1", "--epochs", "2", "--milestones", "1")),)
    rows = []
    for key, label, flags, numbers in (("mocov2", "MoCo v2", ("--moco", "--lam", "0"), (38.7, 61.6)),
                                       ("cldm", "CLDm", ("--moco",), (45.8, 64.4))):
        rows.append(Row(key, label, {"semi1": numbers[0], "semi10": numbers[1]},
                        {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet") + flags, semi_paper),
                         "cpu": Run(FM10K + ("--epochs", "5") + flags + CPU_MOCO[1:], semi_cpu),
                         "smoke": Run(SMOKE + flags + SMOKE_MOCO[1:], semi_smoke)},
                        "Fashion-MNIST 10k, 5 epochs of MoCo(+CLD), then fine-tuned on 1% (100 images) and 10% "
                        "(1,000) of its labels: the recipe's 20 epochs are a handful of steps on so few images, so "
                        "100 and 30 epochs at batch 64"))
    claims = (above("CLDm above MoCo v2 with 1% of the labels", "cldm", "mocov2", "semi1"),
              above("CLDm above MoCo v2 with 10% of the labels", "cldm", "mocov2", "semi10"))
    return Table("table6", "Semi-supervised: fine-tuned top-1 with 1% and 10% of the labels", "paper Table 6",
                 ("semi1", "semi10"), tuple(rows), claims, prepare={"cpu": fm("fmnist_10k.json")},
                 note="eval_linear.py --label-fraction: the whole network fine-tuned on a class-balanced share of "
                      "the labels (supplementary §2: backbone lr 0.01, head x100, 20 epochs, x0.2 at 12 and 16).")


# ---------------------------------------------------------------------------------------------- Table 7

def _table7():
    voc = (("detectron2", ()),)
    rows = (Row("cld", "CLD", {"voc07.ap50": 75.7, "voc07.ap": 47.2, "voc0712.ap50": 82.0, "voc0712.ap": 56.4},
                {"paper": Run(IMAGENET, voc)}),
            Row("cldm", "CLDm w/o MLP", {"voc07.ap50": 76.8, "voc07.ap": 48.3, "voc0712.ap50": 82.4, "voc0712.ap": 56.7},
                {"paper": Run(IMAGENET + MOCO_V1, voc)}),
            Row("cldm_mlp", "CLDm w MLP", {"voc07.ap50": 77.6, "voc07.ap": 49.3, "voc0712.ap50": 82.7, "voc0712.ap": 57.0},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--moco"), voc)}))
    claims = (above("CLDm w/o MLP above CLD (VOC07 AP)", "cldm", "cld", "voc07.ap"),
              above("the MLP head adds to CLDm (VOC07 AP)", "cldm_mlp", "cldm", "voc07.ap"),
              above("CLDm w/o MLP above CLD (VOC07+12 AP)", "cldm", "cld", "voc0712.ap"))
    return Table("table7", "Transfer to PASCAL VOC detection: Faster R-CNN R50-C4 (detectron2)", "paper Table 7",
                 ("voc07.ap50", "voc07.ap", "voc0712.ap50", "voc0712.ap"), rows, claims,
                 note="No CPU proxy: detection needs detectron2 and GPUs. reproduce.py pretrains, converts the "
                      "backbone (convert_detectron2.py) and prints the detectron2 commands (docs/detection.md); put "
                      "detectron2's AP50 / AP into RUN/detection.json as {\"voc07\": {\"ap50\": .., \"ap\": ..}, "
                      "\"voc0712\": {...}} and the summary reads them.")


# ---------------------------------------------------------------------------------------------- Table 8 and Fig. 7

def _table8():
    rows = []
    for partner, flags, numbers in (("cld", (), ((75.3, 92.4), (78.8, 94.4), (79.7, 95.1), (78.9, 94.4), (78.8, 94.5),
                                                 (76.6, 93.2))),
                                    ("cldm", MOCO_V1, ((77.6, 93.8), (80.3, 95.0), (81.7, 95.7), (80.5, 95.2),
                                                       (80.1, 94.8), (78.4, 94.1)))):
        for lam, (top1, top5) in zip(("0", "0.1", "0.25", "0.5", "1", "3"), numbers):
            rows.append(Row(f"{partner}_lam{lam}", f"{partner.upper()} lambda = {lam}",
                            {"linear_top1": top1, "linear_top5": top5},
                            {"paper": Run(IMAGENET100 + flags + ("--lam", lam), LINEAR)}))
    for t, top1 in zip(("0.07", "0.1", "0.2", "0.3", "0.4", "0.5"), (79.3, 79.6, 81.7, 80.7, 79.4, 79.0)):
        rows.append(Row(f"cldm_t{t}", f"CLDm T_I = T_G = {t}", {"linear_top1": top1},
                        {"paper": Run(IMAGENET100 + MOCO_V1 + ("--ins-t", t, "--cld-t", t), LINEAR)}))
    proxy = ("Fashion-MNIST 5k, 8 epochs, NPID+CLD (the cheaper partner; the paper sweeps T with CLDm), kNN "
             "instead of the linear probe")
    for lam in ("0", "0.25", "1", "3"):
        rows.append(Row(f"fm_lam{lam}", f"Fashion-MNIST NPID+CLD lambda = {lam}", {},
                        {"cpu": Run(FM5K + ("--epochs", "8", "--lam", lam), KNN),
                         "smoke": Run(SMOKE + ("--lam", lam), KNN)}, proxy))
    for t in ("0.1", "0.5"):
        rows.append(Row(f"fm_t{t}", f"Fashion-MNIST NPID+CLD T_I = T_G = {t}, lambda = 1", {},
                        {"cpu": Run(FM5K + ("--epochs", "8", "--ins-t", t, "--cld-t", t), KNN),
                         "smoke": Run(SMOKE + ("--ins-t", t, "--cld-t", t), KNN)}, proxy))
    rows.append(Row("fm_t0.2", "Fashion-MNIST NPID+CLD T_I = T_G = 0.2, lambda = 1", {},
                    {"cpu": Run(FM5K + ("--epochs", "8", "--ins-t", "0.2", "--cld-t", "0.2"), KNN)}, proxy))
    lams = ("0.1", "0.25", "0.5", "1", "3")
    claims = tuple(above(f"CLD with lambda = {lam} above lambda = 0", f"cld_lam{lam}", "cld_lam0", "linear_top1")
                   for lam in lams) + (
        Claim("lambda = 0.25 best (CLD)", "best", metric="linear_top1",
              rows=tuple(f"cld_lam{l}" for l in ("0",) + lams), expected=("cld_lam0.25",)),
        Claim("lambda = 0.25 best (CLDm)", "best", metric="linear_top1",
              rows=tuple(f"cldm_lam{l}" for l in ("0",) + lams), expected=("cldm_lam0.25",)),
        Claim("T = 0.2 best (CLDm)", "best", metric="linear_top1",
              rows=tuple(f"cldm_t{t}" for t in ("0.07", "0.1", "0.2", "0.3", "0.4", "0.5")), expected=("cldm_t0.2",)),
        above("lambda = 0.25 above lambda = 3 (a large lambda hurts)", "cld_lam0.25", "cld_lam3", "linear_top1"),
        above("Fashion-MNIST: lambda = 0.25 above lambda = 0", "fm_lam0.25", "fm_lam0", "top1"),
        above("Fashion-MNIST: lambda = 1 above lambda = 0", "fm_lam1", "fm_lam0", "top1"),
        above("Fashion-MNIST: lambda = 0.25 above lambda = 3 (a large lambda hurts)", "fm_lam0.25", "fm_lam3", "top1"),
        Claim("Fashion-MNIST: T = 0.2 best of 0.1, 0.2, 0.5", "best", metric="top1",
              rows=("fm_t0.1", "fm_t0.2", "fm_t0.5"), expected=("fm_t0.2",)))
    return Table("table8", "Sensitivity to lambda and the temperature T", "paper Table 8",
                 ("linear_top1", "linear_top5", "top1", "top5"),
                 tuple(rows), claims, prepare={"cpu": fm("fmnist_5k.json")},
                 note="Paper: ImageNet-100, ResNet-50, linear probe; T_I = T_G in the T sweep.")


def _fig7():
    table8 = _table8()
    claims = (Claim("NMI(f, f') R(f, f') ranks the runs as kNN does (Spearman > 0)", "positive",
                    metric="spearman.score_vs_knn"),
              Claim("the product ranks better than NMI(f, f') alone", "above", left=("", "spearman.score_vs_knn"),
                    right=("", "spearman.nmi_vs_knn")),
              Claim("the product ranks better than R(f, f') alone", "above", left=("", "spearman.score_vs_knn"),
                    right=("", "spearman.r_vs_knn")))
    return Table("fig7", "Unsupervised hyper-parameter selection: NMI(f, f') R(f, f') against kNN", "paper Fig. 7",
                 ("selection.score", "selection.nmi", "selection.r", "top1", "linear_top1"), table8.rows, claims,
                 prepare=table8.prepare, after={"paper": "ranking", "cpu": "ranking", "smoke": "ranking"},
                 runs_of="table8",
                 note="The runs of table8 (its runs folder), ranked per seed by eval_features.py: the selection "
                      "score of f_I from two augmented views of the training images, against kNN top-1 (the paper "
                      "ranks against the linear probe on ImageNet-100).")


# ---------------------------------------------------------------------------------------------- Kitchen-HC

def _kitchen_hc():
    kitchen = ("--dataset", "kitchen-hc", "--data", "{data}/kitchen-hc")
    proxy = ("fashion-mnist-hc (2,000 base images x 10 views: a high-correlation set built like Kitchen-HC), 2 "
             "epochs; kNN on the real Fashion-MNIST test set")
    rows = []
    for (method, flags), top1 in zip(METHOD.items(), (69.5, 76.1, 78.9, 81.6)):
        moco = "--moco" in flags
        k = () if method in ("NPID", "MoCo") else ("--clusters", "10")
        rows.append(Row(method.lower(), method, {"top1": top1},
                        {"paper": Run(kitchen + flags + k, KNN),
                         "cpu": Run(FMHC + ("--epochs", "2") + flags + (CPU_MOCO[1:] if moco else ()) + k, KNN),
                         "smoke": Run(SMOKE + flags + (SMOKE_MOCO[1:] if moco else ()), KNN)}, proxy))
    for method, numbers in (("kmeans", (78.9, 76.3, 73.4, 70.8)), ("spectral", (77.1, 74.5, 72.6, 70.5))):
        for k, top1 in zip((10, 64, 128, 256), numbers):
            if method == "kmeans" and k == 10:
                continue  # the CLD row
            flags = ("--clusters", str(k), "--cluster-method", method)
            runs = {"paper": Run(kitchen + flags, KNN), "cpu": Run(FMHC + ("--epochs", "2") + flags, KNN)}
            if (method, k) == ("spectral", 10):
                runs["smoke"] = Run(SMOKE + ("--cluster-method", "spectral"), KNN)
            rows.append(Row(f"{method}_k{k}", f"CLD, {method}, {k} groups", {"top1": top1}, runs, proxy))
    claims = (above("CLD above NPID", "cld", "npid", "top1"), above("CLDm above MoCo", "cldm", "moco", "top1"),
              Claim("CLDm best of the four", "best", metric="top1", rows=("npid", "moco", "cld", "cldm"),
                    expected=("cldm",)),
              above("k-means above spectral clustering at 10 groups", "cld", "spectral_k10", "top1"),
              Claim("10 groups (about the classes) best of the k-means sweep", "best", metric="top1",
                    rows=("cld", "kmeans_k64", "kmeans_k128", "kmeans_k256"), expected=("cld",)),
              above("CLD with 256 groups still above NPID", "kmeans_k256", "npid", "top1"))
    return Table("kitchen-hc", "High-correlation data: kNN on Kitchen-HC; k-means against spectral grouping",
                 "paper Fig. 3 (right) and supplementary Table A.1", ("top1",), tuple(rows), claims,
                 note="Kitchen-HC: 11 classes, 80 epochs (supplementary §2.2). The CLD row is k-means with 10 "
                      "groups, the setting of the figure's CLD number (Table A.1's 78.9); CLDm takes the same 10. At 256 groups "
                      "and the batch of 256 (the supplementary's Kitchen-HC batch, and the proxy's) every image is its "
                      "own group, for k-means and spectral grouping alike (lib/cluster.py: neither forms more non-empty "
                      "groups than there are images), so those two rows train the same run.")


# ---------------------------------------------------------------------------------------------- ablation

def _ablation():
    variants = (("npid", "NPID", ("--lam", "0"), (80.8, 51.6)),
                ("shared", "+CLD, one shared head", ("--group-head", "shared", "--no-cross-view"), (82.7, 53.3)),
                ("separate", "+CLD, separate heads", ("--no-cross-view",), (84.2, 55.0)),
                ("cross", "+CLD, separate heads, cross-view (CLD)", (), (86.5, 57.5)))
    rows = []
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        for key, label, flags, numbers in variants:
            runs = {"paper": Run(cifar(ds) + flags, KNN)}
            proxy = ""
            if ds == "cifar10":
                runs["cpu"] = Run(FM10K + ("--epochs", "5") + flags, KNN)
                runs["smoke"] = Run(SMOKE + flags, KNN)
                proxy = "Fashion-MNIST 10k, 5 epochs (as table2's CIFAR-10 proxy)"
            rows.append(Row(f"{ds}_{key}", f"{name} {label}", {"top1": numbers[ds == "cifar100"]}, runs, proxy))
    claims = []
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100")):
        claims += [above(f"cross-level discrimination on one shared head above NPID ({name})", f"{ds}_shared",
                         f"{ds}_npid", "top1"),
                   above(f"separate heads above one shared head ({name})", f"{ds}_separate", f"{ds}_shared", "top1"),
                   above(f"cross-view comparison above same-view ({name})", f"{ds}_cross", f"{ds}_separate", "top1")]
    return Table("ablation", "Components of CLD: the cross-level term, separate heads, cross-view comparison",
                 "supplementary Table A.2", ("top1",), tuple(rows), tuple(claims), prepare={"cpu": fm("fmnist_10k.json")},
                 note="shared: --group-head shared (f_G is f_I); same-view: --no-cross-view (each view against its "
                      "own view's groups). kNN top-1.")


# ---------------------------------------------------------------------------------------------- the authors' README

def _authors_readme():
    folder = ("--dataset", "imagefolder", "--data", "{runs}/fmnist_folder", "--image-size", "32", "--arch", "resnet20",
              "--epochs", "5", "--batch-size", "128", "--clusters", "10", "--queue", "4096", "--moco-momentum", "0.99",
              "--warmup-epochs", "1", "--workers", "1", "--knn-every", "0")
    infomin_proxy = ("the Fashion-MNIST image folder (2,000 train / 1,000 val PNGs) at 32 px, 5 epochs: InfoMin's "
                     "jigsaw tiles and RandAugment need the image path")
    heads_proxy = "Fashion-MNIST 10k, 5 epochs, MoCo+CLD with MoCo v2's hidden layer"
    rows = (Row("mocov2_cld_normmlp", "MoCo v2+CLD, NormMLP heads, 200 epochs", {"linear_top1": 70.0},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--moco"), LINEAR),
                 "cpu": Run(FM10K + ("--epochs", "5", "--mlp") + CPU_MOCO, KNN),
                 "smoke": Run(SMOKE + SMOKE_MOCO + ("--mlp",), KNN)}, heads_proxy),
            Row("mocov2_cld_mlp", "MoCo v2+CLD, MLP heads, 200 epochs", {"linear_top1": 69.2},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--moco", "--instance-head",
                               "linear", "--group-head", "linear"), LINEAR),
                 "cpu": Run(FM10K + ("--epochs", "5", "--mlp", "--instance-head", "linear", "--group-head", "linear")
                            + CPU_MOCO, KNN)}, heads_proxy),
            Row("infomin_cld", "InfoMin+CLD, NormMLP, 100 epochs", {"linear_top1": 70.1},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--infomin"),
                              (("linear", ("--epochs", "61", "--milestones", "30", "40", "50", "--gamma", "0.2")),)),
                 "cpu": Run(folder + ("--infomin",), KNN)}, infomin_proxy),
            Row("infomin", "InfoMin (lambda = 0), 100 epochs", {"linear_top1": 67.4},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--infomin", "--lam", "0"),
                              (("linear", ("--epochs", "61", "--milestones", "30", "40", "50", "--gamma", "0.2")),)),
                 "cpu": Run(folder + ("--infomin", "--lam", "0"), KNN)}, infomin_proxy),
            Row("infomin_cld_200", "InfoMin+CLD, NormMLP, 200 epochs", {"linear_top1": 71.5},
                {"paper": Run(("--dataset", "imagenet", "--data", "{data}/imagenet", "--infomin", "--epochs", "200"),
                              (("linear", ("--epochs", "61", "--milestones", "30", "40", "50", "--gamma", "0.2")),))}))
    either = ("linear_top1", "top1")  # the linear probe on ImageNet, kNN on the cpu proxies
    claims = (above("NormMLP heads above MLP heads (MoCo v2+CLD)", "mocov2_cld_normmlp", "mocov2_cld_mlp", either),
              above("CLD adds to InfoMin", "infomin_cld", "infomin", either),
              above("200 epochs above 100 (InfoMin+CLD)", "infomin_cld_200", "infomin_cld", either))
    return Table("authors-readme", "The authors' README: MoCo v2+CLD and InfoMin+CLD on ImageNet (linear top-1)",
                 "the CLD authors' README", ("linear_top1", "top1"), rows, claims,
                 prepare={"cpu": fm("fmnist_10k.json") + [("fmnist_folder", (
                     "experiments/fashion_folder.py", "--data", "{fmnist}", "--out", "{runs}/fmnist_folder"))]},
                 note="Their InfoMin evaluation trains the linear probe 61 epochs (lr x0.2 at 30, 40, 50) with "
                      "RandAugment; eval_linear.py runs the schedule with MoCo's crop-and-flip. cpu: kNN top-1.")


# ---------------------------------------------------------------------------------------------- BYOL and C2BIN

def _byol_c2bin():
    proxy = ("Fashion-MNIST 10k, 3 epochs, BYOL's MLPs 512 wide (4096 on a GPU), kNN and k-means clustering of "
             "the test set")
    clusters = (("monitor", ()), ("clusters", ()))
    rows = []
    for ds, name, refs in (("cifar10", "CIFAR-10", {"byol": {"linear_top1": 92.58},
                                                   "c2bin": {"nmi": 70.5, "acc": 79.0, "ari": 63.7}}),
                           ("cifar100", "CIFAR-100", {"byol": {"linear_top1": 70.46},
                                                     "c2bin": {"nmi": 43.1, "acc": 42.9, "ari": 26.6}}),
                           ("stl10", "STL-10", {"byol": {}, "c2bin": {"nmi": 76.4, "acc": 85.0}})):
        for key, label, flags in (("byol", "BYOL", ("--byol", "--lam", "0")), ("byolcld", "BYOL+CLD", ("--byol",)),
                                  ("c2bin", "C2BIN (our reading)", ("--c2bin",))):
            runs = {"paper": Run(cifar(ds) + flags, clusters + (("linear", ()),))}
            if ds == "cifar10":
                runs["cpu"] = Run(FM10K + ("--epochs", "3", "--byol-hidden", "512") + flags, clusters)
                runs["smoke"] = Run(SMOKE + ("--byol-hidden", "64") + flags, clusters)
            rows.append(Row(f"{ds}_{key}", f"{name} {label}", refs.get(key, {}), runs, proxy if ds == "cifar10" else ""))
    # Two more stand-ins, with no paper row: the long-tailed and the high-correlation data CLD is about.
    for ds, name, data, epochs in (("fmnistlt", "Fashion-MNIST-LT", FMLT, "2"), ("fmnisthc", "fashion-mnist-hc", FMHC, "2")):
        for key, label, flags in (("byol", "BYOL", ("--byol", "--lam", "0")), ("byolcld", "BYOL+CLD", ("--byol",)),
                                  ("c2bin", "C2BIN (our reading)", ("--c2bin",))):
            rows.append(Row(f"{ds}_{key}", f"{name} {label}", {},
                            {"cpu": Run(data + ("--epochs", epochs, "--byol-hidden", "512") + flags, clusters)},
                            f"{name}, {epochs} epochs, BYOL's MLPs 512 wide"))
    claims = []
    for ds, name in (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"), ("stl10", "STL-10"),
                     ("fmnistlt", "Fashion-MNIST-LT"), ("fmnisthc", "fashion-mnist-hc")):
        claims += [above(f"BYOL+CLD above BYOL in kNN ({name})", f"{ds}_byolcld", f"{ds}_byol", "top1"),
                   above(f"BYOL+CLD clusters better than BYOL (k-means NMI, {name})", f"{ds}_byolcld", f"{ds}_byol",
                         "nmi"),
                   above(f"C2BIN clusters better than BYOL (k-means NMI, {name})", f"{ds}_c2bin", f"{ds}_byol", "nmi")]
    return Table("byol-c2bin", "BYOL, BYOL+CLD (arXiv v5 abstract) and C2BIN (its abstract)",
                 "reference numbers: solo-learn's BYOL (linear, 1000 epochs); Contrastive Clustering (Li et al. "
                 "2021) for clustering (CIFAR-100 on its 20 superclasses)",
                 ("top1", "linear_top1", "nmi", "acc", "ari", "head_nmi", "head_acc"), tuple(rows), tuple(claims),
                 prepare={"cpu": fm("fmnist_10k.json", "fmnist_lt100.json")},
                 note="Neither abstract gives numbers; the reference numbers are other systems' (BYOL alone; "
                      "Contrastive Clustering), not targets for BYOL+CLD or C2BIN.")


# ---------------------------------------------------------------------------------------------- precision

def _precision():
    proxy = "Fashion-MNIST 10k, 5 epochs, NPID+CLD (table2's CIFAR-10 proxy)"
    rows = tuple(Row(f"npidcld_{p}", f"NPID+CLD, --precision {p}", {},
                     {"cpu": Run(FM10K + ("--epochs", "5", "--precision", p), KNN),
                      "smoke": Run(SMOKE + ("--precision", p), KNN)}, proxy) for p in ("fp32", "bf16"))
    claims = (Claim("bf16 autocast moves kNN top-1 by less than 2 points", "within", left=("npidcld_bf16", "top1"),
                    right=("npidcld_fp32", "top1"), tolerance=2.0),)
    return Table("precision", "bf16 autocast against fp32 (the GPU's default against the CPU's)",
                 "none: a check of this reproduction", ("top1",), rows, claims, prepare={"cpu": fm("fmnist_10k.json")},
                 note="Grouping, kNN and the clustering scores compute in float32 under either (lib/precision.py).")


# ---------------------------------------------------------------------------------------------- the data paths

def _datapath():
    proxy = "Fashion-MNIST 10k, 5 epochs, NPID+CLD (table2's CIFAR-10 proxy); and digits, the quick start"
    rows = []
    for data, label, base, smoke in (("fmnist", "Fashion-MNIST 10k", FM10K + ("--epochs", "5"), True),
                                     ("digits", "digits quick start", DIGITS, False)):
        for path in ("loader", "device"):
            runs = {"cpu": Run(base + ("--data-path", path), KNN)}
            if smoke:
                runs["smoke"] = Run(SMOKE + ("--data-path", path), KNN)
            rows.append(Row(f"{data}_{path}", f"{label}, --data-path {path}", {}, runs, proxy))
    claims = tuple(Claim(f"the device path trains as well as the loader ({label}, kNN within 2 points)", "within",
                         left=(f"{data}_device", "top1"), right=(f"{data}_loader", "top1"), tolerance=2.0)
                   for data, label in (("fmnist", "Fashion-MNIST"), ("digits", "digits")))
    return Table("datapath", "The two data paths: PIL transforms in a DataLoader against batched tensor ops",
                 "none: a check of this reproduction", ("top1",), tuple(rows), claims,
                 prepare={"cpu": fm("fmnist_10k.json")},
                 note="The same recipe drawn two ways (lib/augment.py, lib/batch_augment.py): the augmentations "
                      "differ image by image, so only the accuracy can agree.")


TABLES = {table.name: table for table in (
    _table1(), _table2(), _table3(), _table4(), _table5(), _table6(), _table7(), _table8(), _kitchen_hc(),
    _ablation(), _fig7(), _authors_readme(), _byol_c2bin(), _precision(), _datapath())}


def budgets(table):
    """The budgets a table offers: those at which at least one of its rows has a run."""
    return tuple(b for b in BUDGETS if any(b in row.runs for row in table.rows))
