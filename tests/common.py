"""Helpers the end-to-end tests share: running a script as a user does (a new process) or in this one (to
spare the interpreter's start and torch's import), and comparing saved states."""
import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
from unittest.mock import patch

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, timeout=900):
    """python SCRIPT ARGS from the repository root -> the CompletedProcess (text output captured)."""
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def as_main(capsys, script, *argv):
    """python SCRIPT ARGV as the command line runs it (the script's own __main__ block, sys.argv set) in this
    process, sparing the interpreter's start and torch's import -> (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        with patch.object(sys, "argv", [script, *map(str, argv)]):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    if isinstance(code, str):  # what the interpreter does with it: the message on stderr, exit status 1
        return 1, out, err + code + "\n"
    return code or 0, out, err


def torchrun(*args, nproc=2, env=None, timeout=900):
    """python -m torch.distributed.run --standalone ARGS from the repository root, one thread per process; ARGS
    may begin with more of torchrun's own flags (--max-restarts N); env: more environment variables."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def only_line(result):
    """Stricter than one_clear_line: the one line is all of stderr (progress bars' carriage returns split)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


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


@contextlib.contextmanager
def pytests_own_signals():
    """train_cld.main installs SIGINT / SIGTERM handlers; in this process they go back to pytest's after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def train(*argv):
    """train_cld.py in this process (no interpreter start, no imports): returns (model, partner). The checks
    of the command line, the run and its files are the script's own; a failure the user would see as one
    line raises SystemExit with that line."""
    import train_cld
    from lib import cli
    args = train_cld.parse_args([str(a) for a in argv])
    with pytests_own_signals():
        return cli.run_main(train_cld.main, args)


def evaluate(script, *argv, capsys):
    """An evaluation script's main in this process -> its last printed JSON line, parsed strictly."""
    from lib import cli
    capsys.readouterr()
    cli.run_main(script.main, script.parse_args([str(a) for a in argv]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1], parse_constant=refuse_non_json)


def refuse_non_json(token):
    raise ValueError(f"non-JSON token {token}")


def failure(call, *args, **kwargs):
    """The one line a failing run ends with (SystemExit's message, as cli.run_main gives it)."""
    with pytest.raises(SystemExit) as stop:
        call(*args, **kwargs)
    assert isinstance(stop.value.code, str) and stop.value.code.startswith("error: "), stop.value.code
    assert "\n" not in stop.value.code
    return stop.value.code


def digits_subset(path, per_class):
    """A subset file of digits' training split, the first per_class images of each class: runs of a few steps
    where the whole split (1,437 images) would take too long (bf16 is emulated on CPUs without AMX)."""
    import numpy as np
    from lib.data import load_dataset
    from lib.subsets import write_subset
    targets = np.asarray(load_dataset("digits", None, "train").targets)
    keep = np.sort(np.concatenate([np.flatnonzero(targets == c)[:per_class] for c in range(10)]))
    write_subset(path, keep, targets[keep], len(targets), dataset="digits")
    return path
