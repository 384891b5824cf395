"""Run by tests under torchrun: trains, then writes this process's memory bank and weights."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from train_cld import main, parse_args  # noqa: E402

if __name__ == "__main__":
    args = parse_args()
    model, memory = main(args)
    rank = int(os.environ.get("RANK", 0))
    bank = memory.queue if hasattr(memory, "queue") else getattr(memory, "bank", None)  # byol has neither
    torch.save({"bank": bank, "model": model.state_dict(), "memory": memory.state_dict()},
               os.path.join(args.out, f"rank{rank}.pt"))
