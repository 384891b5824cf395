"""Rewrite a checkpoint of an earlier version of this project in the safe format.

    python convert_checkpoint.py --trust-checkpoint runs/old/last.pth runs/old/last_safe.pth

Earlier versions stored the RNG states as numpy arrays, which torch.load(weights_only=True) refuses:
train_cld.py --resume, eval_knn.py and eval_linear.py then ask for --trust-checkpoint. Reading such a
file unpickles arbitrary Python objects, which can run code, hence the flag here too: convert only
files whose origin you trust. The output holds tensors and plain values only, loads without the flag,
and resumes exactly where the original would have.
"""
import argparse
import os
import sys

from lib import checkpoint
from lib.checkpoint import CheckpointError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the old checkpoint")
    p.add_argument("dst", help="where to write the safe one (must differ from src)")
    p.add_argument("--trust-checkpoint", action="store_true", help="required: you trust where src came from")
    args = p.parse_args(argv)
    if not args.trust_checkpoint:
        p.error("reading an old checkpoint can run code it contains; pass --trust-checkpoint if you trust its source")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        p.error("dst must differ from src, so that the original stays until the copy is checked")
    return args


def main(args):
    ckpt = checkpoint.convert_legacy(checkpoint.load(args.src, trust=True))
    checkpoint.save_atomic(ckpt, args.dst)
    try:
        checkpoint.load(args.dst)  # proof: the copy loads without trust
    except CheckpointError as e:
        os.unlink(args.dst)
        raise CheckpointError(f"{args.src} holds more than an earlier version of train_cld.py wrote, so it cannot be "
                              f"made safe ({e})") from None
    print(f"wrote {args.dst}: loads with torch.load(weights_only=True)")


if __name__ == "__main__":
    args = parse_args()
    try:
        main(args)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
