"""Two CPU processes with the gloo backend, launched by torchrun exactly as a user would."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from lib.cluster import grouping
from lib.losses import cld_terms
from lib.memory import MemoryBank
from lib.models import CLDNet
from tests.common import states_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(*args, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


def test_two_process_npid_cld_keeps_identical_banks(tmp_path):
    out = tmp_path / "run"
    r = torchrun("tests/dist_worker.py", "--dataset", "digits", "--arch", "resnet20", "--epochs", "2",
                 "--batch-size", "128", "--clusters", "16", "--workers", "0", "--knn-every", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"])
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    # Both ranks' rows were written on both ranks: in two epochs almost every row left its random start.
    torch.manual_seed(0)  # the bank is drawn right after the model, as train_cld.py does
    CLDNet("resnet20", 1, 128)
    start = MemoryBank(len(rank0["bank"]), 128).bank
    moved = (rank0["bank"] - start).abs().sum(dim=1) > 0
    assert moved.float().mean() > 0.95
    ckpt = torch.load(out / "last.pth", weights_only=False)
    assert torch.equal(ckpt["memory"]["bank"], rank0["bank"])
    assert len(ckpt["rng"]) == 2


def test_eval_knn_under_torchrun_matches_single_process(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train_cld.py", "--dataset", "digits", "--arch", "resnet20", "--epochs", "1",
                        "--batch-size", "128", "--clusters", "16", "--workers", "0", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    single = subprocess.run([sys.executable, "eval_knn.py", "--ckpt", str(out / "last.pth"), "--workers", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    double = torchrun("eval_knn.py", "--ckpt", str(out / "last.pth"), "--workers", "0")
    assert single.returncode == 0 and double.returncode == 0, double.stderr[-3000:]
    a, b = json.loads(single.stdout.strip().splitlines()[-1]), json.loads(double.stdout.strip().splitlines()[-1])
    assert abs(a["top1"] - b["top1"]) < 0.3 and abs(a["top5"] - b["top5"]) < 0.3


def test_shuffle_inverse_and_gathered_clustering_equal_one_process(tmp_path):
    r = torchrun("tests/dist_checks.py", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"checks{i}.pt", weights_only=False) for i in (0, 1)]
    for rank in ranks:
        assert torch.equal(rank["restored"], rank["mine"])           # unshuffle undoes shuffle exactly
    assert torch.equal(ranks[0]["order"], ranks[1]["order"])         # one permutation, shared
    together = torch.cat([r["shuffled"] for r in ranks])
    assert not torch.equal(together, torch.cat([r["mine"] for r in ranks]))  # the images really moved
    assert torch.equal(together.sort(dim=0).values, torch.cat([r["mine"] for r in ranks]).sort(dim=0).values)

    # clustering the gathered batch == clustering the concatenated batch in one process
    g1, g2 = ranks[0]["g1"].clone().requires_grad_(), ranks[0]["g2"].clone().requires_grad_()
    loss, accuracy = cld_terms(g1, g2, grouping(5), 0.2)
    loss.backward()
    for i, rank in enumerate(ranks):
        assert torch.allclose(rank["loss"], loss, atol=1e-6) and torch.allclose(rank["accuracy"], accuracy)
        assert torch.allclose(rank["grad1"], g1.grad[i * 8:(i + 1) * 8], atol=1e-6)
        assert torch.allclose(rank["grad2"], g2.grad[i * 8:(i + 1) * 8], atol=1e-6)


def test_two_process_moco_cld_with_gathered_groups(tmp_path):
    out = tmp_path / "run"
    r = torchrun("tests/dist_worker.py", "--dataset", "digits", "--arch", "resnet20", "--moco", "--queue", "512",
                 "--epochs", "1", "--batch-size", "64", "--clusters", "16", "--gather-groups", "--workers", "0",
                 "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"])                  # the queues
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    record = json.loads((out / "metrics.jsonl").read_text())
    assert 0 < record["group_acc"] <= 1 and 0 <= record["knn_top1"] <= 100


@pytest.mark.parametrize("data_path,sync_every,stopped_at", [("loader", 1, 5), ("device", 3, 6)])
def test_two_process_resume_is_bit_exact_and_restores_each_process_its_own_sums(data_path, sync_every, stopped_at,
                                                                                 tmp_path):
    """Process 0 catches SIGTERM during step 5 of 11; the next step carries it, and the processes read it at
    the next --sync-every step, save and stop. Resumed, the run ends in exactly the uninterrupted run's
    state, and the epoch's logged means equal its, which needs each process's partial sums back, not
    process 0's on both."""
    tiny = ["--dataset", "digits", "--arch", "resnet20", "--epochs", "1", "--batch-size", "128", "--clusters", "10",
            "--workers", "0", "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0", "--data-path", data_path,
            "--sync-every", str(sync_every)]
    r = torchrun("tests/dist_worker.py", *tiny, "--out", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr[-3000:]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STOP_AFTER": "4"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "tests/dist_stop_worker.py", *tiny, "--out", str(stopped)],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode != 0 and f"stopped by signal in epoch 1/1 after step {stopped_at} of 11" in r.stderr, \
        r.stderr[-3000:]
    saved = torch.load(stopped / "last.pth", weights_only=True)
    assert saved["step"] == stopped_at and saved["sums"].shape == (2, 4)
    assert not torch.equal(saved["sums"][0], saved["sums"][1])  # each process saw other images
    r = torchrun("train_cld.py", *tiny, "--resume", str(stopped / "last.pth"), "--out", str(stopped))
    assert r.returncode == 0, r.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text())
    resumed = json.loads((stopped / "metrics.jsonl").read_text())
    for key in ("loss", "loss_ins", "loss_cld", "group_acc"):
        assert resumed[key] == whole[key], key
    a, b = (torch.load(run / "last.pth", weights_only=True) for run in (tmp_path / "whole", stopped))
    for key in ("model", "memory", "optimizer"):
        assert states_equal(a[key], b[key]), key


