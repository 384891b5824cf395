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
from lib.sampler import EpochSampler
from tests.common import digits_subset, states_equal, torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_two_process_moco_cld_with_gathered_groups_under_the_gpu_defaults(tmp_path):
    """bf16 autocast and the host reading the device every 20 steps, as on GPUs (NCCL there, gloo here)."""
    out = tmp_path / "run"
    subset = digits_subset(tmp_path / "digits_520.json", 52)  # 4 steps: bf16 is emulated on CPUs without AMX
    r = torchrun("tests/dist_worker.py", "--dataset", "digits", "--subset", str(subset), "--arch", "resnet20",
                 "--moco", "--queue", "512",
                 "--epochs", "1", "--batch-size", "128", "--clusters", "16", "--gather-groups", "--workers", "0",
                 "--precision", "bf16", "--sync-every", "20", "--knn-every", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"])                  # the queues
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    record = json.loads((out / "metrics.jsonl").read_text())
    assert 0 < record["group_acc"] <= 1 and 0 <= record["knn_top1"] <= 100 and record["skipped_steps"] == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"


# The two tests below compare their interrupted runs with one uninterrupted run (a module fixture), so they share
# a test process: two epochs of NPID+CLD over two processes on the device path, the host reading every 3 steps,
# the kNN monitor split over both, --resume auto as a requeued job would be started.
STEPS = 7  # an epoch of the 1,000-image subset at 128 images a step


def npid_two_process(subset):
    return ["--dataset", "digits", "--subset", str(subset), "--arch", "resnet20", "--epochs", "2", "--batch-size",
            "128", "--clusters", "10", "--workers", "0", "--knn-every", "1", "--lr", "0.01", "--warmup-epochs", "0",
            "--data-path", "device", "--sync-every", "3", "--resume", "auto"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """-> (its flags, its folder: last.pth, metrics.jsonl, and each process's bank and weights in rankN.pt)."""
    folder = tmp_path_factory.mktemp("npid_two_process")
    flags = npid_two_process(digits_subset(folder / "digits_1000.json", 100))
    r = torchrun("tests/dist_worker.py", *flags, "--out", str(folder / "whole"))
    assert r.returncode == 0, r.stderr[-3000:]
    return flags, folder / "whole"


def same_run(whole, other):
    """Both runs logged the same epochs with the same numbers and ended in the same state, to the bit."""
    logged = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole, other)]
    assert [r["epoch"] for r in logged[1]] == [1, 2]
    for a, b in zip(*logged):
        for key in ("loss", "loss_ins", "loss_cld", "group_acc", "knn_top1"):
            assert a[key] == b[key], key
    a, b = (torch.load(run / "last.pth", weights_only=True) for run in (whole, other))
    for key in ("model", "memory", "optimizer"):
        assert states_equal(a[key], b[key]), key


@pytest.mark.xdist_group(name="npid_two_process")
def test_two_process_npid_cld_keeps_identical_banks_and_resumes_bit_exactly(uninterrupted, tmp_path):
    """Both processes hold the same bank and weights. Then process 0 catches SIGTERM during step 5 of 7; the next
    step carries it, and the processes read it at the next --sync-every step (6), save and stop. Resumed, the run
    ends in exactly the uninterrupted run's state, and the epoch's logged means equal its, which needs each
    process's partial sums back, not process 0's on both."""
    flags, whole = uninterrupted
    rank0, rank1 = torch.load(whole / "rank0.pt"), torch.load(whole / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"]) and states_equal(rank0["model"], rank1["model"])
    # Both processes' rows were written on both processes: exactly the rows of the images the two epochs drew left
    # their start (the sampler's permutations, 7 x 128 images an epoch, the tail of 104 dropped).
    torch.manual_seed(0)  # the bank is drawn right after the model, as train_cld.py does
    CLDNet("resnet20", 1, 128)
    moved = (rank0["bank"] - MemoryBank(len(rank0["bank"]), 128).bank).abs().sum(dim=1) > 0
    drawn = torch.zeros(len(moved), dtype=torch.bool)
    for epoch in (0, 1):
        for rank in (0, 1):
            sampler = EpochSampler(len(moved), 64, rank, 2, seed=0)
            sampler.set_epoch(epoch)
            drawn[sampler.indices()] = True
    assert torch.equal(moved, drawn) and 7 * 128 < drawn.sum() < len(moved)
    ckpt = torch.load(whole / "last.pth", weights_only=True)
    assert torch.equal(ckpt["memory"]["bank"], rank0["bank"]) and len(ckpt["rng"]) == 2

    stopped_at = 6
    stopped = tmp_path / "stopped"
    r = torchrun("tests/dist_stop_worker.py", *flags, "--out", str(stopped), env={"STOP_AFTER": "4"})
    assert r.returncode != 0 and f"stopped by signal in epoch 1/2 after step {stopped_at} of {STEPS}" in r.stderr, \
        r.stderr[-3000:]
    saved = torch.load(stopped / "last.pth", weights_only=True)
    assert saved["step"] == stopped_at and saved["sums"].shape == (2, 4)
    assert not torch.equal(saved["sums"][0], saved["sums"][1])  # each process saw other images
    r = torchrun("train_cld.py", *flags, "--out", str(stopped))  # --resume auto: from the step it stopped at
    assert r.returncode == 0, r.stderr[-3000:]
    same_run(whole, stopped)


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


@pytest.mark.xdist_group(name="npid_two_process")
def test_torchrun_restarts_a_killed_worker_and_the_run_ends_where_the_uninterrupted_one_ends(uninterrupted, tmp_path):
    """--resume auto under torchrun --max-restarts 1: process 1 is SIGKILLed at step 2 of epoch 2; the other
    stops with one line naming it, torchrun restarts both, they continue from last.pth (epoch 1) and end in
    exactly the state of a run never interrupted (and log each epoch once)."""
    flags, whole = uninterrupted
    out = tmp_path / "killed"
    r = torchrun("--max-restarts", "1", "tests/dist_kill_worker.py", *flags, "--out", str(out),
                 env={"KILL_AT": str(STEPS + 2)})
    assert r.returncode == 0, r.stderr[-3000:]
    said = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.startswith("error: ")]
    assert said and said[0].startswith("error: process 0 lost its connection to process 1"), r.stderr[-3000:]
    same_run(whole, out)
