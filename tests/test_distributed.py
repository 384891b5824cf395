"""Two CPU processes with the gloo backend, launched by torchrun exactly as a user would."""
import json
import os
import subprocess
import sys

import torch

from lib.cluster import grouping
from lib.losses import cld_terms
from lib.memory import MemoryBank
from lib.models import CLDNet

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
