"""train_cld.py and eval_knn.py end to end on the bundled digits. The runs go through the scripts' own
main() in this process (tests.common.train, evaluate); tests/test_bad_input.py and tests/test_faults.py
run them as new processes, as a user does."""
import json
import shutil

import numpy as np
import pytest
import torch

import eval_knn
import train_cld
from lib.checkpoint import save_atomic
from lib.data import dataset_info, load_dataset
from lib.augment import test_transform as eval_transform
from lib.knn import knn_eval
from lib.models import CLDNet
from tests.common import evaluate, failure, states_equal, train
from tests.test_faults import signal_after

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_train")

SMALL = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "128", "--clusters", "10", "--workers", "0"]
# A short schedule that learns reliably on digits: a small constant-then-cosine lr, no warm-up.
SHORT = [*SMALL, "--epochs", "6", "--lr", "0.01", "--warmup-epochs", "0", "--knn-every", "1"]


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def reference_run(tmp_path_factory):
    """Six epochs of NPID+CLD with a snapshot after every epoch; --resume auto with no checkpoint there starts
    afresh."""
    out = tmp_path_factory.mktemp("reference")
    train(*SHORT, "--save-every", 1, "--resume", "auto", "--out", out)
    return out


def assert_same_training_state(path_a, path_b):
    a, b = torch.load(path_a, weights_only=True), torch.load(path_b, weights_only=True)
    for key in ("model", "memory", "optimizer", "epoch", "step"):
        assert states_equal(a[key], b[key]), key


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(reference_run):
    config = json.loads((reference_run / "config.json").read_text())
    assert config["clusters"] == 10 and config["peak_lr"] == pytest.approx(0.01) and config["resume"] is None
    assert [r["epoch"] for r in records(reference_run)] == [1, 2, 3, 4, 5, 6]
    for r in records(reference_run):
        assert {"loss", "loss_ins", "loss_cld", "group_acc", "lr", "knn_top1", "knn_top5", "seconds"} <= r.keys()
    assert records(reference_run)[-1]["loss_ins"] < records(reference_run)[0]["loss_ins"]
    assert sorted(p.name for p in reference_run.glob("*.pth")) == [f"epoch_{i}.pth" for i in range(1, 7)] + ["last.pth"]
    assert not list(reference_run.glob(".tmp*"))


def test_training_beats_the_untrained_network(reference_run, capsys):
    info = dataset_info("digits")
    train_set = load_dataset("digits", None, "train", eval_transform(info))
    test_set = load_dataset("digits", None, "test", eval_transform(info))
    torch.manual_seed(0)  # the initial weights of the run
    untrained = CLDNet("resnet20", 1).eval()
    before, _ = knn_eval(untrained.embed, train_set, test_set, "cpu", 200, 0.1)
    result = evaluate(eval_knn, "--ckpt", reference_run / "last.pth", "--workers", 0, capsys=capsys)
    # Six short epochs: 61.7 -> 65.8 to 67+ depending on the machine's floating-point sums (2 points is the margin).
    assert result["top1"] > before + 2, (result, before)
    assert result["k"] == 200 and result["sigma"] == 0.1 and result["precision"] == "fp32"
    # eval_knn.py and the monitor inside training measure the same thing
    assert result["top1"] == pytest.approx(records(reference_run)[-1]["knn_top1"], abs=0.01)


def test_resume_auto_continues_from_the_folders_last_checkpoint_bit_exactly(reference_run, tmp_path):
    """A folder holding epoch 5's checkpoint as its last.pth: --resume auto continues from it and ends where the
    uninterrupted run ends; its log gets epochs 1 to 5's lines back from the checkpoint, then epoch 6."""
    tmp_path.mkdir(exist_ok=True)
    shutil.copy(reference_run / "epoch_5.pth", tmp_path / "last.pth")
    train(*SHORT, "--resume", "auto", "--out", tmp_path)
    assert_same_training_state(reference_run / "last.pth", tmp_path / "last.pth")
    assert json.loads((tmp_path / "config.json").read_text())["resume"] == str(tmp_path / "last.pth")
    assert [r["loss"] for r in records(tmp_path)] == [r["loss"] for r in records(reference_run)]


def test_a_stop_in_the_middle_of_an_epoch_resumes_exactly(reference_run, tmp_path, monkeypatch):
    """Resumed from epoch 4's snapshot, the run is stopped during step 4 of epoch 5 (the next step carries the
    signal), then resumed from that mid-epoch checkpoint: it ends where the uninterrupted run ends."""
    signal_after(monkeypatch, 4)
    monkeypatch.setattr(train_cld.signal, "signal", lambda *a: None)
    with pytest.raises(SystemExit) as stop:
        train_cld.main(train_cld.parse_args([*SHORT, "--resume", str(reference_run / "epoch_4.pth"),
                                             "--out", str(tmp_path)]))
    assert stop.value.code == 143
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (4, 5)
    monkeypatch.undo()
    train(*SHORT, "--resume", tmp_path / "last.pth", "--out", tmp_path)
    assert_same_training_state(reference_run / "last.pth", tmp_path / "last.pth")


