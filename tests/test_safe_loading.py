"""Files from a user's disk never run code: checkpoints load with weights_only, CIFAR pickles through an
allow-list, and checkpoints of earlier versions load only when the user says they trust them."""
import io
import os
import pickle
import random

import numpy as np
import pytest
import torch

import convert_checkpoint
import eval_knn
import eval_linear
from lib import checkpoint, rng
from lib.checkpoint import CheckpointError
from lib.data import DatasetError, load_dataset
from tests.common import evaluate, failure, only_line, run, states_equal, train
from tests.fixtures import write_cifar10

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_safe_loading")

SMALL = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "128", "--clusters", "10", "--workers", "0",
         "--lr", "0.01", "--warmup-epochs", "0", "--knn-every", "0"]


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears iff the loader ran the pickle's code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def two_epochs(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(*SMALL, "--epochs", 2, "--save-every", 1, "--out", out)
    return out


def training_state(path):
    ckpt = torch.load(path, weights_only=True)
    return {k: ckpt[k] for k in ("model", "memory", "optimizer", "epoch", "step")}


def legacy(path, out):
    """The same checkpoint as an earlier version wrote it: RNG states as numpy arrays and tuples."""
    ckpt = torch.load(path, weights_only=True)
    for state in ckpt["rng"]:
        n, p = state["numpy"], state["python"]
        state["numpy"] = (n["kind"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        state["python"] = (p["version"], tuple(p["words"].tolist()), p["gauss_next"])
    torch.save(ckpt, out)
    return out


# ---------------------------------------------------------------- what a checkpoint holds

def test_rng_capture_is_plain_and_restores_every_generator():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in numpy's state
    state = rng.capture()
    drawn = (torch.rand(4), np.random.normal(size=3), random.random(), random.gauss(0, 1))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    rng.restore(torch.load(buffer, weights_only=True))  # through a file that loads without trust
    again = (torch.rand(4), np.random.normal(size=3), random.random(), random.gauss(0, 1))
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1]) and drawn[2:] == again[2:]


def test_checkpoint_loads_with_weights_only(two_epochs):
    ckpt = torch.load(two_epochs / "last.pth", weights_only=True)
    assert {"config", "model", "memory", "optimizer", "scaler", "epoch", "step", "sums", "rng"} <= ckpt.keys()
    assert isinstance(ckpt["rng"][0]["numpy"]["key"], torch.Tensor)


# ---------------------------------------------------------------- crafted files run nothing

@pytest.mark.parametrize("script", ["eval_knn.py", "eval_linear.py", "train_cld.py"])
def test_crafted_checkpoint_is_refused_before_it_runs(script, tmp_path, capsys):
    """As a user runs eval_knn.py (a new process); the other two through their main() here."""
    marker = tmp_path / "pwned"
    torch.save({"config": {"dataset": "digits"}, "model": {}, "payload": CreatesFile(marker)}, tmp_path / "evil.pth")
    if script == "eval_knn.py":
        line = only_line(run(script, "--ckpt", tmp_path / "evil.pth"))
    elif script == "eval_linear.py":
        line = failure(evaluate, eval_linear, "--ckpt", tmp_path / "evil.pth", capsys=capsys)
    else:
        line = failure(train, *SMALL, "--resume", tmp_path / "evil.pth", "--out", tmp_path / "run")
    assert "evil.pth holds a Python object (io.open)" in line and "--trust-checkpoint" in line
    assert not marker.exists()


def test_crafted_cifar_pickle_is_refused_before_it_runs(tmp_path):
    root = write_cifar10(tmp_path / "data")
    marker = tmp_path / "pwned"
    batch = os.path.join(root, "cifar-10-batches-py", "data_batch_1")
    with open(batch, "wb") as f:
        pickle.dump({b"data": CreatesFile(marker), b"labels": [0]}, f, protocol=2)
    with pytest.raises(DatasetError, match=r"data_batch_1 was not loaded: it refers to io\.open"):
        load_dataset("cifar10", root, "train")
    assert not marker.exists()
    line = failure(train, "--dataset", "cifar10", "--data", root, "--out", tmp_path / "run")
    assert "data_batch_1" in line and not marker.exists() and not (tmp_path / "run").exists()


