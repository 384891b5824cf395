"""Reproduce one of the paper's tables: train every row x seed not yet finished, evaluate, and write the table
with the paper's numbers and claims beside ours.

    python reproduce.py --list                                   # the tables and their budgets
    python reproduce.py table2 --budget cpu --jobs 2             # the CPU proxy, 3 seeds, two runs at a time
    python reproduce.py table2 --budget paper --data ~/data --launcher 'torchrun --nproc_per_node=8'
    python reproduce.py table5 --budget paper --data ~/data --slurm table5.sbatch --dry-run

The tables are data (lib/tables.py). Every run goes to RUNS/<row>_s<seed>/ (RUNS: --runs, default runs/TABLE)
and is trained with --resume auto, so a finished run is never trained again and an interrupted one continues
from its last.pth; an evaluation whose result file (RUNS/<row>_s<seed>/<evaluation>.json) exists is not run
again. Then RUNS/TABLE.md, RUNS/TABLE.json and RUNS/TABLE.png: ours as mean +- sample std with the per-seed
values, the paper's numbers beside them, and each claim judged on the same-seed differences (lib/claims.py).
--dry-run prints the commands and runs nothing; --slurm FILE writes an sbatch job array (one task per row x
seed, requeued on preemption or at its time limit) whose tasks write the table when the last one ends.
"""
import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import textwrap
import time

from lib import cli, jsonl
from lib.claims import judge, mean_std
from lib.tables import BUDGETS, TABLES, budgets

ROOT = os.path.dirname(os.path.abspath(__file__))
FMNIST = "/usr/share/datasets/fashion-mnist"
# The evaluation steps a Run names: (script, result file name); the result file is RUN/<name>.json, or
# RUN/<name><label fraction in %>.json for `semi`. `monitor` reads the training run's last kNN line instead.
EVALS = {"knn": "eval_knn.py", "linear": "eval_linear.py", "semi": "eval_linear.py", "features": "eval_features.py",
         "clusters": "eval_clusters.py", "detectron2": "convert_detectron2.py"}
# Flags every evaluation gets at each budget (on the CPU proxies no loader processes, as their training).
EVAL_FLAGS = {"paper": (), "cpu": ("--workers", "0"), "smoke": ("--workers", "0")}


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", nargs="?", help="a table's name (--list shows them)")
    p.add_argument("--list", action="store_true", help="list the tables, their budgets and rows, and exit")
    p.add_argument("--budget", choices=BUDGETS, default=None,
                   help="paper: the paper's datasets and schedules (GPUs); cpu: the proxy for a 2-core CPU; smoke: "
                        "minutes. Default: paper on a machine with a GPU, cpu without")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default=None, help="the runs folder (default runs/TABLE)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (each with cores / jobs threads)")
    p.add_argument("--launcher", default=None,
                   help="what runs each train and evaluation script, e.g. 'torchrun --nproc_per_node=8' "
                        "(split into arguments, never given to a shell); default: this Python")
    p.add_argument("--data", default="~/data",
                   help="paper budget: the folder holding cifar-10-batches-py/, cifar-100-python/, stl10_binary/, "
                        "imagenet/ (train/, val/), imagenet_lt/ (the ImageNet-LT lists) and kitchen-hc/")
    p.add_argument("--fmnist", default=FMNIST, help="cpu budget: the folder of Fashion-MNIST's four .gz files")
    p.add_argument("--dry-run", action="store_true", help="print every command, run nothing")
    p.add_argument("--slurm", default=None, metavar="FILE", help="write an sbatch job-array script to FILE and exit")
    p.add_argument("--summary-only", action="store_true",
                   help="train and evaluate nothing: write the table when every run has finished")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the SLURM script's header
    if args.list:
        return args
    if not args.table:
        p.error("name a table (reproduce.py --list shows them)")
    if args.table not in TABLES:
        p.error(f"unknown table {args.table!r}; choose one of {', '.join(TABLES)}")
    table = TABLES[args.table]
    offered = budgets(table)
    if args.budget is None:
        args.budget = "paper" if has_gpu() else "cpu"
        if args.budget not in offered:
            p.error(f"{args.table} offers only the {'/'.join(offered)} budget; pass --budget {offered[0]}")
    if args.budget not in offered:
        p.error(f"{args.table} has no {args.budget} budget (it offers {', '.join(offered)})")
    cli.check_ranges(p, args, {"seeds": cli.SEED, "jobs": cli.POSITIVE})
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {' '.join(map(str, args.seeds))}")
    args.runs = args.runs or os.path.join("runs", table.runs_of or table.name)
    cli.output_folder(p, "--runs", args.runs)
    if args.slurm:
        cli.output_file(p, "--slurm", args.slurm)
    if args.launcher is not None and not shlex.split(args.launcher):
        p.error("--launcher is empty; pass e.g. 'torchrun --nproc_per_node=8', or leave it out")
    args.data = os.path.expanduser(args.data)
    return args


