"""reproduce.py and the tables it runs: the registry, the paper's commands against their settings, the smoke
budget end to end, the verdicts on hand-made numbers, the SLURM script and bad input."""
import contextlib
import io
import json
import os
import subprocess
import time

import pytest

import reproduce
import train_cld
from lib.claims import judge
from lib.tables import TABLES, Claim, budgets
from tests.common import as_main

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_reproduce")

ISSUE_TABLES = ("table1", "table2", "table3", "table4", "table5", "table6", "table7", "table8", "kitchen-hc",
                "ablation", "fig7", "authors-readme", "byol-c2bin")


def test_every_table_of_the_paper_is_an_entry():
    assert set(ISSUE_TABLES) <= set(TABLES)
    for name in ISSUE_TABLES:
        assert "paper" in budgets(TABLES[name]), name
        assert TABLES[name].claims and all(c.kind in ("above", "best", "within", "positive")
                                           for c in TABLES[name].claims), name
    assert budgets(TABLES["table7"]) == ("paper",)                       # no CPU proxy for detection
    assert not any("cpu" in row.runs for row in TABLES["table5"].rows if row.key.startswith("imagenet_"))
    assert all("cpu" in budgets(TABLES[n]) for n in ISSUE_TABLES if n != "table7")
    for table in TABLES.values():  # every claim names rows the table has ("" is the table-level number)
        keys = {row.key for row in table.rows} | {""}
        for claim in table.claims:
            named = [side[0] for side in (claim.left, claim.right) if side] + list(claim.rows) + list(claim.expected)
            assert set(named) <= keys, (table.name, claim.text)


def paper_jobs(tmp_path, name):
    args = reproduce.parse_args([name, "--budget", "paper", "--runs", str(tmp_path), "--data", str(tmp_path / "data")])
    return reproduce.plan(args, TABLES[name])[1]


def resolved(tmp_path, job):
    """The settings train_cld.py resolves from a job's command (subset files stood in by empty files)."""
    argv = job.train[job.train.index("train_cld.py") + 1:]
    for i, arg in enumerate(argv):
        if argv[i - 1] == "--subset":
            open(arg, "w").close()
    return train_cld.resolved_config(train_cld.parse_args(argv), 1)


# (table, row): the paper's settings the command must resolve to (the authors' scripts, supplementary §2).
PAPER_SETTINGS = {
    ("table2", "cifar10_cld"): dict(dataset="cifar10", arch="resnet18_cifar", epochs=200, batch_size=256, lr=0.03,
                                    wd=7e-4, clusters=128, lam=1.0, ins_t=0.1, cld_t=0.2, instance_head="linear",
                                    group_head="linear", aug="default", partner="npid", kmeans_iters=5),
    ("table2", "cifar10_npid"): dict(lam=0.0, partner="npid", epochs=200),
    ("table2", "cifar10_cldm"): dict(partner="moco", wd=8e-4, clusters=200, lam=0.8, ins_t=0.07, queue=12288,
                                     instance_head="normlinear", aug="aug-plus", erasing=True),
    ("table2", "cifar100_cld"): dict(dataset="cifar100", clusters=200, lam=1.0, wd=7e-4),
    ("table2", "stl10_cld"): dict(dataset="stl10", image_size=96, batch_size=256, lr=0.03, epochs=200),
    ("table4", "cifar100_k60"): dict(partner="moco", batch_size=128, clusters=60, lam=0.25, queue=4096, wd=7e-4),
    ("kitchen-hc", "cld"): dict(dataset="kitchen-hc", epochs=80, clusters=10, image_size=32),
    ("kitchen-hc", "spectral_k128"): dict(cluster_method="spectral", clusters=128, epochs=80),
    ("table5", "imagenet100_cld"): dict(dataset="imagenet100", arch="resnet50", batch_size=512, lr=0.2, wd=1e-4,
                                        gather_groups=True, clusters=120, lam=0.25),
    ("table5", "imagenet_cldm_mlp"): dict(partner="moco", batch_size=512, lr=0.05, wd=1e-4, clusters=120, lam=0.25,
                                          ins_t=0.2, cld_t=0.4, queue=65536, mlp=True, instance_head="linear",
                                          aug="aug-plus", epochs=200, warmup_epochs=0),
    ("table5", "imagenet_cldm"): dict(partner="moco", mlp=False, aug="default", ins_t=0.07, queue=65536),
    ("table8", "cld_lam0.1"): dict(dataset="imagenet100", lam=0.1),
    ("table8", "cldm_t0.3"): dict(ins_t=0.3, cld_t=0.3, partner="moco"),
    ("ablation", "cifar10_shared"): dict(group_head="shared", cross_view=False, lam=1.0),
    ("ablation", "cifar100_separate"): dict(group_head="linear", cross_view=False, clusters=200),
    ("authors-readme", "infomin_cld"): dict(partner="infomin", epochs=100, ins_t=0.15, cld_t=0.8, lam=0.25,
                                            aug="infomin", batch_size=512, warmup_epochs=5),
    ("byol-c2bin", "cifar10_byol"): dict(partner="byol", lam=0.0, optimizer="lars", epochs=1000, byol_tau=0.99),
    ("table1", "cifar10lt_cld"): dict(dataset="cifar10", clusters=128, lam=1.0),
    ("table6", "cldm"): dict(dataset="imagenet", partner="moco", batch_size=512, clusters=120),
}


