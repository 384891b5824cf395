"""The run folder (--out) of train_cld.py: its metrics.jsonl kept consistent with the checkpoint a run
resumes from, whatever the moment a previous process died."""
import json
import os
import sys

from lib import jsonl


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
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.writelines(jsonl.dumps(record) + "\n" for record in records)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
