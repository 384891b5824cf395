"""The step-level plumbing of train_cld.py: the learning-rate schedule and which images each step sees."""
import math

import pytest
import torch

from lib.sampler import EpochSampler
from lib.schedule import lr_at


def test_warmup_then_cosine_by_hand():
    # 10 steps per epoch, 2 warm-up epochs, 10 epochs, peak 1.0, floor 0.
    lr = [lr_at(s, 10, 1.0, 10, warmup_epochs=2, min_lr=0.0) for s in range(100)]
    assert lr[0] == pytest.approx(0.01)                       # peak / 100
    assert lr[10] == pytest.approx(0.01 + 0.99 * 10 / 20)     # halfway up
    assert lr[20] == pytest.approx(1.0)                       # the cosine starts at the peak
    assert lr[60] == pytest.approx(0.5)                       # halfway down: 40 of 80 cosine steps
    assert lr[99] == pytest.approx(0.5 * (1 + math.cos(math.pi * 79 / 80)))


def test_no_warmup_and_floor():
    assert lr_at(0, 5, 0.2, 4, warmup_epochs=0, min_lr=1e-3) == pytest.approx(0.2)
    assert lr_at(20, 5, 0.2, 4, warmup_epochs=0, min_lr=1e-3) == pytest.approx(1e-3)  # the last step's end


def batches(sampler, per_rank):
    order = list(sampler)
    return [order[i:i + per_rank] for i in range(0, len(order), per_rank)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_global_batches_do_not_depend_on_the_number_of_processes(world):
    size, batch, seed, epoch = 103, 8, 5, 3
    perm = torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    expected = [perm[s * batch:(s + 1) * batch] for s in range(size // batch)]   # the tail of 7 is dropped
    shards = []
    for rank in range(world):
        sampler = EpochSampler(size, batch // world, rank, world, seed)
        sampler.set_epoch(epoch)
        assert sampler.steps_per_epoch == size // batch and len(sampler) == (size // batch) * (batch // world)
        shards.append(batches(sampler, batch // world))
    for step, global_batch in enumerate(expected):
        together = [i for rank in range(world) for i in shards[rank][step]]
        assert sorted(together) == sorted(global_batch)


def test_start_step_skips_the_batches_already_trained():
    full = EpochSampler(64, 8, 0, 1, seed=1)
    full.set_epoch(2)
    resumed = EpochSampler(64, 8, 0, 1, seed=1)
    resumed.set_epoch(2, start_step=3)
    assert list(resumed) == list(full)[3 * 8:] and len(resumed) == 5 * 8
