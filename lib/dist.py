"""torch.distributed plumbing. Works unchanged for `python script.py` (one process, no
process group) and `torchrun` (reads RANK / WORLD_SIZE / LOCAL_RANK from the environment).

A stalled or dead peer ends every other process with one line, on gloo and NCCL alike. The backends
differ here: gloo raises a Python error when a collective times out or a peer's connection closes, while
NCCL's own watchdog aborts the whole process on a timeout (its default error handling) and the host,
which only waits for NCCL at its next read of the GPU, never sees an error. So the waiting is watched
here, by a thread of our own: the code that waits for other processes (a training step, a collective,
a batch of feature extraction) runs inside `guarded`, and a section that lasts longer than the timeout
ends the process with one line naming the process that held it up, from heartbeats every process
publishes in the launcher's rendezvous store. The backend's own timeout is set past ours, so ours
speaks first on both backends.
"""
import contextlib
import datetime
import json
import os
import re
import sys
import threading
import time

import torch
import torch.distributed as dist


class PeerTimeout(Exception):
    """A collective waited longer than the process group's timeout: another process stalled or died."""


def setup(timeout_s=1800):
    """Returns (rank, world_size, device). nccl on GPUs, gloo on CPUs. A section of code that waits more than
    timeout_s seconds for another process ends this one with a line naming it (Watchdog), instead of
    blocking for torch's default (10 min for nccl, 30 for gloo) or NCCL aborting with a stack trace."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        backend_timeout = datetime.timedelta(seconds=timeout_s + max(60.0, timeout_s / 10))  # past the watchdog's
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=backend_timeout,
                                device_id=device if device.type == "cuda" else None,
                                **attempt_store(rank, world_size, backend_timeout))
        Watchdog.start(timeout_s, rank, world_size)
    return rank, world_size, device


def attempt():
    """Which start of the process group this is: torchrun counts its restarts (--max-restarts) from 0."""
    return os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")


def attempt_store(rank, world_size, timeout):
    """init_process_group's store under torchrun: the launcher's rendezvous store, its keys under a prefix of
    their own for each restart. torchrun hands the same store to every start of the workers, and a restarted
    process group read the addresses the previous group left there and could not connect (gloo's 'Connection
    refused', NCCL's alike: pytorch/pytorch#135712, #167288). Anywhere else, the default (env://)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    return {"store": dist.PrefixStore(f"attempt_{attempt()}/", store), "rank": rank, "world_size": world_size}


def cleanup():
    Watchdog.stop()
    if is_distributed():
        dist.destroy_process_group()


# ---------------------------------------------------------------- the watchdog

class Watchdog:
    """A daemon thread that ends this process with one line when a `guarded` section has waited longer than
    timeout_s, and that publishes this process's heartbeat every `interval` seconds: a counter that rises
    while the process runs (a stopped or dead process's stops) and the section it is in.

    The heartbeats live in the rendezvous store that torchrun (or process 0) serves at MASTER_ADDR:MASTER_PORT,
    through a connection of the thread's own with a short timeout. Which process held the others up is
    decided from two readings of every heartbeat, `settle` seconds apart: one whose counter did not rise is
    stopped or dead; otherwise one that is not inside the section the others wait in is busy elsewhere."""

    active = None

    def __init__(self, timeout_s, rank, world):
        self.timeout, self.rank, self.world = timeout_s, rank, world
        self.interval = min(2.0, max(0.2, timeout_s / 10))  # a store write per process every 2 s at most
        self.depth, self.since, self.what, self.beats = 0, None, "", 0
        self.done = threading.Event()
        self.store = heartbeat_store(self.interval)
        self.thread = threading.Thread(target=self.watch, name="peer-watchdog", daemon=True)

    @classmethod
    def start(cls, timeout_s, rank, world):
        cls.active = cls(timeout_s, rank, world)
        cls.active.publish()
        cls.active.thread.start()

    @classmethod
    def stop(cls):
        if cls.active is not None:
            cls.active.done.set()
            cls.active = None

    def enter(self, what):
        if self.depth == 0:
            self.since, self.what = time.monotonic(), what
        self.depth += 1

    def leave(self):
        self.depth -= 1
        if self.depth == 0:
            self.since = None

    def publish(self):
        self.beats += 1
        if self.store is not None:
            try:
                self.store.set(str(self.rank), json.dumps({"beats": self.beats, "waiting": self.since is not None,
                                                           "what": self.what}))
            except Exception:  # the store went away with its host: the report says so
                pass

    def watch(self):
        while not self.done.wait(self.interval):
            self.publish()
            since = self.since
            if since is not None and time.monotonic() - since > self.timeout:
                culprit = self.culprit()
                print(f"error: process {self.rank} waited more than --dist-timeout {self.timeout:g} s for {culprit} "
                      f"while in {self.what}; stopping. Resume from the run's last.pth", file=sys.stderr, flush=True)
                os._exit(1)  # the main thread is blocked inside the backend; nothing else can stop it

    def heartbeats(self):
        """rank -> its last heartbeat (a dict), or None where the store has none or cannot be reached."""
        out = {}
        for r in range(self.world):
            try:
                out[r] = json.loads(self.store.get(str(r))) if self.store is not None else None
            except Exception:
                out[r] = None
        return out

    def culprit(self, settle=None):
        """Words naming the process(es) the others wait for, from two readings of the heartbeats."""
        first = self.heartbeats()
        time.sleep(settle if settle is not None else 2.5 * self.interval)
        second = self.heartbeats()
        others = [r for r in range(self.world) if r != self.rank]
        if all(second[r] is None for r in others):
            return (f"another of the {self.world} processes (their heartbeats cannot be read: the rendezvous "
                    "store at MASTER_ADDR:MASTER_PORT, kept by torchrun or process 0, is gone too)")
        silent = [r for r in others if second[r] is None or (first[r] and first[r]["beats"] == second[r]["beats"])]
        if silent:
            return f"{processes(silent)} (no heartbeat for {2.5 * self.interval:g} s: stopped, swapping, or dead)"
        elsewhere = [r for r in others if not second[r]["waiting"] or second[r]["what"] != self.what]
        if elsewhere:
            r = elsewhere[0]
            doing = f"in {second[r]['what']}" if second[r]["waiting"] else "not in a collective"
            return f"{processes(elsewhere)} (alive but elsewhere: process {r} is {doing})"
        return f"another of the {self.world} processes (all alive and waiting: a collective out of step)"


def processes(ranks):
    return ("process " if len(ranks) == 1 else "processes ") + ", ".join(map(str, ranks))


def heartbeat_store(timeout_s):
    """A connection of its own to the rendezvous store (keys under 'attempt_N/heartbeat/'), or None when there is
    none (a process group started some other way)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port:
        return None
    try:
        store = dist.TCPStore(host, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False)
    except Exception:
        return None
    return dist.PrefixStore(f"attempt_{attempt()}/heartbeat/", store)


@contextlib.contextmanager
def guarded(what):
    """Code that waits for the other processes (`what` names it in the watchdog's line). Sections nest; the
    outermost one is timed."""
    watchdog = Watchdog.active
    if watchdog is None:
        yield
        return
    watchdog.enter(what)
    try:
        yield
    finally:
        watchdog.leave()


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def world_size():
    return dist.get_world_size() if is_distributed() else 1


def rank():
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def all_gather(x):
    """[B, ...] on every rank -> [world * B, ...] in rank order, no gradient. B must match across ranks."""
    if not is_distributed():
        return x
    # Plain row-major buffers on both sides: a collective copies bytes, and a channels-last x would otherwise
    # be sent in one layout and read back in another.
    out = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
    with guarded("a collective"):
        dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_gather_uneven(x):
    """Like all_gather, for ranks holding different numbers of rows."""
    if not is_distributed():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    with guarded("a collective"):  # the read of the sizes waits for the gather, on NCCL too
        sizes = all_gather(n).tolist()
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    chunks = all_gather(padded).split(max(sizes))
    return torch.cat([c[:s] for c, s in zip(chunks, sizes)])


def all_reduce_sum(x):
    if is_distributed():
        with guarded("a collective"):
            dist.all_reduce(x)
    return x


def gather_objects(obj):
    """A picklable object from every rank -> list in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    with guarded("a collective"):
        dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_buffers(module):
    """Average floating-point buffers (BatchNorm running statistics) over processes.
    DDP keeps each process's running statistics local; averaging them before evaluating or saving
    means every process holds the same model, and the estimate uses every process's batches."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            with guarded("a collective"):
                dist.all_reduce(buffer)
            buffer /= world_size()


def all_gather_with_grad(x):
    """[B, ...] -> [world * B, ...] where this process's own rows keep their autograd history and the
    others' are constants. Backpropagating a loss over the gathered batch then gives each process the
    exact gradient with respect to its own rows."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
    with guarded("a collective"):
        dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


@contextlib.contextmanager
def peers_answer(timeout_s):
    """The backend's own errors about another process become PeerTimeout, one line naming it: a collective
    that timed out (gloo's timeout, past the watchdog's, when the watchdog could not act) or a peer whose
    connection closed (it died: gloo raises at once). The heartbeats name the process when they can; else
    gloo's text, which names a rank or an address."""
    try:
        yield
    except RuntimeError as e:  # gloo raises a plain RuntimeError, nccl a DistBackendError (a RuntimeError)
        text = " ".join(str(e).split())
        timed_out = re.search(r"[Tt]imed out|[Tt]imeout", text)
        closed = re.search(r"[Cc]onnection (closed|reset)|[Bb]roken pipe|remote process exited|peer", text)
        if not is_distributed() or not (timed_out or closed):
            raise
        watchdog = Watchdog.active
        found = re.search(r"\b(?:rank|Rank)[ :=]+(\d+)", text)
        if watchdog is not None and watchdog.store is not None:
            who = watchdog.culprit()
        elif found:
            who = f"process {found.group(1)}"
        else:
            who = f"process {1 - rank()}" if world_size() == 2 else f"another of the {world_size()} processes"
        if timed_out:
            raise PeerTimeout(f"process {rank()} waited more than --dist-timeout {timeout_s:g} s for {who}; "
                              f"stopping. Resume from the run's last.pth") from None
        said = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)[:160]  # without the backend's source path
        raise PeerTimeout(f"process {rank()} lost its connection to {who}: it ended or its machine did "
                          f"({said}); stopping. Resume from the run's last.pth") from None
