"""Atomic checkpoint files and their loading with one-line errors."""
import json
import os
import tempfile

import torch


class CheckpointError(Exception):
    pass


def save_atomic(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path, device="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass the last.pth written by train_cld.py --out DIR")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); it is corrupt or not a PyTorch file")
    if not isinstance(ckpt, dict) or not {"config", "model"} <= ckpt.keys():
        raise CheckpointError(f"checkpoint {path} was not written by train_cld.py (no config/model entries)")
    return ckpt


def load_model_state(model, state, path):
    """load_state_dict(strict) with a one-line error when the weights belong to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model: {first}")


def write_json_atomic(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
