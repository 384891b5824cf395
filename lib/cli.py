"""What every script does with its command line: one-line errors, ranges of numeric flags, paths
checked before any work starts, and the expected failures of main turned into one line."""
import argparse
import math
import os
import signal
import sys
from dataclasses import dataclass

from lib.checkpoint import CheckpointError
from lib.data import DatasetError
from lib.precision import PrecisionError
from lib.runfolder import FolderBusy


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr, 'error: <message>', exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


@dataclass(frozen=True)
class Range:
    """The values a numeric flag accepts: finite numbers between low and high, either end open or closed."""
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    text: str = ""

    def __contains__(self, value):
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self):
        if self.text:
            return self.text
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0, low_open=True, text="positive")
NON_NEGATIVE = Range(0, text="0 or more")
BELOW_ONE = Range(0, 1, high_open=True)              # momentum-like coefficients: [0, 1)
SEED = Range(0, 2**31 - 1, text="in [0, 2**31 - 1]")  # numpy takes < 2**32, and seed + rank must stay below


def flag(name):
    return "--" + name.replace("_", "-")


def check_ranges(parser, args, ranges):
    """parser.error on the first flag in ranges ({dest: Range}) whose value lies outside; None is skipped."""
    for name, allowed in ranges.items():
        value = getattr(args, name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                finite = "" if math.isfinite(item) else "finite and "
                parser.error(f"{flag(name)} must be {finite}{allowed}, got {item}")


def input_file(parser, name, path, what="a file"):
    """An existing, readable regular file, or parser.error naming the flag."""
    if path is None:
        return
    if not path:
        parser.error(f"{name} is empty; pass {what}")
    if not os.path.exists(path):
        parser.error(f"{name} {path} does not exist; pass {what}")
    if os.path.isdir(path):
        parser.error(f"{name} {path} is a folder; pass {what}")
    if not os.access(path, os.R_OK):
        parser.error(f"{name} {path} is not readable (permissions)")


def input_folder(parser, name, path, what="a folder"):
    """When path exists it must be a readable folder; a missing one is left to the loader, which knows
    what belongs there and where to get it."""
    if path == "":
        parser.error(f"{name} is empty; pass {what}")
    if path is None or not os.path.exists(path):
        return
    if not os.path.isdir(path):
        parser.error(f"{name} {path} is a file; pass {what}")
    if not os.access(path, os.R_OK | os.X_OK):
        parser.error(f"{name} {path} is not readable (permissions)")


def _creatable(parser, name, path):
    """The nearest existing ancestor of path must be a folder this process may write in."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        parser.error(f"{name} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"{name} {path} cannot be created: no permission to write in {parent}")


def output_folder(parser, name, path):
    """A folder that exists and is writable, or that can be created."""
    if not path:
        parser.error(f"{name} is empty; pass a folder (it is created when missing)")
    if os.path.exists(path):
        if not os.path.isdir(path):
            parser.error(f"{name} {path} is a file; pass a folder (it is created when missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            parser.error(f"{name} {path} is not writable (permissions)")
        return
    _creatable(parser, name, path)


def output_file(parser, name, path):
    """A file path that can be written: not a folder, in a folder that exists or can be created."""
    if path is None:
        return
    if not path:
        parser.error(f"{name} is empty; pass the path of the file to write")
    if os.path.isdir(path):
        parser.error(f"{name} {path} is a folder; pass the path of the file to write")
    if os.path.exists(path):
        if not os.access(path, os.W_OK) or not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK | os.X_OK):
            parser.error(f"{name} {path} cannot be replaced (permissions)")
        return
    _creatable(parser, name, path)


def message(error):
    """str(error), but for an exception re-raised from a DataLoader worker, which carries the worker's
    traceback in its text ('Caught X in DataLoader worker process 0.\nOriginal Traceback ...\nmodule.X: msg'),
    only the original message."""
    text = str(error)
    if text.startswith("Caught ") and "\n" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def run_main(main, args, errors=()):
    """main(args); the failures a user can act on (bad dataset, bad checkpoint, a run folder in use, a file
    that cannot be read or written, a precision the GPU lacks, and `errors`) end the process with one line on stderr and exit status 1. Ctrl-C before the
    script has anything to save ends it quietly with 130, as a shell reports a process that SIGINT ended."""
    try:
        return main(args)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    except (DatasetError, CheckpointError, FolderBusy, PrecisionError, *errors) as e:
        sys.exit(f"error: {message(e)}")
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")


def add_trust_checkpoint(parser):
    """--trust-checkpoint of the evaluation scripts: the same words in each."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load a checkpoint that holds more than tensors and plain values (one of an earlier "
                             "version) with full unpickling, which runs any code in it; only for files you trust")


def add_result(parser):
    """--result FILE of the evaluation scripts: the JSON printed, also written to a file (atomically), so a
    chained job (reproduce.py, a cluster task) can tell a finished evaluation by the file's presence."""
    parser.add_argument("--result", default=None, metavar="FILE",
                        help="also write the JSON line(s) printed to FILE, atomically (written only once the "
                             "evaluation has finished)")
