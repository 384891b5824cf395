"""Run by tests under torchrun --max-restarts: train_cld.py, where process 1 of the first attempt is SIGKILLed
(as the kernel's out-of-memory killer would) when it is about to take step KILL_AT, counted from the start of
the run. The restarted attempt trains untouched. The rest is train_cld.py's own __main__."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_cld  # noqa: E402
from lib import cli, dist  # noqa: E402


class KilledAt(train_cld.StopSignal):
    asked = 0

    def __bool__(self):  # asked once per step
        KilledAt.asked += 1
        if KilledAt.asked == int(os.environ["KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__bool__()


if __name__ == "__main__":
    if os.environ["RANK"] == "1" and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        train_cld.StopSignal = KilledAt
    cli.run_main(train_cld.main_answering_for_peers, train_cld.parse_args(), errors=(dist.PeerTimeout,))
