"""The training data path without a DataLoader: the whole uint8 training array on the training device,
every view of a batch built there by lib/batch_augment.py.

It serves the same images in the same order as the DataLoader over the same EpochSampler (shuffling,
sharding over processes, the dropped tail, a resumed epoch's start step). The augmentations differ in
how they are drawn: each step's come from a generator seeded from (seed, rank, epoch, step), so a run
resumed at any step draws what the uninterrupted run drew without saving any generator state.
"""
import numpy as np
import torch

from lib.batch_augment import BatchAugment
from lib.data import ArrayDataset, DatasetError
from lib.subsets import SubsetDataset


def uint8_images(dataset):
    """The images of an in-memory dataset (an ArrayDataset, or a SubsetDataset of one) in its item order:
    a uint8 tensor [N, C, H, W] on the CPU, RGB ones a view of the [N, H, W, C] array (channels_last: no
    second copy of STL-10's 2.9 GB, and a copy to CUDA keeps the layout convolutions there prefer)."""
    rows = None
    if isinstance(dataset, SubsetDataset):
        dataset, rows = dataset.dataset, dataset.indices
    if not isinstance(dataset, ArrayDataset):
        raise DatasetError(f"{type(dataset).__name__} holds no image array; train it with --data-path loader")
    data = np.asarray(dataset.data if rows is None else dataset.data[rows])   # [N,H,W] or [N,H,W,3]
    if data.dtype != np.uint8 or data.ndim not in (3, 4):
        raise DatasetError(f"expected uint8 images [N,H,W] or [N,H,W,3], got {data.dtype} {data.shape}; "
                           "train it with --data-path loader")
    images = torch.from_numpy(np.ascontiguousarray(data))
    return images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)


def step_seed(seed, rank, epoch, step):
    """The seed of one step's augmentation generator: the four numbers mixed by numpy's SeedSequence, so
    that neighbouring steps, epochs and processes get unrelated streams."""
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1, np.uint64)[0] >> 1)


class DeviceBatches:
    """Iterable over the rest of the sampler's epoch: (views, indices) per step, where views is a list of
    `views` float32 tensors [B, C, size, size] and indices [B] long, all on the images' device.

    images: uint8 [N, C, H, W] on the training device, row i = item i of the dataset the sampler draws from;
    sampler: an EpochSampler (set_epoch decides the epoch and the step it starts at);
    augment: a BatchAugment; seed, rank: the run's seed and this process's rank."""

    def __init__(self, images, sampler, augment, views, seed, rank):
        if len(images) != sampler.size:
            raise ValueError(f"{len(images)} images for a sampler over {sampler.size}")
        self.images, self.sampler, self.augment, self.views = images, sampler, augment, views
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator(device=images.device)

    @classmethod
    def build(cls, dataset, sampler, recipe, erasing, info, size, views, seed, rank, device):
        """From a dataset (see uint8_images), a Recipe, the Erasing or None and the dataset's DatasetInfo."""
        images = uint8_images(dataset).to(device)
        return cls(images, sampler, BatchAugment(recipe, erasing, info.mean, info.std, size), views, seed, rank)

    def __len__(self):
        return self.sampler.steps_per_epoch - self.sampler.start_step

    def __iter__(self):
        s, batch = self.sampler, self.sampler.batch
        order = s.indices()                                         # [(steps - start) * batch] on the CPU
        if self.images.is_cuda:
            order = order.pin_memory()
        order = order.to(self.images.device, non_blocking=True)    # once per epoch, not per step
        for k, step in enumerate(range(s.start_step, s.steps_per_epoch)):
            indices = order[k * batch:(k + 1) * batch]              # [B]
            images = self.images[indices]                           # [B, C, H, W] uint8
            self.generator.manual_seed(step_seed(self.seed, self.rank, s.epoch, step))
            yield [self.augment(images, self.generator) for _ in range(self.views)], indices