@pytest.mark.parametrize("name", ISSUE_TABLES)
def test_every_paper_command_parses_and_resolves_the_papers_settings(name, tmp_path):
    import eval_clusters
    import eval_features
    import eval_knn
    import eval_linear
    parsers = {"eval_knn.py": eval_knn.parse_args, "eval_linear.py": eval_linear.parse_args,
               "eval_features.py": eval_features.parse_args, "eval_clusters.py": eval_clusters.parse_args}
    for job in paper_jobs(tmp_path, name):
        config = resolved(tmp_path, job)
        for key, value in PAPER_SETTINGS.get((name, job.row.key), {}).items():
            assert config[key] == value, (job.row.key, key, config[key], value)
        assert config["seed"] == job.seed and config["resume"] is None
        os.makedirs(job.folder, exist_ok=True)
        open(os.path.join(job.folder, "last.pth"), "w").close()
        for _, _, command in job.evals:
            script = next(arg for arg in command if arg.endswith(".py"))
            if script in parsers:
                parsers[script](command[command.index(script) + 1:])


def reproduce_here(*argv):
    """reproduce.py's main in this process (its runs are processes of their own) -> what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        reproduce.main(reproduce.parse_args([str(a) for a in argv]))
    return out.getvalue()


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def smoke_table(tmp_path_factory):
    """The datapath table at the smoke budget, seeds 0 and 1: four digits runs of one epoch, two at a time."""
    runs = tmp_path_factory.mktemp("datapath")
    started = time.time()
    printed = reproduce_here("datapath", "--budget", "smoke", "--seeds", "0", "1", "--runs", runs, "--jobs", "2")
    return runs, printed, time.time() - started


def test_smoke_budget_end_to_end(smoke_table):
    runs, printed, seconds = smoke_table
    assert seconds < 120  # about 25 s on an idle 2-core machine
    summary = json.loads((runs / "datapath.json").read_text())  # strict JSON
    assert summary["runs"] == summary["runs_planned"] == 4 and summary["budget"] == "smoke"
    ours = {row["key"]: row["ours"] for row in summary["rows"]}
    assert set(ours) == {"fmnist_loader", "fmnist_device"}
    assert all(0 < o["top1"]["mean"] <= 100 and list(o["top1"]["values"]) == ["0", "1"] for o in ours.values())
    claims = {c["claim"]: c for c in summary["claims"]}
    fmnist = claims["the device path trains as well as the loader (Fashion-MNIST, kNN within 2 points)"]
    assert fmnist["seeds"] == 2 and fmnist["values"] == [ours["fmnist_device"]["top1"]["values"][s]
                                                         - ours["fmnist_loader"]["top1"]["values"][s] for s in "01"]
    assert claims["the device path trains as well as the loader (digits, kNN within 2 points)"]["verdict"] == \
        "not run at this budget"
    md = (runs / "datapath.md").read_text()
    assert "| Fashion-MNIST 10k, --data-path device |" in md and "## Claims" in md
    assert (runs / "datapath.png").read_bytes()[:4] == b"\x89PNG"
    assert "[4/4]" in printed


def test_a_second_run_trains_nothing_and_a_torn_log_is_mended_from_the_checkpoint(smoke_table):
    runs, _, _ = smoke_table
    checkpoints = {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pth")}
    log = runs / "fmnist_device_s0" / "metrics.jsonl"
    log.write_text("")  # as if the process died between its checkpoint and its log line
    printed = reproduce_here("datapath", "--budget", "smoke", "--seeds", "0", "1", "--runs", runs)
    assert "4 runs, 3 finished already, 1 to run" in printed
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/last.pth")} == checkpoints   # nothing trained again
    assert json.loads(log.read_text().splitlines()[-1])["epoch"] == 1              # --resume auto restored it


def values(**rows):
    """(row, metric) -> {seed: value} from rows given as name=[per-seed values] (metric top1)."""
    return {(row, "top1"): dict(enumerate(v)) for row, v in rows.items()}


@pytest.mark.parametrize("a,b,verdict,held_in", [
    ([70, 72, 71], [60, 61, 62], "held", 3),              # +10, +11, +9: far clear of its spread
    ([60, 61, 62], [70, 72, 71], "not held", 0),
    ([70, 60, 71], [65, 66, 64], "cannot tell", 2),        # +5, -6, +7
    ([70.1, 70.1, 75], [70, 70, 70], "cannot tell", 3),    # every seed, but one carries it: t = 1.0
    ([70], [60], "cannot tell", 1),                        # one seed tells nothing
])
def test_above_verdicts_on_hand_made_numbers(a, b, verdict, held_in):
    result = judge(Claim("a above b", "above", left=("a", "top1"), right=("b", "top1")), values(a=a, b=b))
    assert result["verdict"] == verdict and result["held_in"] == held_in
    assert result["values"] == [x - y for x, y in zip(a, b)]


@pytest.mark.parametrize("a,winners,verdict", [
    ([[9, 9, 9], [5, 5, 5], [1, 1, 1]], ["a", "a", "a"], "held"),
    ([[1, 9, 1], [5, 5, 5], [9, 1, 9]], ["c", "a", "c"], "cannot tell"),
    ([[1, 1, 1], [5, 5, 5], [9, 9, 9]], ["c", "c", "c"], "not held"),
])
def test_best_and_within_verdicts_on_hand_made_numbers(a, winners, verdict):
    claim = Claim("a best", "best", metric="top1", rows=("a", "b", "c"), expected=("a",))
    result = judge(claim, values(a=a[0], b=a[1], c=a[2]))
    assert result["winners"] == winners and result["verdict"] == verdict
    within = Claim("a within 1 of b", "within", left=("a", "top1"), right=("b", "top1"), tolerance=1.0)
    assert judge(within, values(a=[70.1, 70.0, 69.9], b=[70, 70, 70]))["verdict"] == "held"
    assert judge(within, values(a=[75, 76, 77], b=[70, 70, 70]))["verdict"] == "not held"
    assert judge(within, values(a=[70.5, 71.8, 69.5], b=[70, 70, 70]))["verdict"] == "cannot tell"
    assert judge(within, values(a=[70], b=[70])) is not None
    assert judge(claim, values(b=[1, 2, 3])) is None                       # the rows are not at this budget


def test_slurm_script_has_a_task_per_row_and_seed_and_passes_bash_n(tmp_path):
    script = tmp_path / "t5.sbatch"
    printed = reproduce_here("table5", "--budget", "paper", "--runs", tmp_path / "runs", "--data", "/data/x y",
                             "--launcher", "torchrun --nproc_per_node=8", "--slurm", script)
    assert printed.startswith(f"wrote {script}: 27 array tasks")
    text = script.read_text()
    jobs = 3 * sum("paper" in row.runs for row in TABLES["table5"].rows)
    assert f"#SBATCH --array=0-{jobs - 1}" in text and "#SBATCH --requeue" in text and "--signal=B:USR1" in text
    assert [f"  {i})" in text for i in range(jobs)] == [True] * jobs and f"  {jobs})" not in text
    assert text.count("--resume auto") == jobs and "torchrun --nproc_per_node=8 train_cld.py" in text
    assert "'/data/x y/imagenet'" in text                                  # every argument quoted
    assert "--summary-only" in text.splitlines()[-1]
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing started


@pytest.mark.parametrize("argv,expected", [
    (["nope"], "error: unknown table 'nope'"),
    (["table7", "--budget", "cpu"], "error: table7 has no cpu budget (it offers paper)"),
    (["table2", "--budget", "huge"], "error: argument --budget: invalid choice"),
    (["table2", "--seeds", "0", "0"], "error: --seeds repeats a seed"),
    (["table2", "--jobs", "0"], "error: --jobs must be positive"),
    ([], "error: name a table"),
])
def test_bad_input_is_one_line_and_starts_nothing(argv, expected, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        reproduce.parse_args([*argv, "--runs", str(tmp_path / "runs")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert not (tmp_path / "runs").exists()


def test_a_runs_folder_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = as_main(capsys, "reproduce.py", "table2", "--budget", "smoke", "--runs", tmp_path / "file" / "runs")
    assert code == 2 and err.strip() == (f"error: --runs {tmp_path}/file/runs cannot be created: "
                                         f"{tmp_path}/file is a file, not a folder")


def test_list_names_every_table_and_its_budgets(capsys):
    reproduce.main(reproduce.parse_args(["--list"]))
    out = capsys.readouterr().out
    for name in ISSUE_TABLES:
        assert out.count(f"\n{name} ") + out.startswith(f"{name} ") == 1, name
    assert "table7          paper (3 rows)" in out