def test_npid_baseline_trains_without_group_loss(tmp_path):
    train(*SMALL, "--epochs", 1, "--lam", 0, "--knn-every", 0, "--out", tmp_path)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["loss_cld"] == 0 and record["loss"] == pytest.approx(record["loss_ins"])


# ---------------------------------------------------------------- bad input

def test_missing_dataset_says_where_to_get_it(tmp_path):
    line = failure(train, "--dataset", "cifar10", "--data", tmp_path / "nowhere", "--out", tmp_path / "r")
    assert line.startswith("error: cifar10") and "download" in line
    assert not (tmp_path / "r").exists()


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:  # found by the flag checks, before any work
        eval_knn.parse_args(["--ckpt", str(tmp_path / "none.pth")])
    assert stop.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    assert "corrupt" in failure(evaluate, eval_knn, "--ckpt", tmp_path / "bad.pth", capsys=capsys)


def test_checkpoint_from_another_model(reference_run, tmp_path, capsys):
    ckpt = torch.load(reference_run / "last.pth", weights_only=True)
    ckpt["network"]["arch"] = ckpt["config"]["arch"] = "resnet32"  # claims another network than its weights are
    torch.save(ckpt, tmp_path / "other.pth")
    assert "does not fit this model" in failure(evaluate, eval_knn, "--ckpt", tmp_path / "other.pth", capsys=capsys)
    line = failure(train, *SMALL, "--arch", "resnet32", "--resume", reference_run / "last.pth", "--out", tmp_path / "r")
    assert "--arch resnet20" in line


@pytest.mark.parametrize("flag", ["--clusters", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_counts(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cld.parse_args(["--dataset", "digits", flag, value, "--out", str(tmp_path)])
    assert stop.value.code == 2 and f"{flag} must be positive" in capsys.readouterr().err


def test_more_clusters_than_batch_warns(tmp_path, capsys):
    train(*SMALL, "--clusters", 200, "--epochs", 1, "--knn-every", 0, "--out", tmp_path)
    assert "warning: --clusters 200 >= 128 images per process" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(reference_run):
    assert "--resume" in failure(train, *SMALL, "--out", reference_run)


def test_save_is_atomic(tmp_path):
    target = tmp_path / "ckpt.pth"
    save_atomic({"a": 1}, target)
    with pytest.raises(Exception):
        save_atomic({"a": lambda: 0}, target)  # a lambda cannot be pickled: fails half way
    assert torch.load(target) == {"a": 1}  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # and no temporary file is left


def test_moco_resume_is_exact_and_checkpoint_holds_key_encoder_and_queue(tmp_path, capsys):
    moco = [*SMALL, "--moco", "--queue", "200", "--epochs", "2", "--lr", "0.01", "--warmup-epochs", "0",
            "--knn-every", "1"]
    train(*moco, "--save-every", 1, "--out", tmp_path / "a")
    train(*moco, "--resume", tmp_path / "a" / "epoch_1.pth", "--out", tmp_path / "b")
    assert_same_training_state(tmp_path / "a" / "last.pth", tmp_path / "b" / "last.pth")
    memory = torch.load(tmp_path / "a" / "last.pth", weights_only=True)["memory"]
    assert {"queue", "ptr"} <= memory.keys() and any(k.startswith("encoder.") for k in memory)
    assert memory["ptr"].item() == (2 * (1437 // 128) * 128) % 200   # two epochs of 11 batches went in
    assert evaluate(eval_knn, "--ckpt", tmp_path / "a" / "last.pth", "--workers", 0, capsys=capsys)["sigma"] == 0.07


def test_training_on_a_subset(tmp_path, capsys):
    from lib.subsets import write_subset
    full = load_dataset("digits", None, "train")
    keep = np.concatenate([np.where(full.targets == c)[0][: 12 * (c + 1)] for c in range(10)])  # 12 ... 120 per class
    write_subset(tmp_path / "subset.json", keep, full.targets[keep], len(full), dataset="digits")
    train(*SMALL, "--epochs", 1, "--knn-every", 0, "--subset", tmp_path / "subset.json", "--out", tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["memory"]["bank"].shape == (len(keep), 128)      # one row per kept image
    result = evaluate(eval_knn, "--ckpt", tmp_path / "run" / "last.pth", "--workers", 0, capsys=capsys)
    assert result["train_images"] == len(keep) and {"many", "medium", "few"} <= result.keys()
    assert result["many"] is not None and result["few"] is not None  # 120 > 100 and 12 < 20 images
