"""Run by tests under torchrun: train_cld.py where only the last process sees a NaN loss, at the steps
listed in NAN_STEPS, with gradients left finite, so that only the all-reduced flag can make the other
processes skip too. Writes this process's memory bank and weights."""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_cld  # noqa: E402
from lib.memory import MemoryBank  # noqa: E402

if __name__ == "__main__":
    bad_steps = {int(s) for s in os.environ["NAN_STEPS"].split(",")}
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    current = {}
    real_step, real_loss = train_cld.train_step, MemoryBank.loss

    def train_step(*args, **kwargs):
        current["step"] = args[6]
        return real_step(*args, **kwargs)

    def npid_loss(*args):
        loss, pending = real_loss(*args)
        if rank == world - 1 and current["step"] in bad_steps:
            loss = loss + torch.tensor(math.nan, device=loss.device)  # a NaN value, a finite gradient
        return loss, pending

    train_cld.train_step, MemoryBank.loss = train_step, npid_loss
    args = train_cld.parse_args()
    model, memory = train_cld.main(args)
    torch.save({"bank": memory.bank, "model": model.state_dict()}, os.path.join(args.out, f"rank{rank}.pt"))