def has_gpu():
    import torch  # only here: --list and bad input answer without loading torch
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------- the plan

class Job:
    """One row x seed: the training command and its evaluations, as argument lists."""

    def __init__(self, args, row, seed):
        self.row, self.seed = row, seed
        self.run = row.runs[args.budget]
        self.folder = os.path.join(args.runs, f"{row.key}_s{seed}")
        self.train = script(args, "train_cld.py", fill(args, self.run.train) + (
            "--seed", str(seed), "--resume", "auto", "--out", self.folder))
        self.evals = [(name, result_file(self.folder, name, extra), evaluation(args, name, extra, self.folder, seed))
                      for name, extra in self.run.evals if name != "monitor"]

    def finished(self):
        """Whether the training ran all its epochs: metrics.jsonl's last epoch is config.json's epochs."""
        try:
            with open(os.path.join(self.folder, "config.json")) as f:
                epochs = json.load(f)["epochs"]
            with open(os.path.join(self.folder, "metrics.jsonl")) as f:
                lines = [line for line in f if line.strip()]
            return bool(lines) and json.loads(lines[-1])["epoch"] >= epochs and \
                os.path.isfile(os.path.join(self.folder, "last.pth"))
        except (OSError, ValueError, KeyError):
            return False

    def done(self):
        return self.finished() and all(os.path.isfile(path) for _, path, _ in self.evals)


def fill(args, argv):
    """The placeholders {data}, {runs}, {fmnist} of a table's command filled in."""
    return tuple(a.format(data=args.data, runs=args.runs, fmnist=args.fmnist) for a in argv)


def script(args, name, argv):
    """A project script's command line: under --launcher, or this Python."""
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    return [*launcher, name, *argv]


def result_file(folder, name, extra):
    if name == "semi":
        fraction = float(extra[list(extra).index("--label-fraction") + 1])
        return os.path.join(folder, f"semi{round(fraction * 100)}.json")
    if name == "detectron2":
        return os.path.join(folder, "backbone_d2.pkl")
    return os.path.join(folder, f"{name}.json")


def evaluation(args, name, extra, folder, seed):
    ckpt = os.path.join(folder, "last.pth")
    out = result_file(folder, name, extra)
    if name == "detectron2":  # prints the detectron2 commands that fine-tune it on VOC (docs/detection.md)
        return [sys.executable, "convert_detectron2.py", ckpt, out]
    flags = EVAL_FLAGS[args.budget] + (("--seed", str(seed)) if name == "semi" else ())
    return script(args, EVALS[name], ("--ckpt", ckpt, *fill(args, extra), *flags, "--result", out))


def plan(args, table):
    jobs = [Job(args, row, seed) for seed in args.seeds for row in table.rows if args.budget in row.runs]
    prepare = [(os.path.join(args.runs, name), [sys.executable, *fill(args, command)])
               for name, command in table.prepare.get(args.budget, ())]
    return prepare, jobs


def ranking_file(args, seed):
    return os.path.join(args.runs, f"ranking_s{seed}.jsonl")


def after_commands(args, table, jobs):
    """The table-level evaluation of each seed (Fig. 7's ranking: eval_features.py over the seed's runs)."""
    if table.after.get(args.budget) != "ranking":
        return []
    out = []
    for seed in args.seeds:
        mine = [job for job in jobs if job.seed == seed]
        out.append((seed, ranking_file(args, seed), script(args, "eval_features.py", (
            "--ckpt", *(os.path.join(j.folder, "last.pth") for j in mine), "--names", *(j.row.key for j in mine),
            "--features", "f_I", *EVAL_FLAGS[args.budget], "--result", ranking_file(args, seed)))))
    return out


