"""Summarise the seeded CPU comparisons of experiments/seeds.sh.

Reads every run folder RUNS/NAME_ARM_sSEED (config.json, the last line of metrics.jsonl, and, where
present, RUNS/NAME_ARM_sSEED.knn.json from eval_knn.py, .wall and .cmd) and writes
experiments/results.md (one table row per comparison and arm: mean ± sample std over seeds, the
per-seed values, budget, wall time, command) and experiments/results.jsonl (one strict-JSON object per
run, then one per comparison). Runs that did not finish are listed as not run. Nothing is hard-coded
but the names of the comparisons and arms.

    python experiments/summarise.py --runs runs [more run folders] [--out experiments/results]
"""
import argparse
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# comparison -> (title, baseline arm, CLD arm, labels of the two arms)
COMPARISONS = {
    "quick": ("digits, the README quick start (NPID+CLD vs NPID)", "base", "cld", "NPID", "NPID+CLD"),
    "fmnist": ("Fashion-MNIST, balanced 10k subset (NPID vs NPID+CLD)", "base", "cld", "NPID", "NPID+CLD"),
    "fmnistlt": ("Fashion-MNIST-LT, ratio 100 (NPID vs NPID+CLD)", "base", "cld", "NPID", "NPID+CLD"),
    "fmnisthc": ("fashion-mnist-hc (NPID vs NPID+CLD)", "base", "cld", "NPID", "NPID+CLD"),
    "digitsmoco": ("digits, MoCo vs MoCo+CLD", "base", "cld", "MoCo", "MoCo+CLD"),
    "fmnistmoco": ("Fashion-MNIST, balanced 10k subset, MoCo vs MoCo+CLD", "base", "cld", "MoCo", "MoCo+CLD"),
    "gather": ("digits MoCo+CLD on 2 processes: groups per process vs --gather-groups", "perproc", "gathered",
               "per process", "--gather-groups"),
    "dpquick": ("digits, the README quick start (NPID+CLD): --data-path loader vs device", "loader", "device",
                "loader", "device"),
    "dpfmnist": ("Fashion-MNIST, balanced 10k subset (NPID+CLD): --data-path loader vs device", "loader", "device",
                 "loader", "device"),
}
RUN_NAME = re.compile(r"^(?P<comp>[a-z]+)_(?P<arm>[a-z]+)_s(?P<seed>\d+)$")


def read_run(runs, name):
    folder = os.path.join(runs, name)
    if not os.path.exists(folder + ".done"):
        return None
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        last = json.loads(f.read().splitlines()[-1])
    run = {"name": name, "epoch": last["epoch"], "top1": last["knn_top1"], "top5": last["knn_top5"],
           "group_acc": last["group_acc"], "lam": config["lam"], "seed": config["seed"], "config": config}
    if last["epoch"] != config["epochs"]:
        return None
    knn_file = folder + ".knn.json"
    if os.path.exists(knn_file) and os.path.getsize(knn_file):
        with open(knn_file) as f:
            knn = json.loads(f.read().strip().splitlines()[-1])
        run["eval_knn"] = knn
        for key in ("many", "medium", "few"):
            if knn.get(key) is not None:
                run[key] = knn[key]
    if os.path.exists(folder + ".wall"):
        with open(folder + ".wall") as f:
            run["wall_s"] = float(f.read().strip().splitlines()[-1])
    if os.path.exists(folder + ".cmd"):
        with open(folder + ".cmd") as f:
            run["command"] = readable(f.read().strip(), runs)
    return run


def readable(command, runs):
    """The command as one would type it in the repository: `python`, and run folders under runs/."""
    words = command.split()
    if words and os.path.basename(words[0]).startswith("python"):
        words[0] = "python"
    prefix = os.path.normpath(runs) + os.sep
    return " ".join("runs/" + w[len(prefix):] if w.startswith(prefix) else w for w in words)


def budget(config, train_size):
    parts = [config["arch"], f"{config['image_size']}x{config['image_size']} px", f"{config['epochs']} epochs",
             f"batch {config['batch_size']}", f"{train_size:,} training images" if train_size else None,
             f"K {config['clusters']}" if config["lam"] else None,
             f"queue {config['queue']}, key momentum {config['moco_momentum']}" if config["moco"] else None,
             f"{config['world_size']} processes" if config["world_size"] > 1 else None]
    return ", ".join(p for p in parts if p)


