"""Stop signals (SIGINT, SIGTERM) and DataLoader worker processes.

A preempted job gets SIGTERM on its whole process group, loader workers included; Ctrl-C sends SIGINT to
the group too. A worker that dies of it makes the main process fail with 'DataLoader worker ... is killed
by signal' before it can save. So workers ignore both and the main process alone decides: it finishes the
step, saves and shuts the workers down. Workers are started with both signals blocked, so that one arriving
between the fork and ignore_stop_signals is discarded instead of killing the worker.
"""
import atexit
import contextlib
import multiprocessing.util  # noqa: F401 (its exit hook joins daemonic children; ours, registered later, runs first)
import signal
import weakref

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_started = weakref.WeakSet()  # iterators whose workers ignore SIGTERM


def ignore_stop_signals(worker_id=None):
    """worker_init_fn of every DataLoader: ignore SIGINT and SIGTERM (a pending one is discarded)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def blocked():
    """SIGINT and SIGTERM held back in this thread (and inherited by the processes and threads it starts);
    one that arrives meanwhile is delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_workers(loader):
    """iter(loader), its worker processes started with the stop signals blocked until they ignore them."""
    with blocked():
        batches = iter(loader)
    _started.add(batches)
    return batches


def end_workers(batches):
    """Shut an iterator's workers down as the iterator does when it is used up (which also stops DataLoader
    watching them), then kill any left: they ignore the SIGTERM DataLoader would end them with."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(batches, "_workers", []):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


@atexit.register
def _end_workers():
    """When the process exits while an iterator is still alive (an exception left the loop), its workers
    are still running; multiprocessing would SIGTERM them, which they ignore, and wait forever."""
    for batches in list(_started):
        end_workers(batches)