# ---------------------------------------------------------------------------------------------- running

def child_env(args):
    """Each run's environment: a share of the cores (unless OMP_NUM_THREADS is set already) and no progress bars
    in the logs."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.jobs)))
    return env


def run_job(args, job, log):
    """Train (or continue) and evaluate one row x seed, its output appended to log; the failing step's name, or None."""
    steps = [] if job.finished() else [("training", job.train)]
    steps += [(name, command) for name, path, command in job.evals if not os.path.isfile(path)]
    with open(log, "a") as f:
        for name, command in steps:
            f.write(f"$ {shlex.join(command)}\n")
            f.flush()
            if subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=child_env(args)).returncode:
                return name
    return None


def execute(args, table, prepare, jobs):
    """Prepare the subset files, then the jobs, --jobs at a time, one progress line each; returns the failures."""
    for path, command in prepare:
        if not os.path.exists(path):
            print(f"preparing {os.path.relpath(path)}: {shlex.join(command[1:])}", flush=True)
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=child_env(args))
            if done.returncode:
                raise SystemExit(f"error: preparing {path} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    todo = [job for job in jobs if not job.done()]
    print(f"{table.name} ({args.budget}): {len(jobs)} runs, {len(jobs) - len(todo)} finished already, "
          f"{len(todo)} to run, {args.jobs} at a time", flush=True)
    failures, running, waiting, count = [], {}, list(todo), 0
    from concurrent.futures import ThreadPoolExecutor, as_completed
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job in waiting:
            running[pool.submit(timed_job, args, job)] = job
        for future in as_completed(running):
            job, (failed, seconds) = running[future], future.result()
            count += 1
            if failed:
                failures.append(job)
                print(f"[{count}/{len(todo)}] {job.row.key} seed {job.seed}: {failed} FAILED after {seconds:.0f} s, "
                      f"see {job.folder}.log", flush=True)
            else:
                print(f"[{count}/{len(todo)}] {job.row.key} seed {job.seed}: {seconds:.0f} s, "
                      f"{describe(read_metrics(job))}", flush=True)
    return failures


def timed_job(args, job):
    started = time.time()
    failed = run_job(args, job, job.folder + ".log")
    seconds = time.time() - started
    spent = os.path.join(job.folder, "seconds.json")  # wall time over every invocation that worked on it
    try:
        with open(spent) as f:
            total = json.load(f)["seconds"]
    except (OSError, ValueError, KeyError):
        total = 0.0
    if os.path.isdir(job.folder):
        jsonl.write_atomic(spent, jsonl.dumps({"seconds": total + seconds}) + "\n")
    return failed, seconds


def run_after(args, commands):
    for seed, path, command in commands:
        if not os.path.isfile(path):
            print(f"ranking the runs of seed {seed}", flush=True)
            with open(path.replace(".jsonl", ".log"), "a") as f:
                subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=child_env(args))


def describe(metrics):
    shown = [f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, (int, float))][:4]
    return ", ".join(shown) or "no metrics"


# ---------------------------------------------------------------------------------------------- reading results

