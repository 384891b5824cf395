"""Summarise the BYOL / BYOL+CLD / C2BIN blocks of experiments/seeds.sh (byol-fmnist, byol-fmnist-lt,
byol-fmnist-hc) with their NPID+CLD and MoCo+CLD arms at the same budget.

Reads RUNS/NAME_ARM_sSEED (config.json, the last line of metrics.jsonl) and RUNS/NAME_ARM_sSEED.clusters.json
(eval_clusters.py), and writes experiments/results_byol.md (per dataset and arm: kNN top-1 and the test
set's clustering NMI / ACC / ARI as mean ± sample std over seeds, the per-seed values, wall time, command)
and experiments/results_byol.jsonl (one strict-JSON object per run).

    python experiments/summarise_byol.py --runs runs [--out experiments/results_byol]
"""
import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import summarise  # noqa: E402
from summarise import fmt, mean_std, train_size, verdict  # noqa: E402

BLOCKS = {"fmbyol": "Fashion-MNIST, balanced 10k subset", "ltbyol": "Fashion-MNIST-LT, ratio 100",
          "hcbyol": "fashion-mnist-hc"}
ARMS = {"byol": "BYOL", "byolcld": "BYOL+CLD", "c2bin": "C2BIN", "npidcld": "NPID+CLD", "mococld": "MoCo+CLD"}
# RUNS/untrained_fmnist.json (experiments/untrained_fmnist.py): the balanced block's networks before training.
UNTRAINED = {"byol": "untrained: the BYOL arms' backbone feature", "npid": "untrained: NPID's f_I",
             "moco": "untrained: MoCo's f_I"}
# (arm, arm) pairs whose same-seed differences are stated: the first against the second.
PAIRS = (("byolcld", "byol"), ("c2bin", "byol"), ("byolcld", "npidcld"), ("byolcld", "mococld"), ("c2bin", "byolcld"))
RUN_NAME = re.compile(r"^(?P<block>[a-z]+)_(?P<arm>[a-z0-9]+)_s(?P<seed>\d+)$")


def read_run(runs, name):
    """summarise.py's reading of a finished run, plus its clustering scores (RUNS/NAME.clusters.json)."""
    run = summarise.read_run(runs, name)
    if run is None:
        return None
    path = os.path.join(runs, name) + ".clusters.json"
    if os.path.exists(path) and os.path.getsize(path):
        with open(path) as f:
            clusters = json.loads(f.read().strip().splitlines()[-1])
        for kind in ("kmeans", "head"):
            if kind in clusters:
                run.update({f"{kind}_{m}": clusters[kind][m] for m in ("nmi", "acc", "ari")})
    return run


def cell(runs, key, digits=1):
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-", "-"
    m, s = mean_std(values)
    return fmt(m, s), " / ".join(f"{v:.{digits}f}" for v in values)