def test_truncated_cifar_pickle_is_one_line(tmp_path):
    root = write_cifar10(tmp_path)
    batch = os.path.join(root, "cifar-10-batches-py", "test_batch")
    with open(batch, "rb") as f:
        head = f.read(300)
    with open(batch, "wb") as f:
        f.write(head)
    with pytest.raises(DatasetError, match=r"test_batch is truncated or corrupt"):
        load_dataset("cifar10", root, "test")


# ---------------------------------------------------------------- right format, wrong contents

def test_config_missing_a_key_is_one_line(two_epochs, tmp_path, capsys):
    ckpt = torch.load(two_epochs / "last.pth", weights_only=True)
    del ckpt["config"]["ins_t"]
    torch.save(ckpt, tmp_path / "no_t.pth")
    line = failure(evaluate, eval_knn, "--ckpt", tmp_path / "no_t.pth", "--workers", 0, capsys=capsys)
    assert "its config lacks 'ins_t'" in line


def test_config_of_another_project_is_one_line(tmp_path, capsys):
    torch.save({"config": {"lr": 0.1, "model": "vit"}, "model": {}}, tmp_path / "other.pth")
    for script in (eval_knn, eval_linear):
        line = failure(evaluate, script, "--ckpt", tmp_path / "other.pth", capsys=capsys)
        assert "was not written by train_cld.py" in line and "'dataset'" in line


def test_checkpoint_without_training_state_cannot_be_resumed(two_epochs, tmp_path):
    ckpt = torch.load(two_epochs / "last.pth", weights_only=True)
    del ckpt["memory"]
    torch.save(ckpt, tmp_path / "partial.pth")
    line = failure(train, *SMALL, "--epochs", 2, "--resume", tmp_path / "partial.pth", "--out", tmp_path / "run")
    assert "cannot be resumed: it lacks memory" in line


def test_folder_as_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder; pass the file in it"):
        checkpoint.load(tmp_path)


# ---------------------------------------------------------------- checkpoints of earlier versions

def test_old_checkpoint_refused_then_trusted_then_converted(two_epochs, tmp_path, capsys):
    old = legacy(two_epochs / "epoch_1.pth", tmp_path / "old.pth")
    line = failure(evaluate, eval_knn, "--ckpt", old, "--workers", 0, capsys=capsys)
    assert "numpy" in line and "--trust-checkpoint" in line and "convert_checkpoint.py" in line

    capsys.readouterr()
    eval_knn.main(eval_knn.parse_args(["--ckpt", str(old), "--workers", "0", "--trust-checkpoint"]))
    assert "warning: --trust-checkpoint" in capsys.readouterr().err

    # Resuming the old file (trusted) ends exactly where the uninterrupted run ends.
    train(*SMALL, "--epochs", 2, "--resume", old, "--trust-checkpoint", "--out", tmp_path / "a")
    assert states_equal(training_state(tmp_path / "a" / "last.pth"), training_state(two_epochs / "last.pth"))

    refused = run("convert_checkpoint.py", old, tmp_path / "new.pth")  # as a user runs it: refuses without the flag
    assert refused.returncode == 2 and "--trust-checkpoint" in refused.stderr
    convert_checkpoint.main(convert_checkpoint.parse_args(["--trust-checkpoint", str(old), str(tmp_path / "new.pth")]))
    checkpoint.load(tmp_path / "new.pth")  # safe now
    train(*SMALL, "--epochs", 2, "--resume", tmp_path / "new.pth", "--out", tmp_path / "b")
    assert states_equal(training_state(tmp_path / "b" / "last.pth"), training_state(two_epochs / "last.pth"))