def test_a_stalled_process_stops_the_other_after_dist_timeout(tmp_path):
    """SIGSTOP on process 1 (a stalled node): process 0 stops after --dist-timeout seconds with one line
    instead of blocking for torch's default half hour."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train_cld.py",
           "--dataset", "digits", "--arch", "resnet20", "--epochs", "30", "--batch-size", "64", "--clusters", "10",
           "--workers", "0", "--knn-every", "0", "--dist-timeout", "5", "--out", str(out)]  # still training at 2 s
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # training
    workers = {}
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        rank = next(int(item[5:]) for item in environ if item.startswith(b"RANK="))
        workers[rank] = int(pid)
    os.kill(workers[1], signal.SIGSTOP)
    stopped = time.time()
    try:
        while os.path.exists(f"/proc/{workers[0]}") and time.time() < stopped + 120:
            if open(f"/proc/{workers[0]}/stat").read().split()[2] == "Z":
                break
            time.sleep(0.2)
        waited = time.time() - stopped
    finally:
        os.kill(workers[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert waited < 60, err[-3000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert lines and lines[0].startswith("error: process 0 waited more than --dist-timeout 5 s for process 1 (no "
                                         "heartbeat"), err[-3000:]
    assert "Traceback" not in err.split(lines[0])[0], err[-3000:]


def worker_pids(launcher_pid):
    """rank -> pid of the training processes torchrun started."""
    workers = {}
    for pid in subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split():
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        ranks = [int(item[5:]) for item in environ if item.startswith(b"RANK=")]
        if ranks:
            workers[ranks[0]] = int(pid)
    return workers


def test_torchrun_restarts_a_killed_worker_and_the_run_ends_where_the_uninterrupted_one_ends(tmp_path):
    """--resume auto under torchrun --max-restarts 1: process 1 is SIGKILLed in the middle of epoch 2; the other
    stops with one line naming it, torchrun restarts both, they continue from last.pth (epoch 1) and end in
    exactly the state of a run never interrupted (and log each epoch once)."""
    tiny = ["train_cld.py", "--dataset", "digits", "--arch", "resnet20", "--epochs", "3", "--batch-size", "128",
            "--clusters", "10", "--workers", "0", "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0",
            "--resume", "auto"]
    r = torchrun(*tiny, "--out", str(tmp_path / "whole"))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--max-restarts", "1", *tiny, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # epoch 1 written
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    first = worker_pids(proc.pid)
    os.kill(first[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert said and said[0].startswith("error: process 0 lost its connection to process 1"), err[-3000:]
    whole = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in again] == [1, 2, 3]
    assert [r["loss"] for r in again] == [r["loss"] for r in whole]
    a, b = (torch.load(run / "last.pth", weights_only=True) for run in (tmp_path / "whole", out))
    for key in ("model", "memory", "optimizer"):
        assert states_equal(a[key], b[key]), key
