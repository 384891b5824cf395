"""The run folder (--out) of train_cld.py: one run at a time (a lock), no temporaries left by killed
writes, and a metrics.jsonl consistent with the checkpoint a run resumes from, whatever the moment a
previous process died."""
import fcntl
import glob
import json
import os
import socket
import sys
import time

from lib import jsonl


LOCK = ".lock"
# Temporaries of lib/checkpoint.py's atomic writes and of this module's.
TEMPORARIES = (".tmp-*.pth", "config.json.tmp", "metrics.jsonl.tmp")
_held = {}  # folder (real path) -> descriptor of its lock file, open for as long as this process runs there


class FolderBusy(Exception):
    pass


def lock(folder):
    """Hold an exclusive flock on FOLDER/.lock for the life of this process (or until release), creating the
    folder. The kernel drops the lock when the process ends, however it ends, so a dead run never leaves the
    folder locked; the file keeps the holder's pid and host for the message another run gets. Works on local
    disks and on NFS v4 (flock maps to an NFS lock there). Raises FolderBusy when another process holds it."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    if key in _held:
        return
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that has not written its pid yet"
        os.close(fd)
        raise FolderBusy(f"{folder} is in use by another run ({holder}); wait for it to end, stop it, or pick "
                         "another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode())
    _held[key] = fd


def release(folder):
    fd = _held.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock; the file stays, empty of meaning


def remove_temporaries(folder):
    """Delete what killed atomic writes left in folder; returns the names. Only call it holding the lock: a
    live run's temporary would go too."""
    removed = []
    for pattern in TEMPORARIES:
        for path in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            try:
                os.unlink(path)
                removed.append(os.path.basename(path))
            except FileNotFoundError:
                pass
    return removed


def read_records(path):
    """The records of a metrics.jsonl, skipping a line a killed write left incomplete (or any line that is
    not a JSON object with an epoch)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
    return records


def write_lines_atomic(path, records):
    jsonl.write_atomic(path, "".join(jsonl.dumps(record) + "\n" for record in records))


def repair_metrics(path, finished, saved=None):
    """Make metrics.jsonl at path hold exactly one line for each of the epochs 1..finished, in order: a line
    for a later epoch (written after the checkpoint being resumed) goes, as the run trains that epoch again;
    one missing (the process died between saving the checkpoint and appending its line) comes back from
    `saved`, the records the checkpoint holds. Returns (epochs restored, epochs dropped, epochs still
    missing: a checkpoint of an earlier version holds no records); rewrites the file atomically if needed."""
    present = read_records(path)
    kept = {}
    for record in present:
        if record["epoch"] <= finished:
            kept.setdefault(record["epoch"], record)
    restored = []
    for record in saved or ():
        if not (isinstance(record, dict) and isinstance(record.get("epoch"), int)):
            continue
        if 1 <= record["epoch"] <= finished and record["epoch"] not in kept:
            kept[record["epoch"]] = record
            restored.append(record["epoch"])
    dropped = sorted({record["epoch"] for record in present if record["epoch"] > finished})
    missing = [epoch for epoch in range(1, finished + 1) if epoch not in kept]
    lines = [kept[epoch] for epoch in sorted(kept)]
    if lines != present or (not os.path.exists(path) and lines):
        write_lines_atomic(path, lines)
    return sorted(restored), dropped, missing


def report_repair(path, restored, dropped, missing):
    def epochs(numbers):
        return ", ".join(map(str, numbers))
    if restored:
        print(f"note: {path}: restored the line of epoch {epochs(restored)} from the checkpoint", file=sys.stderr)
    if dropped:
        print(f"note: {path}: dropped the line of epoch {epochs(dropped)}, which the checkpoint had not reached "
              "(the run trains it again)", file=sys.stderr)
    if missing:
        print(f"warning: {path} has no line for epoch {epochs(missing)} and the checkpoint (of an earlier version) "
              "holds no records to restore it from", file=sys.stderr)
