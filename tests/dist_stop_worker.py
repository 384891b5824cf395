"""Run by tests under torchrun: train_cld.py as if process 0 caught SIGTERM during step STOP_AFTER (counted
from the start of this run); every process then finishes the next step, saves and exits with 143."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_cld  # noqa: E402
from lib import cli  # noqa: E402
from tests.test_faults import signal_after  # noqa: E402


class Patch:
    setattr = staticmethod(setattr)


if __name__ == "__main__":
    if int(os.environ.get("RANK", 0)) == 0:
        signal_after(Patch, int(os.environ["STOP_AFTER"]))
    cli.run_main(train_cld.main, train_cld.parse_args())
