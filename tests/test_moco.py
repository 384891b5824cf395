"""MoCo's partner pieces, one at a time, then inside a training step."""
import contextlib
import copy

import torch
import torch.nn.functional as F

from lib.models import CLDNet
from lib.moco import MomentumEncoder, shuffle_across_processes, unshuffle_across_processes
from lib.losses import infonce_loss
from train_cld import make_cross_level, parse_args, train_step


def test_queue_is_fifo_and_wraps_around():
    memory = MomentumEncoder(torch.nn.Linear(2, 2), queue_size=5, dim=2)
    batches = [torch.full((3, 2), float(i)) for i in (1, 2, 3)]
    memory.enqueue(batches[0])
    assert memory.ptr.item() == 3 and memory.queue[:3].eq(1).all()
    memory.enqueue(batches[1])        # slots 3, 4, then wraps to 0
    assert memory.ptr.item() == 1
    assert memory.queue[[3, 4, 0], 0].tolist() == [2, 2, 2] and memory.queue[[1, 2], 0].tolist() == [1, 1]
    memory.enqueue(batches[2])        # slots 1, 2, 3: the oldest keys are replaced first
    assert memory.ptr.item() == 4
    assert memory.queue[:, 0].tolist() == [2, 3, 3, 3, 2]


def test_key_encoder_is_an_ema_of_the_online_network():
    online = torch.nn.Linear(3, 2)
    memory = MomentumEncoder(online, queue_size=4, dim=2, momentum=0.9)
    before = copy.deepcopy(memory.encoder.state_dict())
    with torch.no_grad():
        online.weight.add_(1.0)
    memory.update(online, torch.zeros(1, 2))
    expected = 0.9 * before["weight"] + 0.1 * online.weight
    assert torch.allclose(memory.encoder.weight, expected)
    assert not memory.encoder.weight.requires_grad


def test_loss_puts_the_positive_first():
    memory = MomentumEncoder(torch.nn.Identity(), queue_size=2, dim=2)
    memory.queue.copy_(torch.tensor([[0.0, 1.0], [-1.0, 0.0]]))
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    logits = torch.tensor([[0.6, 0.0, -1.0]]) / 0.5   # [q.k, q.queue_0, q.queue_1] / T
    assert torch.allclose(infonce_loss(q, k, memory.queue, 0.5), F.cross_entropy(logits, torch.tensor([0])))


def test_single_process_shuffle_is_identity():
    x = torch.randn(4, 3)
    shuffled, order = shuffle_across_processes(x)
    assert order is None and torch.equal(unshuffle_across_processes(shuffled, order), x)


def test_step_uses_the_old_queue_and_enqueues_after():
    torch.manual_seed(0)
    args = parse_args(["--moco", "--out", "unused", "--dim", "8", "--queue", "16", "--clusters", "2", "--lam", "1"])
    model = CLDNet("resnet20", 1, dim=8, instance_head="normlinear", group_head="normlinear")
    memory = MomentumEncoder(model, queue_size=16, dim=8, temperature=args.ins_t)
    views = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    # what the step must compute: both queries against the queue as it was before the step
    model_before, memory_before = copy.deepcopy(model), copy.deepcopy(memory)
    (f1, _), (f2, _) = model_before(views[0], views[1])
    keys = memory_before.keys(views[2])
    expected = (infonce_loss(f1, keys, memory_before.queue, args.ins_t)
                + infonce_loss(f2, keys, memory_before.queue, args.ins_t)) / 2

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    metrics, applied, _ = train_step(model, model, memory, make_cross_level(args), views, torch.arange(4), 0, optimizer,
                                     scaler, contextlib.nullcontext())
    assert applied
    assert torch.allclose(metrics[1], expected, atol=1e-6)
    assert memory.ptr.item() == 4
    assert torch.allclose(memory.queue[:4], keys, atol=1e-6)            # this step's keys, enqueued last
    assert torch.equal(memory.queue[4:], memory_before.queue[4:])
    moved = [not torch.equal(a, b) for a, b in zip(memory.encoder.parameters(), memory_before.encoder.parameters())]
    assert any(moved)                                                    # the key encoder followed the step
