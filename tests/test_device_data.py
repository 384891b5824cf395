"""The device data path (lib/device_data.py, --data-path device) and the loop that reads the device only
every --sync-every steps: same images as the DataLoader, per-step seeding, stop and resume bit-exact."""
import json
import math
import signal

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

import train_cld
from lib.augment import recipe_for
from lib.data import ArrayDataset, dataset_info, load_dataset
from lib.device_data import DeviceBatches, step_seed, uint8_images
from lib.memory import MemoryBank
from lib.sampler import EpochSampler
from lib.schedule import lr_at
from lib.subsets import subset_dataset
from tests.common import states_equal
from tests.fixtures import write_cifar10, write_stl10
from tests.test_faults import TINY, STEPS, signal_after


def test_the_array_is_the_images_the_loader_sees(tmp_path):
    """Row i of the device array is item i's image as ToTensor reads it (x 255), grey and RGB, whole and subset."""
    root = write_cifar10(tmp_path / "c", n_train_per_batch=4)
    stl = write_stl10(tmp_path / "s", n_train=6, n_unlabeled=5)
    for dataset in (load_dataset("cifar10", root, "pretrain"), load_dataset("stl10", stl, "pretrain"),
                    load_dataset("digits", None, "pretrain"),
                    subset_dataset(load_dataset("digits", None, "pretrain"), [5, 0, 1400, 7])):
        images = uint8_images(dataset)
        assert images.dtype == torch.uint8 and images.shape[0] == len(dataset)
        for i in range(len(dataset)):
            img, _, index = dataset[i]
            assert index == i and torch.equal(images[i], (TF.to_tensor(img) * 255).round().to(torch.uint8))


def test_a_folder_dataset_has_no_array_and_says_what_to_do(tmp_path):
    from tests.fixtures import write_imagefolder
    from lib.data import DatasetError
    folder = load_dataset("imagefolder", write_imagefolder(tmp_path, classes=2, n_per_class=1), "pretrain")
    with pytest.raises(DatasetError, match="--data-path loader"):
        uint8_images(folder)


def tiny_batches(rank, world, views=2):
    info = dataset_info("cifar10")
    data = np.random.RandomState(0).randint(0, 256, (40, 12, 12, 3)).astype(np.uint8)
    dataset = ArrayDataset(data, np.zeros(40), 10)
    sampler = EpochSampler(len(dataset), 4, rank, world, seed=3)
    return DeviceBatches.build(dataset, sampler, recipe_for("aug-plus", 8), True, info, 8, views, 3, rank, "cpu")


@pytest.mark.parametrize("world", [1, 2])
def test_each_step_takes_the_samplers_images_in_the_loaders_order(world):
    for rank in range(world):
        batches = tiny_batches(rank, world)
        for epoch, start in ((0, 0), (4, 2)):
            batches.sampler.set_epoch(epoch, start)
            order = list(batches.sampler)  # what the DataLoader over this sampler reads, in its order
            steps = list(batches)
            assert len(steps) == len(batches) == 40 // (4 * world) - start
            for k, (views, indices) in enumerate(steps):
                assert indices.tolist() == order[4 * k:4 * (k + 1)]
                assert len(views) == 2 and all(v.shape == (4, 3, 8, 8) and v.dtype == torch.float32 for v in views)


def test_views_are_seeded_per_step_so_a_resumed_epoch_draws_the_same():
    batches = tiny_batches(0, 1, views=3)
    batches.sampler.set_epoch(1)
    whole = list(batches)
    batches.sampler.set_epoch(1, start_step=6)
    torch.manual_seed(123)  # nothing is drawn from the global generators
    resumed = list(batches)
    for (a, ia), (b, ib) in zip(whole[6:], resumed):
        assert torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(a, b))
    views = whole[0][0]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])  # independent views
    other_rank = tiny_batches(1, 1)
    other_rank.sampler.set_epoch(1)
    assert not torch.equal(next(iter(other_rank))[0][0], views[0])  # each process draws its own
    seeds = {step_seed(0, r, e, s) for r in range(2) for e in range(3) for s in range(50)}
    assert len(seeds) == 300 and all(0 <= x < 2**63 for x in seeds)


