"""Checkpoint files: written atomically, holding only tensors and plain values, loaded without running code.

A checkpoint of train_cld.py is a dict of tensors, numbers, strings, None, lists and dicts: the run's
config, the model's and the instance partner's state dicts, the optimizer's and the gradient scaler's,
the position in the schedule and every process's RNG state (lib/rng.py). torch.load(weights_only=True)
rebuilds exactly those types and refuses every other Python object, so opening a checkpoint someone
handed you cannot execute code. Files from earlier versions of this project stored numpy arrays in the
RNG state; they load only with an explicit trust=True (--trust-checkpoint), and convert_legacy() turns
them into the safe format.
"""
import os
import re
import shutil
import sys
import tempfile

import torch

from lib import jsonl
from lib.models import NetworkSpec


class CheckpointError(Exception):
    pass


# The config entries that say which network a checkpoint holds, with their types.
NETWORK_KEYS = {"dataset": str, "arch": str, "image_size": int, "dim": int, "instance_head": str, "group_head": str}
TRUST_HINT = ("if it is a checkpoint of an earlier version of this project and you trust where it came from, pass "
              "--trust-checkpoint to load it the old way, or rewrite it once in the safe format with "
              "python convert_checkpoint.py --trust-checkpoint {path} NEW.pth")


def umask():
    """The process's file-creation mask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_atomic(obj, path):
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file. The file
    gets the mode any file the process creates gets (0666 less the umask), as config.json does; mkstemp's
    0600 would hide checkpoints from the rest of a group."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    existed = os.path.exists(path)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, NotImplementedError):
            raise CheckpointWriteError(write_failure(e, path, folder, existed, tensor_bytes(obj))) from None
        raise


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (full disk, file-size limit, quota, I/O error); the file that was at
    its path before is untouched."""


def tensor_bytes(obj):
    """The bytes of every tensor in a nested state: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(value) for value in obj)
    return 0


def write_failure(error, path, folder, existed, needed):
    """One line: what failed, what the write needs against what the disk has, and what is kept."""
    if isinstance(error, OSError):
        reason = error.strerror or str(error)
    else:  # torch's writer: '[enforce fail at inline_container.cc:...] . PytorchStreamWriter failed writing file ...'
        reason = " ".join(str(error).split())[:160]
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path} is intact" if existed else f"no earlier {os.path.basename(path)} was there"
    return (f"could not write {path} ({reason}): it needs about {needed / 2**20:.0f} MiB ({free}; a file-size "
            f"limit, ulimit -f, or a quota also stops it); {kept}")


def read(path, device="cpu", trust=False):
    """torch.load with one-line errors. Only tensors and plain values unless trust=True."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder; pass the file in it, e.g. {os.path.join(path, 'last.pth')}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist; pass the last.pth written by train_cld.py --out DIR")
    if trust:
        print(f"warning: --trust-checkpoint: loading {path} with full unpickling, which runs any code the file "
              "contains", file=sys.stderr)
    try:
        return torch.load(path, map_location=device, weights_only=not trust)
    except Exception as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found and not trust:
            raise CheckpointError(f"checkpoint {path} holds a Python object ({found.group(1)}) besides tensors and plain "
                                  f"values, so it was not loaded: loading it could run code; "
                                  + TRUST_HINT.format(path=path)) from None
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); it is corrupt or not a "
                              "PyTorch file") from None


def load(path, device="cpu", trust=False, needs=()):
    """A checkpoint written by train_cld.py, checked: it has a config that describes its network (and the
    entries `needs` that the caller reads) and a model state dict."""
    ckpt = read(path, device, trust)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} was not written by train_cld.py (no config/model entries)")
    config = ckpt["config"]
    for key, kind in NETWORK_KEYS.items():
        if not isinstance(config.get(key), kind) or isinstance(config.get(key), bool):
            raise CheckpointError(f"checkpoint {path} was not written by train_cld.py: its config has no valid "
                                  f"{key!r} ({config.get(key)!r})")
    for key in needs:
        if key not in config:
            raise CheckpointError(f"checkpoint {path} was not written by this version of train_cld.py: its config "
                                  f"lacks {key!r}")
    return ckpt


def load_model_state(model, state, path):
    """load_state_dict(strict) with a one-line error when the weights belong to another model."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"checkpoint {path} does not fit this model: {first}")


def network_spec(ckpt, path, channels=None):
    """The NetworkSpec a checkpoint holds; for one without it, built from its config and `channels`."""
    try:
        if "network" in ckpt:
            return NetworkSpec(**ckpt["network"])
        return NetworkSpec.from_config(ckpt["config"], channels)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} has no valid network description ({e})") from None


def load_network(ckpt, path, channels=None):
    """The online network (backbone and heads) of a checkpoint, rebuilt from its NetworkSpec, weights loaded."""
    try:
        model = network_spec(ckpt, path, channels).build()
    except (ValueError, TypeError, AssertionError) as e:
        raise CheckpointError(f"checkpoint {path} describes a network this version cannot build ({e})") from None
    load_model_state(model, ckpt["model"], path)
    return model


def convert_legacy(ckpt):
    """A checkpoint of an earlier version (RNG states as numpy arrays and tuples) in the safe format."""
    converted = dict(ckpt)
    if "rng" in ckpt:
        converted["rng"] = [legacy_rng(state) for state in ckpt["rng"]]
    return converted


def legacy_rng(state):
    if isinstance(state.get("numpy"), dict):  # already safe
        return state
    kind, key, pos, has_gauss, cached_gaussian = state["numpy"]
    version, words, gauss_next = state["python"]
    safe = {"torch": state["torch"],
            "numpy": {"kind": kind, "key": torch.as_tensor(key.astype("int64")), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": {"version": version, "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next}}
    if "cuda" in state:
        safe["cuda"] = state["cuda"]
    return safe


def write_json_atomic(obj, path):
    jsonl.write_atomic(path, jsonl.dumps(obj, indent=2))
