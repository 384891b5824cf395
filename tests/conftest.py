"""One thread per test process, and per script it starts: the suite runs two test processes at once
(pytest -n 2, README), and two threads each would only contend for the two cores of the machine it is sized
for. Results do not depend on it: every comparison in the suite is between runs made alike."""
import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_configure(config):
    """The modules marked xdist_group share module fixtures (trained networks) that one test process builds
    once. pytest 9.2 with pytest-xdist 3.8 silently drops the grouping (pytest-xdist issue #1386) and each
    test process builds them again: the suite would run, much slower."""
    if config.getoption("dist", "no") != "loadgroup":
        return
    import xdist
    if pytest.version_tuple[:2] >= (9, 2) and tuple(map(int, xdist.__version__.split(".")[:2])) <= (3, 8):
        raise pytest.UsageError(f"--dist loadgroup does not group tests on pytest {pytest.__version__} with "
                                f"pytest-xdist {xdist.__version__} (pytest-xdist issue #1386); "
                                "pip install -r requirements.txt")