def test_data_path_defaults_and_a_folder_dataset_on_the_device_path(tmp_path):
    assert train_cld.parse_args(["--out", str(tmp_path / "a")]).data_path == "device"
    argv = ["--dataset", "imagefolder", "--data", str(tmp_path), "--out", str(tmp_path / "b")]
    assert train_cld.parse_args(argv).data_path == "loader"  # on the CPU; tests/test_folder_device.py has the GPU's
    assert train_cld.parse_args(argv + ["--data-path", "device"]).data_path == "device"  # lib/folder_device.py


# ---------------------------------------------------------------- the loop, reading the device every N steps

@pytest.fixture
def no_signal_handlers(monkeypatch):
    """main() installs SIGINT/SIGTERM handlers; in-process runs must not leave them in pytest."""
    monkeypatch.setattr(train_cld.signal, "signal", lambda *a: None)


def final_state(path):
    ckpt = torch.load(path, weights_only=True)
    return {key: ckpt[key] for key in ("model", "memory", "optimizer", "epoch", "step", "sums", "skipped_steps")}


def test_stop_at_the_next_sync_step_and_resume_bit_exact(tmp_path, monkeypatch, no_signal_handlers, capsys):
    """--sync-every 4: a signal during step 5 of epoch 2 (carried by step 6) is read at step 8, where the run
    saves; the resumed run ends exactly where the uninterrupted one ends, as does one that reads every step."""
    argv = [*TINY, "--batch-size", "128", "--data-path", "device", "--epochs", "2", "--sync-every", "4"]
    steps = 1437 // 128
    train_cld.main(train_cld.parse_args([*argv, "--out", str(tmp_path / "whole")]))
    every_step = [*argv[:-1], "1"]
    train_cld.main(train_cld.parse_args([*every_step, "--out", str(tmp_path / "every")]))
    assert states_equal(final_state(tmp_path / "whole" / "last.pth"), final_state(tmp_path / "every" / "last.pth"))

    with monkeypatch.context() as patch:
        signal_after(patch, steps + 5)
        with pytest.raises(SystemExit) as stop:
            train_cld.main(train_cld.parse_args([*argv, "--out", str(tmp_path / "cut")]))
    assert stop.value.code == 128 + signal.SIGTERM
    assert f"stopped by signal in epoch 2/2 after step 8 of {steps}" in capsys.readouterr().err
    assert torch.load(tmp_path / "cut" / "last.pth", weights_only=True)["step"] == 8
    train_cld.main(train_cld.parse_args([*argv, "--resume", str(tmp_path / "cut" / "last.pth"),
                                         "--out", str(tmp_path / "cut")]))
    assert states_equal(final_state(tmp_path / "whole" / "last.pth"), final_state(tmp_path / "cut" / "last.pth"))
    lines = [(tmp_path / run / "metrics.jsonl").read_text().splitlines() for run in ("whole", "cut")]
    assert [json.loads(x)["loss"] for x in lines[0]] == [json.loads(x)["loss"] for x in lines[1]]


def test_a_run_of_bad_steps_is_named_at_the_step_it_reached_the_limit(tmp_path, monkeypatch, capsys,
                                                                       no_signal_handlers):
    """Bad from step 6 of epoch 1 on, --max-bad-steps 4: the limit is reached at step 9, read at step 16
    (--sync-every 8); the message names step 9 and its lr, and no checkpoint is written."""
    real_step, real_loss, current = train_cld.train_step, MemoryBank.loss, {}

    def train_step(*a, **k):
        current["step"] = a[6]
        return real_step(*a, **k)

    def nan_loss(*a):
        loss, pending = real_loss(*a)
        return (loss * math.nan if current["step"] >= 5 else loss), pending
    monkeypatch.setattr(train_cld, "train_step", train_step)
    monkeypatch.setattr(MemoryBank, "loss", nan_loss)
    args = train_cld.parse_args([*TINY, "--data-path", "device", "--epochs", "1", "--sync-every", "8",
                                 "--max-bad-steps", "4", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        train_cld.main(args)
    assert stop.value.code == 1 and current["step"] == 15
    err = capsys.readouterr().err
    lr = lr_at(8, STEPS, 0.01 * 64 / 128, 1, 0, 1e-6)  # TINY's schedule at step 9
    assert f"error: 4 steps in a row had a non-finite loss, gradient or BatchNorm statistic (epoch 1/1, step 9 " \
           f"of {STEPS}, lr {lr:.4g})" in err
    assert not (tmp_path / "last.pth").exists()
