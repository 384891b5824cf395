"""torch.distributed plumbing. Works unchanged for `python script.py` (one process, no
process group) and `torchrun` (reads RANK / WORLD_SIZE / LOCAL_RANK from the environment)."""
import contextlib
import datetime
import os
import re

import torch
import torch.distributed as dist


class PeerTimeout(Exception):
    """A collective waited longer than the process group's timeout: another process stalled or died."""


def setup(timeout_s=1800):
    """Returns (rank, world_size, device). nccl on GPUs, gloo on CPUs. A collective that waits more than
    timeout_s seconds for another process fails instead of blocking (torch's default: 10 min for nccl, 30 for
    gloo)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return rank, world_size, device


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


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
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_gather_uneven(x):
    """Like all_gather, for ranks holding different numbers of rows."""
    if not is_distributed():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = all_gather(n).tolist()
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    chunks = all_gather(padded).split(max(sizes))
    return torch.cat([c[:s] for c, s in zip(chunks, sizes)])


def all_reduce_sum(x):
    if is_distributed():
        dist.all_reduce(x)
    return x


def gather_objects(obj):
    """A picklable object from every rank -> list in rank order (on every rank)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
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
            dist.all_reduce(buffer)
            buffer /= world_size()


def all_gather_with_grad(x):
    """[B, ...] -> [world * B, ...] where this process's own rows keep their autograd history and the
    others' are constants. Backpropagating a loss over the gathered batch then gives each process the
    exact gradient with respect to its own rows."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts)


@contextlib.contextmanager
def peers_answer(timeout_s):
    """A collective that timed out becomes PeerTimeout, one line saying which process stopped answering when
    the backend names it (gloo names the peer's address or rank), else that one of the others did."""
    try:
        yield
    except RuntimeError as e:  # gloo raises a plain RuntimeError, nccl a DistBackendError (a RuntimeError)
        text = " ".join(str(e).split())
        if not is_distributed() or not re.search(r"[Tt]imed out|[Tt]imeout", text):
            raise
        found = re.search(r"\b(?:rank|Rank)[ :=]+(\d+)", text)
        who = (f"process {found.group(1)}" if found else f"process {1 - rank()}" if world_size() == 2
               else f"another of the {world_size()} processes")
        raise PeerTimeout(f"process {rank()} waited more than --dist-timeout {timeout_s:g} s for {who} "
                          f"(stalled: stopped, swapping or hung on I/O; or dead); stopping. Resume from the run's "
                          "last.pth") from None