def train_size(config):
    if config.get("subset"):
        with open(config["subset"]) as f:
            return len(json.load(f)["indices"])
    from lib.data import load_dataset
    return len(load_dataset(config["dataset"], config["data"], "train"))


def mean_std(values):
    if not values:
        return None, None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt(m, s):
    if m is None:
        return "not run"
    return f"{m:.1f} ± {s:.1f}" if s is not None else f"{m:.1f} (one seed)"


def verdict(base, cld, label_base, label_cld):
    """What the spread allows one to conclude, from the per-seed top-1 of both arms."""
    seeds = sorted(set(base) & set(cld))
    if len(seeds) < 2:
        return "fewer than two seeds of both arms: no conclusion"
    diffs = [cld[s] - base[s] for s in seeds]
    mb, sb = mean_std([base[s] for s in seeds])
    mc, sc = mean_std([cld[s] for s in seeds])
    gap = mc - mb
    larger_std = max(sb, sc)
    ahead = sum(d > 0 for d in diffs)
    per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
    if ahead == len(seeds) or ahead == 0:
        winner = label_cld if ahead else label_base
        return (f"{winner} ahead in all {len(seeds)} seeds (same-seed differences {per_seed}; "
                f"mean difference {gap:+.1f}, larger std {larger_std:.1f})")
    relation = "smaller" if abs(gap) < larger_std else "larger"
    return (f"the mean difference ({gap:+.1f}) is {relation} than the larger std ({larger_std:.1f}) and the sign "
            f"changes between seeds ({per_seed}): no conclusion")


