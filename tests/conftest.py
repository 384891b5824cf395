"""One thread per test process, and per script it starts: the suite runs two test processes at once
(pytest -n 2, README), and two threads each would only contend for the two cores of the machine it is sized
for. Results do not depend on it: every comparison in the suite is between runs made alike."""
import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
