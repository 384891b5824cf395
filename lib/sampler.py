"""Which images each process trains on, step by step."""
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler):
    """This process's share of a fresh permutation every epoch.

    The permutation depends only on (seed, epoch), the tail that does not fill a global batch is
    dropped (a 5-image batch would make k-means meaningless), and global batch s is the block
    perm[s*B : (s+1)*B] whatever the number of processes. start_step skips batches already trained,
    which is how a run resumes in the middle of an epoch.
    """

    def __init__(self, size, batch_per_rank, rank, world, seed):
        self.size, self.batch, self.rank, self.world, self.seed = size, batch_per_rank, rank, world, seed
        self.steps_per_epoch = size // (batch_per_rank * world)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch, start_step=0):
        self.epoch, self.start_step = epoch, start_step

    def indices(self):
        """This process's images for the rest of the epoch, in step order: [(steps - start_step) * batch] long."""
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        mine = perm[: self.steps_per_epoch * self.batch * self.world][self.rank::self.world]
        return mine[self.start_step * self.batch:]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.batch
