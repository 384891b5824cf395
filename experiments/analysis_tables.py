"""Markdown tables of experiments/analysis_runs.sh's results for the README.

    python experiments/analysis_tables.py runs/analysis

table3.jsonl -> Table 3 (retrieval, NMI, kNN of NPID f_I, NPID+CLD f_I and f_G) as mean +- sample std over seeds,
and per seed; sweep.jsonl (and sweep_k50.jsonl) -> one row per (lambda, T_G) with the selection score beside kNN,
and the Spearman correlations.
"""
import json
import os
import sys

import numpy as np

COLUMNS = (("retrieval_top1", "R(f, Y)"), ("nmi", "NMI(f, Y)"), ("knn_top1", "kNN top-1"),
           ("cluster_acc", "cluster acc."), ("ari", "ARI"))
# The paper's Table 3 (CIFAR-10 / CIFAR-100): retrieval, NMI, kNN.
PAPER = {("NPID", "f_I"): ((75.1, 57.7, 80.8), (48.7, 36.1, 51.6)),
         ("NPID+CLD", "f_I"): ((78.6, 63.5, 86.7), (50.2, 43.8, 57.5)),
         ("NPID+CLD", "f_G"): ((75.6, 69.0, 81.4), (48.8, 49.4, 51.8))}


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def method(record):
    return "NPID" if record["lam"] == 0 else "NPID+CLD"


def table3(records):
    rows = []
    print("| method, feature | " + " | ".join(name for _, name in COLUMNS) + " | paper CIFAR-10 (R / NMI / kNN) "
          "| paper CIFAR-100 |")
    print("|---" * (len(COLUMNS) + 3) + "|")
    for (m, f), (c10, c100) in PAPER.items():
        runs = [r for r in records if "ranking" not in r and method(r) == m and f in r["features"]]
        values = np.array([[r["features"][f][key] for key, _ in COLUMNS] for r in runs])
        cells = [f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0:.1f}" for v in values.T]
        print(f"| {m} {f} ({len(runs)} seeds) | " + " | ".join(cells) + f" | {' / '.join(map(str, c10))} | "
              f"{' / '.join(map(str, c100))} |")
        rows.append((m, f, runs))
    print("\nPer seed (R / NMI / kNN / cluster acc. / ARI):\n")
    seeds = sorted({r.get("seed") for _, _, runs in rows for r in runs}, key=str)
    print("| method, feature | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    print("|---" * (len(seeds) + 1) + "|")
    for m, f, runs in rows:
        by_seed = {r.get("seed"): r for r in runs}
        cells = [" / ".join(f"{by_seed[s]['features'][f][key]:.1f}" for key, _ in COLUMNS) if s in by_seed else "-"
                 for s in seeds]
        print(f"| {m} {f} | " + " | ".join(cells) + " |")


def sweep(records):
    runs = [r for r in records if "ranking" not in r]
    ranking = next((r for r in records if "ranking" in r), None)
    print("| λ | T_G | run | NMI(f, f') | R(f, f') | score | kNN top-1 (f_I) |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(runs, key=lambda r: (r["lam"], r["cld_t"])):
        s = r["selection"][r["selection_feature"]]
        t_g = "-" if r["lam"] == 0 else r["cld_t"]
        print(f"| {r['lam']:g} | {t_g} | {r['run']} | {s['nmi']:.4f} | {s['r']:.4f} | {s['score']:.2e} | "
              f"{r['features']['f_I']['knn_top1']:.2f} |")
    if ranking:
        print("\nSpearman with kNN top-1: " + ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} undefined"
                                                     for k, v in ranking["spearman"].items()))
    for feature in ("backbone", "f_I", "f_G"):  # the alternatives to the default f_I, from the same runs
        have = [r for r in runs if feature in r["selection"]]
        if len(have) > 2:
            from lib.analysis import spearman
            knn = [r["features"]["f_I"]["knn_top1"] for r in have]
            rho = {k: spearman([r["selection"][feature][k] for r in have], knn) for k in ("score", "nmi", "r")}
            print(f"- score of {feature} ({len(have)} runs): " + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folder = sys.argv[1] if len(sys.argv) > 1 else "runs/analysis"
    if os.path.isfile(os.path.join(folder, "table3.jsonl")):
        print("## Table 3\n")
        table3(read(os.path.join(folder, "table3.jsonl")))
    for name, title in (("sweep", "Sweep"), ("sweep_k50", "Sweep, K = 50 for NMI(f, f')")):
        if os.path.isfile(os.path.join(folder, f"{name}.jsonl")):
            print(f"\n## {title}\n")
            sweep(read(os.path.join(folder, f"{name}.jsonl")))
