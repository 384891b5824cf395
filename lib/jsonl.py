"""Strict JSON for everything the scripts write or print: a NaN or infinity becomes null.

Python's json module writes float('nan') as the bare token NaN, which no strict JSON parser
accepts; one such value in metrics.jsonl makes the whole file unreadable to other tools.
"""
import json
import math
import os

import numpy as np


def strict(value):
    """value with every non-finite float (Python or numpy) replaced by None, inside dicts, lists and tuples."""
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def dumps(obj, **kwargs):
    """json.dumps that writes null for NaN and infinities and never emits a non-JSON token."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)


def write_atomic(path, text):
    """Replace path's contents with text, or leave it as it was: write a temporary beside it, flush it to
    disk, rename. The temporary is path + ".tmp"; a failed write removes it."""
    tmp = f"{os.fspath(path)}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def append(path, record):
    """One strict JSON line appended to path."""
    line = dumps(record) + "\n"
    with open(path, "a") as f:
        f.write(line)