def budget(config, images):
    return (f"{config['arch']}, {config['image_size']}x{config['image_size']} px, {config['epochs']} epochs, "
            f"batch {config['batch_size']}, {images:,} training images")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_byol"))
    args = p.parse_args()
    found = {}
    for entry in sorted(os.listdir(args.runs)):
        m = RUN_NAME.match(entry)
        if m and m["block"] in BLOCKS and m["arm"] in ARMS and os.path.isdir(os.path.join(args.runs, entry)):
            run = read_run(args.runs, entry)
            if run:
                found.setdefault((m["block"], m["arm"]), []).append(run)
    lines = ["# BYOL, BYOL+CLD and C2BIN beside NPID+CLD and MoCo+CLD (CPU budget)", "",
             "Written by `experiments/summarise_byol.py` from the run folders of `experiments/seeds.sh byol-fmnist "
             "byol-fmnist-lt byol-fmnist-hc`. kNN: top-1 (%) of the last epoch on the test set, k 200, sigma = T_I, "
             "on each arm's evaluation feature (BYOL arms: the backbone feature; NPID / MoCo: f_I). Clustering "
             "(eval_clusters.py, %): NMI / ACC (Hungarian) / ARI on the 10,000 test images, of spherical k-means "
             "(K 10, best of 5 k-means++ runs) on the same feature; for C2BIN also of its own smallest head "
             "(K 10, argmax). mean ± sample std (ddof 1) over seeds; per-seed values in seed order. Wall time: "
             "seconds per run, OMP_NUM_THREADS=1 on a shared 2-core machine, two runs at a time. The runs were trained "
             "on the DataLoader path before `--data-path` existed: on later versions add `--data-path loader` to "
             "the commands below to train as they did (seeds.sh does).", ""]
    records = []
    for block, title in BLOCKS.items():
        rows = [(arm, found.get((block, arm), [])) for arm in ARMS]
        done = [r for _, runs in rows for r in runs]
        if not done:
            continue
        config = done[0]["config"]
        lines += [f"## {title}", "", f"Budget: {budget(config, train_size(config))}.", "",
                  "| arm | kNN top-1 | per seed | k-means NMI | ACC | ARI | head NMI | head ACC | head ARI | seeds "
                  "| wall s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm, runs in rows:
            runs = sorted(runs, key=lambda r: r["seed"])
            top1, per_seed = cell(runs, "top1")
            measures = [cell(runs, f"{kind}_{m}")[0] for kind in ("kmeans", "head") for m in ("nmi", "acc", "ari")]
            walls = " / ".join(f"{r['wall_s']:.0f}" for r in runs if "wall_s" in r) or "-"
            seeds = ",".join(str(r["seed"]) for r in runs) or "not run"
            lines.append(f"| {ARMS[arm]} | {top1} | {per_seed} | " + " | ".join(measures) + f" | {seeds} | {walls} |")
            for r in runs:
                records.append({k: v for k, v in r.items() if k != "config"} | {"block": block, "arm": arm})
        untrained = os.path.join(args.runs, "untrained_fmnist.json")
        if block == "fmbyol" and os.path.exists(untrained):
            with open(untrained) as f:
                scores = json.load(f)
            for arm, label in UNTRAINED.items():
                runs = [dict(scores[k], top1=scores[k]["knn_top1"], kmeans_nmi=scores[k]["nmi"], kmeans_acc=scores[k]["acc"],
                             kmeans_ari=scores[k]["ari"]) for k in sorted(scores) if k.startswith(arm + "_s")]
                top1, per_seed = cell(runs, "top1")
                measures = [cell(runs, f"kmeans_{m}")[0] for m in ("nmi", "acc", "ari")]
                lines.append(f"| {label} | {top1} | {per_seed} | " + " | ".join(measures) + " | - | - | - | 0,1,2 | - |")
        lines += ["", "What the spread allows (same-seed differences, kNN top-1 and k-means NMI):", ""]
        by_arm = dict(rows)
        for first, second in PAIRS:
            for key, what in (("top1", "kNN"), ("kmeans_nmi", "NMI")):
                a = {r["seed"]: r[key] for r in by_arm[first] if key in r}
                b = {r["seed"]: r[key] for r in by_arm[second] if key in r}
                lines.append(f"- {ARMS[first]} vs {ARMS[second]}, {what}: {verdict(b, a, ARMS[second], ARMS[first])}")
        lines.append("")
        lines.append("Per-seed clustering (k-means NMI / ACC / ARI):")
        lines.append("")
        for arm, runs in rows:
            runs = sorted(runs, key=lambda r: r["seed"])
            per = "; ".join(f"s{r['seed']} {r.get('kmeans_nmi', '-')} / {r.get('kmeans_acc', '-')} / "
                            f"{r.get('kmeans_ari', '-')}" for r in runs)
            head = "; ".join(f"s{r['seed']} {r.get('head_nmi', '-')} / {r.get('head_acc', '-')} / "
                             f"{r.get('head_ari', '-')}" for r in runs if "head_nmi" in r)
            lines.append(f"- {ARMS[arm]}: {per}" + (f"; head {head}" if head else ""))
        lines.append("")
    lines += ["## Commands", ""]
    for (block, arm), runs in sorted(found.items()):
        first = min(runs, key=lambda r: r["seed"])
        if "command" in first:
            lines.append(f"- {BLOCKS[block]}, {ARMS[arm]} (seed {first['seed']}; other seeds change `--seed`): "
                         f"`{first['command']}`")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=False) + "\n")
    print(f"wrote {args.out}.md and {args.out}.jsonl ({len(records)} runs)")


if __name__ == "__main__":
    main()
