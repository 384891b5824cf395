"""Do two checkpoints of train_cld.py hold the same training state? For a resumed run against the
uninterrupted one (experiments/gpu_check.sh).

    python experiments/same_state.py A/last.pth B/last.pth [--atol 1e-3]

Compares the network, the partner's state (bank, key encoder and queue, target network) and the optimizer's
buffers, tensor by tensor. Prints one JSON line: bit_exact (every tensor equal to the bit), max_abs_diff, and
the first tensor that differs most. Exit 0 when every difference is within --atol (a GPU's non-deterministic
kernels, atomics in a convolution's backward for one, move the last bits), else 1.
"""
import argparse
import json
import sys

import torch


def tensors(state, prefix=""):
    """(name, tensor) of every floating-point or integer tensor in a nested state."""
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            yield name, value
        else:
            yield from tensors(value, name)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--atol", type=float, default=1e-3)
    args = p.parse_args()
    a, b = (torch.load(path, map_location="cpu", weights_only=True) for path in (args.a, args.b))
    parts = {key: (dict(tensors(a[key])), dict(tensors(b[key]))) for key in ("model", "memory", "optimizer")}
    worst, where, exact = 0.0, None, (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    for key, (ta, tb) in parts.items():
        if ta.keys() != tb.keys():
            print(json.dumps({"bit_exact": False, "error": f"{key}: different entries"}))
            sys.exit(1)
        for name in ta:
            exact &= torch.equal(ta[name], tb[name])
            if ta[name].shape != tb[name].shape:
                worst, where = float("inf"), f"{key}.{name}"
                continue
            diff = (ta[name].double() - tb[name].double()).abs().max().item() if ta[name].numel() else 0.0
            if diff > worst:
                worst, where = diff, f"{key}.{name}"
    print(json.dumps({"bit_exact": bool(exact), "max_abs_diff": worst, "where": where, "atol": args.atol,
                      "epochs": [a["epoch"], b["epoch"]]}))
    sys.exit(0 if worst <= args.atol and a["epoch"] == b["epoch"] else 1)


if __name__ == "__main__":
    main()
