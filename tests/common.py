"""Helpers the end-to-end tests share: running a script as a user does, and comparing saved states."""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, timeout=900):
    """python SCRIPT ARGS from the repository root -> the CompletedProcess (text output captured)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def one_clear_line(result):
    """A failure the user can act on: non-zero exit, no traceback; returns the last stderr line."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1]


def states_equal(a, b):
    """Nested dicts / lists / tensors equal to the bit."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b
