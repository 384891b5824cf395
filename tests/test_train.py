"""train_cld.py and eval_knn.py end to end on the bundled digits, as a user runs them."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from lib.checkpoint import save_atomic
from lib.data import dataset_info, load_dataset
from lib.augment import test_transform as eval_transform
from lib.knn import knn_eval
from lib.models import CLDNet
from tests.common import ROOT, one_clear_line, run, states_equal

SMALL = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "128", "--clusters", "10", "--workers", "0"]
# A short schedule that learns reliably on digits: a small constant-then-cosine lr, no warm-up.
SHORT = [*SMALL, "--epochs", "6", "--lr", "0.01", "--warmup-epochs", "0", "--knn-every", "1"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Six epochs of NPID+CLD with a snapshot after every epoch."""
    out = tmp_path_factory.mktemp("reference")
    r = run("train_cld.py", *SHORT, "--save-every", 1, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def assert_same_training_state(path_a, path_b):
    a, b = torch.load(path_a, weights_only=False), torch.load(path_b, weights_only=False)
    for key in ("model", "memory", "optimizer", "epoch", "step"):
        assert states_equal(a[key], b[key]), key


def test_run_folder_contents(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["clusters"] == 10 and config["peak_lr"] == pytest.approx(0.01)
    records = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert {"loss", "loss_ins", "loss_cld", "group_acc", "lr", "knn_top1", "knn_top5", "seconds"} <= r.keys()
    assert records[-1]["loss_ins"] < records[0]["loss_ins"]
    assert sorted(p.name for p in reference_run.glob("*.pth")) == [f"epoch_{i}.pth" for i in range(1, 7)] + ["last.pth"]
    assert not list(reference_run.glob(".tmp*"))


def test_training_beats_the_untrained_network(reference_run):
    info = dataset_info("digits")
    train_set = load_dataset("digits", None, "train", eval_transform(info))
    test_set = load_dataset("digits", None, "test", eval_transform(info))
    torch.manual_seed(0)  # the initial weights of the run
    untrained = CLDNet("resnet20", 1).eval()
    before, _ = knn_eval(untrained.embed, train_set, test_set, "cpu", 200, 0.1)
    r = run("eval_knn.py", "--ckpt", reference_run / "last.pth", "--workers", 0)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["top1"] > before + 5, (result, before)
    assert result["k"] == 200 and result["sigma"] == 0.1
    # eval_knn.py and the monitor inside training measure the same thing
    last = json.loads((reference_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["top1"] == pytest.approx(last["knn_top1"], abs=0.01)


def test_resume_after_epoch_one_ends_where_the_uninterrupted_run_ends(reference_run, tmp_path):
    r = run("train_cld.py", *SHORT, "--resume", reference_run / "epoch_1.pth", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_training_state(reference_run / "last.pth", tmp_path / "last.pth")
    resumed = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in reference[1:]]


def test_sigterm_saves_mid_run_and_resume_is_exact(reference_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train_cld.py", *SHORT, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # wait for epoch 1 to finish
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside epoch 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    saved = torch.load(out / "last.pth", weights_only=False)
    assert (saved["epoch"], saved["step"]) != (6, 0)  # stopped before the end
    r = run("train_cld.py", *SHORT, "--resume", out / "last.pth", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_training_state(reference_run / "last.pth", out / "last.pth")


def test_npid_baseline_trains_without_group_loss(tmp_path):
    r = run("train_cld.py", *SMALL, "--epochs", 1, "--lam", 0, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["loss_cld"] == 0 and record["loss"] == pytest.approx(record["loss_ins"])


# ---------------------------------------------------------------- bad input

def test_missing_dataset_says_where_to_get_it(tmp_path):
    line = one_clear_line(run("train_cld.py", "--dataset", "cifar10", "--data", tmp_path / "nowhere", "--out", tmp_path / "r"))
    assert line.startswith("error: cifar10") and "download" in line
    assert not (tmp_path / "r").exists()


def test_missing_and_corrupt_checkpoints(tmp_path):
    line = one_clear_line(run("eval_knn.py", "--ckpt", tmp_path / "none.pth"))
    assert "does not exist" in line
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    line = one_clear_line(run("eval_knn.py", "--ckpt", tmp_path / "bad.pth"))
    assert "corrupt" in line


def test_checkpoint_from_another_model(reference_run, tmp_path):
    ckpt = torch.load(reference_run / "last.pth", weights_only=False)
    ckpt["network"]["arch"] = ckpt["config"]["arch"] = "resnet32"  # claims another network than its weights are
    torch.save(ckpt, tmp_path / "other.pth")
    line = one_clear_line(run("eval_knn.py", "--ckpt", tmp_path / "other.pth"))
    assert "does not fit this model" in line
    line = one_clear_line(run("train_cld.py", *SMALL, "--arch", "resnet32", "--resume", reference_run / "last.pth",
                              "--out", tmp_path / "r"))
    assert "--arch resnet20" in line


@pytest.mark.parametrize("flag", ["--clusters", "--batch-size"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_counts(flag, value, tmp_path):
    line = one_clear_line(run("train_cld.py", "--dataset", "digits", flag, value, "--out", tmp_path))
    assert f"{flag} must be positive" in line


def test_more_clusters_than_batch_warns(tmp_path):
    r = run("train_cld.py", *SMALL, "--clusters", 200, "--epochs", 1, "--knn-every", 0, "--out", tmp_path)
    assert r.returncode == 0
    assert "warning: --clusters 200 >= 128 images per process" in r.stderr


def test_existing_run_is_not_overwritten(reference_run):
    line = one_clear_line(run("train_cld.py", *SMALL, "--out", reference_run))
    assert "--resume" in line


def test_save_is_atomic(tmp_path):
    target = tmp_path / "ckpt.pth"
    save_atomic({"a": 1}, target)
    with pytest.raises(Exception):
        save_atomic({"a": lambda: 0}, target)  # a lambda cannot be pickled: fails half way
    assert torch.load(target) == {"a": 1}  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # and no temporary file is left


def test_moco_resume_is_exact_and_checkpoint_holds_key_encoder_and_queue(tmp_path):
    moco = [*SMALL, "--moco", "--queue", "200", "--epochs", "2", "--lr", "0.01", "--warmup-epochs", "0", "--knn-every", "1"]
    r = run("train_cld.py", *moco, "--save-every", 1, "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("train_cld.py", *moco, "--resume", tmp_path / "a" / "epoch_1.pth", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_training_state(tmp_path / "a" / "last.pth", tmp_path / "b" / "last.pth")
    memory = torch.load(tmp_path / "a" / "last.pth", weights_only=False)["memory"]
    assert {"queue", "ptr"} <= memory.keys() and any(k.startswith("encoder.") for k in memory)
    assert memory["ptr"].item() == (2 * (1437 // 128) * 128) % 200   # two epochs of 11 batches went in
    r = run("eval_knn.py", "--ckpt", tmp_path / "a" / "last.pth", "--workers", 0)
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["sigma"] == 0.07


def test_training_on_a_subset(tmp_path):
    from lib.subsets import write_subset
    full = load_dataset("digits", None, "train")
    keep = np.concatenate([np.where(full.targets == c)[0][: 12 * (c + 1)] for c in range(10)])  # 12 ... 120 per class
    write_subset(tmp_path / "subset.json", keep, full.targets[keep], len(full), dataset="digits")
    r = run("train_cld.py", *SMALL, "--epochs", 1, "--subset", tmp_path / "subset.json", "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=False)
    assert ckpt["memory"]["bank"].shape == (len(keep), 128)      # one row per kept image
    r = run("eval_knn.py", "--ckpt", tmp_path / "run" / "last.pth", "--workers", 0)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["train_images"] == len(keep) and {"many", "medium", "few"} <= result.keys()
    assert result["many"] is not None and result["few"] is not None  # 120 > 100 and 12 < 20 images