def read_json_lines(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def read_metrics(job):
    """metric -> number for one finished row x seed, from its training log and its evaluations' files."""
    out = {}
    lines = read_json_lines(os.path.join(job.folder, "metrics.jsonl"))
    if lines and lines[-1].get("knn_top1") is not None:
        out.update(top1=lines[-1]["knn_top1"], top5=lines[-1]["knn_top5"])
    for name, path, _ in job.evals:
        records = read_json_lines(path) if path.endswith(".json") else []
        if not records:
            continue
        r = records[0]
        if name == "knn":
            out.update({k: r[k] for k in ("top1", "top5", "many", "medium", "few") if r.get(k) is not None})
        elif name == "linear":
            out.update({f"linear_{k}": r[k] for k in ("top1", "top5", "many", "medium", "few") if r.get(k) is not None})
        elif name == "semi":
            out[os.path.basename(path)[:-5]] = r["top1"]
        elif name == "features":
            for feature, values in r["features"].items():
                out.update({f"{feature}.{'knn' if k == 'knn_top1' else 'retrieval' if k == 'retrieval_top1' else k}": v
                            for k, v in values.items()})
        elif name == "clusters":
            out.update({k: r["kmeans"][k] for k in ("nmi", "acc", "ari")})
            if "head" in r:
                out.update({f"head_{k}": r["head"][k] for k in ("nmi", "acc", "ari")})
    detection = read_json_lines(os.path.join(job.folder, "detection.json"))
    if detection:
        out.update({f"{split}.{k}": v for split, values in detection[0].items() for k, v in values.items()})
    return out


def collect(args, table, jobs):
    """(row key, metric) -> {seed: value}, the table-level numbers under row key ""."""
    values = {}
    for job in jobs:
        if job.finished():
            for metric, value in read_metrics(job).items():
                values.setdefault((job.row.key, metric), {})[job.seed] = value
    if table.after.get(args.budget) == "ranking":
        for seed in args.seeds:
            for record in read_json_lines(ranking_file(args, seed)):
                if "ranking" in record:
                    for name, rho in record["spearman"].items():
                        if rho is not None:
                            values.setdefault(("", f"spearman.{name}"), {})[seed] = rho
                else:
                    for key in ("nmi", "r", "score"):
                        values.setdefault((record["run"], f"selection.{key}"), {})[seed] = record["selection"]["f_I"][key]
    return values


# ---------------------------------------------------------------------------------------------- the summary

def machine():
    gpu = None
    try:
        import torch
        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{gpu + ', ' if gpu else ''}{cpu}, {os.cpu_count()} cores"


def summarise(args, table, jobs, wall):
    values = collect(args, table, jobs)
    rows = []
    for row in table.rows:
        if args.budget not in row.runs:
            continue
        ours = {}
        for (key, metric), by_seed in values.items():
            if key == row.key:
                mean, std = mean_std([by_seed[s] for s in sorted(by_seed)])
                ours[metric] = {"mean": mean, "std": std, "values": {str(s): by_seed[s] for s in sorted(by_seed)}}
        rows.append({"key": row.key, "label": row.label, "proxy": row.proxy if args.budget == "cpu" else "",
                     "paper": row.paper, "ours": ours, "command": shown(Job(args, row, args.seeds[0]).train)})
    claims = []
    for claim in table.claims:
        verdict = judge(claim, values)
        claims.append(verdict or {"claim": claim.text, "kind": claim.kind, "verdict": "not run at this budget"})
    finished = sum(job.finished() for job in jobs)
    spent = sum(json.load(open(os.path.join(j.folder, "seconds.json")))["seconds"] for j in jobs
                if os.path.isfile(os.path.join(j.folder, "seconds.json")))
    summary = {"table": table.name, "title": table.title, "source": table.source, "budget": args.budget,
               "seeds": args.seeds, "runs": finished, "runs_planned": len(jobs), "machine": machine(),
               "run_seconds": spent, "wall_seconds": wall, "note": table.note, "rows": rows, "claims": claims,
               "table_level": {metric: by_seed for (key, metric), by_seed in values.items() if key == ""}}
    base = os.path.join(args.runs, table.name)
    jsonl.write_atomic(base + ".json", jsonl.dumps(summary, indent=1) + "\n")
    jsonl.write_atomic(base + ".md", markdown(table, summary))
    plot(table, summary, base + ".png")
    return summary


def shown(command):
    """A command as a user types it: `python` for this interpreter."""
    return shlex.join(["python" if arg == sys.executable else arg for arg in command])


def num(value, scale):
    """One decimal for percentages, three significant digits for fractions (a selection score of 0.0012)."""
    return f"{value:.1f}" if scale >= 1 else f"{value:.3g}"


def fmt(stat):
    if not stat:
        return "–"
    scale = max(abs(v) for v in stat["values"].values())
    values = ", ".join(num(v, scale) for v in stat["values"].values())
    spread = f" ± {num(stat['std'], scale)}" if stat["std"] is not None else ""
    return f"{num(stat['mean'], scale)}{spread} ({values})"


def shown_metrics(table, summary):
    present = {m for row in summary["rows"] for m in (*row["ours"], *row["paper"])}
    return [m for m in table.metrics if m in present]


def markdown(table, summary):
    metrics = shown_metrics(table, summary)
    lines = [f"# {table.name}: {table.title}", "",
             f"Budget **{summary['budget']}**, seeds {', '.join(map(str, summary['seeds']))}; "
             f"{summary['runs']} of {summary['runs_planned']} runs finished. Paper's numbers: {table.source}. "
             f"Machine: {summary['machine']}. Run time {summary['run_seconds'] / 60:.0f} min summed over runs; "
             f"this invocation's wall time {summary['wall_seconds'] / 60:.0f} min.", ""]
    if table.note:
        lines += [table.note, ""]
    lines += ["Ours: mean ± sample std over the seeds (per-seed values). Paper: its number for the row, on the "
              "paper's dataset" + ("." if summary["budget"] == "paper" else
                                   f"; ours at the {summary['budget']} budget are on the stand-in below, so compare "
                                   "rows with each other, not with the paper's number."), ""]
    lines += ["| row | " + " | ".join(f"{m} ours | {m} paper" for m in metrics) + " |",
              "|---|" + "---|---|" * len(metrics)]
    for row in summary["rows"]:
        cells = [f"{fmt(row['ours'].get(m))} | {row['paper'].get(m, '–')}" for m in metrics]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    proxies = sorted({row["proxy"] for row in summary["rows"] if row["proxy"]})
    if proxies:
        lines += ["", "Stand-ins: " + "; ".join(proxies) + "."]
    elif summary["budget"] == "smoke":
        lines += ["", "Stand-in: digits, one epoch (a test of the commands, not of the method)."]
    lines += ["", "## Claims", "",
              "Judged on the same-seed differences: held / not held when their mean is clear of 0 by a one-sided "
              "t-test at 5% (lib/claims.py), else cannot tell; k of n: the seeds in which the claim holds.", "",
              "| claim | verdict | seeds | same-seed values | mean ± std |", "|---|---|---|---|---|"]
    for c in summary["claims"]:
        if "seeds" not in c:
            lines.append(f"| {c['claim']} | {c['verdict']} | | | |")
            continue
        if c["kind"] == "best":
            detail = ", ".join(c["winners"])
            spread = f"expected: {', '.join(c['expected'])}"
        else:
            detail = ", ".join(f"{v:+.2f}" for v in c["values"])
            spread = f"{c['mean']:+.2f}" + (f" ± {c['std']:.2f}" if c["std"] is not None else "")
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {c['held_in']} of {c['seeds']} | {detail} | {spread} |")
    lines += ["", "Commands (seed 0; the others differ in --seed and --out):", ""]
    lines += [f"- {row['label']}: `{row['command']}`" for row in summary["rows"]]
    return "\n".join(lines) + "\n"


def plot(table, summary, path):
    """One panel per metric: ours (mean ± std bar, per-seed dots) and the paper's number (a cross) per row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metrics = [m for m in shown_metrics(table, summary) if any(m in r["ours"] for r in summary["rows"])][:4]
    rows = summary["rows"]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(4.5 * max(1, len(metrics)), 0.35 * len(rows) + 1.5),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        for y, row in enumerate(rows):
            stat = row["ours"].get(metric)
            if stat:
                ax.errorbar(stat["mean"], y, xerr=stat["std"] or 0, fmt="o", color="tab:blue", capsize=3)
                ax.scatter(list(stat["values"].values()), [y] * len(stat["values"]), s=8, color="tab:blue", alpha=0.4)
            if metric in row["paper"]:
                ax.scatter([row["paper"][metric]], [y], marker="x", color="tab:red")
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=7)
    axes[0][0].invert_yaxis()
    where = "" if summary["budget"] == "paper" else ", ours on the row's stand-in dataset"
    title = (f"{table.name} ({summary['budget']}): ours (blue: mean ± std, dots: seeds) and the paper (red x)"
             f"{where}")
    fig.suptitle(textwrap.fill(title, width=int(14 * fig.get_figwidth())), fontsize=9)  # ~14 characters an inch
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- SLURM

def slurm_script(args, table, prepare, jobs, after):
    """An sbatch job array: task i trains and evaluates jobs[i]; each task ends by writing the table if every
    run has finished. USR1 comes 3 minutes before the time limit: the task stops its run (it saves at the next
    step) and requeues itself; a preempted task is requeued by SLURM (--requeue) and continues with --resume auto."""
    q = shlex.join
    summary = [sys.executable, "reproduce.py", table.name, "--budget", args.budget, "--runs", args.runs,
               "--seeds", *map(str, args.seeds), "--data", args.data, "--fmnist", args.fmnist, "--summary-only"]
    lines = ["#!/usr/bin/env bash",
             f"#SBATCH --job-name=cld-{table.name}",
             f"#SBATCH --array=0-{len(jobs) - 1}",
             "#SBATCH --requeue",
             "#SBATCH --signal=B:USR1@180",
             f"#SBATCH --output={args.runs}/slurm-%A_%a.out",
             "# Add your cluster's resources here (e.g. #SBATCH --gres=gpu:8 --cpus-per-task=64 --time=24:00:00).",
             f"# Written by: {q(['python', 'reproduce.py', *args.argv])}",
             "set -uo pipefail",
             f"cd {shlex.quote(ROOT)}",
             f"mkdir -p {shlex.quote(args.runs)}",
             "child=",
             "requeue() {",
             '  echo "time limit near: the run saves at its next step, then this task is requeued"',
             '  [ -n "$child" ] && kill -TERM "$child" && wait "$child"',
             '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
             "  exit 0",
             "}",
             "trap requeue USR1",
             '# step COMMAND...: run it in the background (so the trap can act), fail the task if it fails.',
             'step() { "$@" & child=$!; wait "$child"; local rc=$?; child=; [ "$rc" = 0 ] || exit "$rc"; }']
    for path, command in prepare:  # shared by every task: made once, under a lock
        lines.append(f"flock {shlex.quote(args.runs)}/.prepare.lock bash -c "
                     f"{shlex.quote(f'[ -e {shlex.quote(path)} ] || {q(command)}')} || exit 1")
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, job in enumerate(jobs):
        lines.append(f"  {i})  # {job.row.label}, seed {job.seed}")
        lines.append(f"    step {q(job.train)}")
        for _, path, command in job.evals:
            lines.append(f"    [ -e {shlex.quote(path)} ] || step {q(command)}")
        lines.append("    ;;")
    lines.append("esac")
    for seed, path, command in after:
        done = " && ".join(f"[ -e {shlex.quote(os.path.join(j.folder, 'last.pth'))} ]" for j in jobs if j.seed == seed)
        lines.append(f"[ -e {shlex.quote(path)} ] || {{ {done} && {q(command)}; }} || true")
    lines.append(q(summary))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def list_tables():
    for table in TABLES.values():
        n = {b: sum(b in row.runs for row in table.rows) for b in budgets(table)}
        print(f"{table.name:<15} {', '.join(f'{b} ({k} rows)' for b, k in n.items()):<45} {table.title}")


def main(args):
    if args.list:
        return list_tables()
    started = time.time()
    table = TABLES[args.table]
    prepare, jobs = plan(args, table)
    after = after_commands(args, table, jobs)
    if args.dry_run:
        for path, command in prepare:
            print(f"{shown(command)}    # unless {path} exists")
        for job in jobs:
            print(shown(job.train))
            for _, path, command in job.evals:
                print(shown(command))
        for _, _, command in after:
            print(shown(command))
        return
    if args.slurm:
        jsonl.write_atomic(args.slurm, slurm_script(args, table, prepare, jobs, after))
        print(f"wrote {args.slurm}: {len(jobs)} array tasks; submit it with: sbatch {args.slurm}")
        return
    os.makedirs(args.runs, exist_ok=True)
    failures = []
    if not args.summary_only:
        failures = execute(args, table, prepare, jobs)
        run_after(args, after)
    elif not all(job.done() for job in jobs):
        print(f"{table.name}: {sum(job.done() for job in jobs)} of {len(jobs)} runs finished; the table waits for "
              "the rest")
        return
    summary = summarise(args, table, jobs, time.time() - started)
    base = os.path.join(args.runs, table.name)
    print(f"wrote {base}.md, {base}.json, {base}.png ({summary['runs']} of {len(jobs)} runs)")
    for claim in summary["claims"]:
        print(f"  {claim['verdict']:<22} {claim['claim']}")
    if failures:
        raise SystemExit(f"error: {len(failures)} run(s) failed: "
                         + ", ".join(f"{j.folder}.log" for j in failures[:5]))


if __name__ == "__main__":
    cli.run_main(main, parse_args())