def untrained_digits():
    """kNN top-1 of the untrained ResNet-20 on digits, as tests/test_train.py computes it."""
    import torch
    from lib.data import dataset_info, load_dataset
    from lib.augment import test_transform as eval_transform
    from lib.knn import knn_eval
    from lib.models import CLDNet
    info = dataset_info("digits")
    train_set = load_dataset("digits", None, "train", eval_transform(info))
    test_set = load_dataset("digits", None, "test", eval_transform(info))
    torch.manual_seed(0)
    untrained = CLDNet("resnet20", 1).eval()
    top1, top5 = knn_eval(untrained.embed, train_set, test_set, "cpu", 200, 0.1)
    return top1, top5


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs"], help="folders of run folders (a run in a later one wins)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--seeds", default="0,1,2", help="the seeds every comparison should have")
    args = p.parse_args()
    want = [int(s) for s in args.seeds.split(",")]

    runs, folder_of = {}, {}
    for folder in args.runs:
        for entry in sorted(os.listdir(folder)):
            m = RUN_NAME.match(entry)
            if m and os.path.isdir(os.path.join(folder, entry)) and m["comp"] in COMPARISONS:
                runs[(m["comp"], m["arm"], int(m["seed"]))] = read_run(folder, entry)
                folder_of[entry] = folder

    rows, records, missing = [], [], []
    for comp, (title, arm_b, arm_c, label_b, label_c) in COMPARISONS.items():
        per_arm = {}
        for arm, label in ((arm_b, label_b), (arm_c, label_c)):
            done = {s: runs[(comp, arm, s)] for s in want if runs.get((comp, arm, s))}
            missing += [f"{comp}_{arm}_s{s}" for s in want if not runs.get((comp, arm, s))]
            per_arm[arm] = done
            if not done:
                continue
            first = next(iter(done.values()))
            record = {"comparison": comp, "title": title, "arm": label, "seeds": sorted(done),
                      "budget": budget(first["config"], train_size(first["config"])),
                      "command": first.get("command"), "wall_s": [done[s].get("wall_s") for s in sorted(done)]}
            for key in ("top1", "top5", "group_acc", "many", "medium", "few"):
                values = [done[s][key] for s in sorted(done) if done[s].get(key) is not None]
                if len(values) == len(done):
                    m, s = mean_std(values)
                    record[key] = {"mean": m, "std": s, "per_seed": values}
            records.append(record)
        if per_arm[arm_b] or per_arm[arm_c]:
            v = verdict({s: r["top1"] for s, r in per_arm[arm_b].items()},
                        {s: r["top1"] for s, r in per_arm[arm_c].items()}, label_b, label_c)
            for record in records:
                if record["comparison"] == comp:
                    record["conclusion"] = v
            rows.append((comp, title, v))

    # Elapsed time of each folder's set: from the earliest start (end time of a run's .wall file minus its wall
    # time) to the latest end, and the sum of the runs' wall times.
    sets = []
    for folder in args.runs:
        spans = [(os.path.getmtime(os.path.join(folder, r["name"] + ".wall")), r["wall_s"])
                 for r in runs.values() if r and r.get("wall_s") is not None and folder_of[r["name"]] == folder]
        if spans:
            sets.append((folder, len(spans), max(end for end, _ in spans) - min(end - wall for end, wall in spans),
                         sum(wall for _, wall in spans)))

    untrained = untrained_digits()
    with open(args.out + ".jsonl", "w") as f:
        for (comp, arm, seed), run in sorted(runs.items()):
            if run:
                out = {k: v for k, v in run.items() if k != "config"}
                out.update({"comparison": comp, "arm": arm})
                f.write(json.dumps(out, allow_nan=False) + "\n")
        for record in records:
            f.write(json.dumps({"summary": True, **record}, allow_nan=False) + "\n")
        f.write(json.dumps({"summary": True, "comparison": "untrained", "title": "untrained ResNet-20 on digits "
                            "(torch.manual_seed(0), tests/test_train.py)", "top1": untrained[0], "top5": untrained[1]},
                           allow_nan=False) + "\n")

    lines = ["# Seeded CPU comparisons", "",
             f"Written by `experiments/summarise.py --runs {' '.join(args.runs)}` from the run folders of "
             "`experiments/seeds.sh`. "
             "kNN top-1 / top-5 (%) of the last epoch on the test set, k 200, sigma = T_I. "
             "mean ± sample std (ddof 1) over seeds; per-seed values in seed order. Wall time: seconds per run, "
             "measured with OMP_NUM_THREADS=1 on a shared 2-core machine, two runs at a time (the 2-process runs alone).",
             "", "| comparison | arm | top-1 | top-5 | per-seed top-1 | seeds | budget | wall s per run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        top1 = r.get("top1", {})
        top5 = r.get("top5", {})
        per_seed = " / ".join(f"{v:.1f}" for v in top1.get("per_seed", []))
        extra = ""
        if "many" in r:
            extra = " (" + ", ".join(f"{k} {fmt(r[k]['mean'], r[k]['std'])}" for k in ("many", "medium", "few")
                                         if k in r) + ")"
        walls = " / ".join(f"{w:.0f}" for w in r["wall_s"] if w is not None)
        lines.append(f"| {r['title']} | {r['arm']} | {fmt(top1.get('mean'), top1.get('std'))}{extra} | "
                     f"{fmt(top5.get('mean'), top5.get('std'))} | {per_seed} | {','.join(map(str, r['seeds']))} | "
                     f"{r['budget']} | {walls} |")
    shots = [r["eval_knn"] for r in runs.values() if r and "eval_knn" in r and "many_above" in r["eval_knn"]]
    if shots:
        knn = shots[0]
        lines += ["", f"many / medium / few: mean per-class top-1 of eval_knn.py over classes with more than "
                  f"{knn['many_above']} training images / {knn['few_below']} to {knn['many_above']} / fewer than "
                  f"{knn['few_below']}" + (" (no class has fewer here)" if knn.get("few") is None else "") + "."]
    lines += ["", "## What the spread allows", ""]
    lines += [f"- {title}: {v}." for _, title, v in rows]
    if any(r["comparison"] == "gather" for r in records):
        lines += ["", "Group accuracy (%, mean ± std) in the 2-process runs: " + "; ".join(
            f"{r['arm']} {fmt(100 * r['group_acc']['mean'], 100 * r['group_acc']['std'] if r['group_acc']['std'] is not None else None)}"
            for r in records if r["comparison"] == "gather")]
    for folder, count, elapsed, total in sets:
        lines += ["", f"{folder}: {count} runs; from the first start to the last end {elapsed / 60:.0f} minutes, "
                  f"sum of the runs' wall times {total / 60:.0f} minutes."]
    lines += ["", f"Untrained ResNet-20 on digits (weights of `torch.manual_seed(0)`, as "
              f"`tests/test_train.py::test_training_beats_the_untrained_network`): top-1 {untrained[0]:.1f}, "
              f"top-5 {untrained[1]:.1f}.", "", "## Commands", ""]
    for r in records:
        lines.append(f"- {r['title']}, {r['arm']} (seed 0; other seeds change `--seed`): `{r['command']}`")
    if missing:
        lines += ["", "## Not run", "", "Not finished when this file was written: " + ", ".join(missing) + "."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
