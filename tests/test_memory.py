import math

import pytest
import torch

from lib.memory import MemoryBank


def test_update_is_sequential_ema_then_normalise():
    memory = MemoryBank(4, dim=2, momentum=0.5)
    memory.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]]))
    before = memory.bank.clone()
    view1 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    view2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    memory.write(torch.tensor([0, 3]), view1, view2)
    # row 0: (1,0) -> normalise(.5, .5) = (r, r) -> normalise(.5r + .5, .5r)
    r = 1 / math.sqrt(2)
    row0 = torch.tensor([0.5 * r + 0.5, 0.5 * r])
    row0 = row0 / row0.norm()
    # row 3: (0,-1) -> normalise(.5, -.5) = (r, -r) -> normalise(.5r + .5, -.5r)
    row3 = torch.tensor([0.5 * r + 0.5, -0.5 * r])
    row3 = row3 / row3.norm()
    assert torch.allclose(memory.bank[0], row0, atol=1e-6)
    assert torch.allclose(memory.bank[3], row3, atol=1e-6)
    assert torch.equal(memory.bank[1:3], before[1:3])  # untouched rows stay


def test_bank_is_in_state_dict_and_rows_unit_length():
    memory = MemoryBank(10, dim=8)
    assert "bank" in memory.state_dict()
    assert torch.allclose(memory.bank.norm(dim=1), torch.ones(10), atol=1e-6)


def test_update_outside_autograd():
    memory = MemoryBank(5, dim=3)
    f = torch.randn(2, 3, requires_grad=True)
    memory.write(torch.tensor([1, 2]), f)
    assert not memory.bank.requires_grad


def test_logits_shape_and_value():
    memory = MemoryBank(3, dim=2)
    memory.bank.copy_(torch.eye(3, 2))
    logits = memory.logits(torch.tensor([[0.6, 0.8]]), temperature=0.1)
    assert logits.shape == (1, 3)
    assert logits[0].tolist() == pytest.approx([6.0, 8.0, 0.0])
