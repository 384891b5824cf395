"""Non-finite losses and gradients: a bad step changes nothing, a run of them stops the run with the
last good checkpoint intact, and everything written is strict JSON."""
import contextlib
import copy
import json
import math

import pytest
import torch

import train_cld
from lib import cli, jsonl
from lib.checkpoint import CheckpointError
from lib.lars import LARS, param_groups
from lib.memory import MemoryBank
from lib.models import CLDNet
from lib.moco import MomentumEncoder
from tests.common import as_main, pytests_own_signals, states_equal, torchrun

TINY = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "64", "--clusters", "10", "--workers", "0",
        "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0"]
STEPS = 1437 // 64  # steps per epoch of TINY: 22


def strict_json_lines(text):
    """Parse every line with a parser that refuses NaN and Infinity."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]


def state(model, memory, optimizer):
    return copy.deepcopy({"model": model.state_dict(), "memory": memory.state_dict(), "optimizer": optimizer.state_dict()})


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


def setup(tmp_path, moco, scaler_enabled=False):
    torch.manual_seed(0)
    argv = ["--out", str(tmp_path / "unused"), "--dim", "8", "--clusters", "2", "--lam", "1"]
    args = train_cld.parse_args(argv + (["--moco", "--queue", "16"] if moco else []))
    model = CLDNet("resnet20", 1, dim=8, instance_head=args.instance_head, group_head=args.group_head)
    memory = MomentumEncoder(model, queue_size=16, dim=8) if moco else MemoryBank(16, 8)
    cld = train_cld.make_cross_level(args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=scaler_enabled)
    views = [torch.randn(8, 1, 8, 8) for _ in range(3 if moco else 2)]

    def step(i, stop=False):
        return train_step(model, model, memory, cld, views, torch.arange(8), i, optimizer, scaler,
                          contextlib.nullcontext(), stop)
    train_step = train_cld.train_step
    return step, model, memory, optimizer, scaler


@pytest.mark.parametrize("moco", [False, True], ids=["npid", "moco"])
@pytest.mark.parametrize("how", ["nan-loss", "inf-gradient"])
def test_a_bad_step_changes_nothing(moco, how, tmp_path, monkeypatch):
    step, model, memory, optimizer, scaler = setup(tmp_path, moco)
    assert step(0)[1]                       # a good step first: momentum buffers exist, the queue has moved
    before = state(model, memory, optimizer)

    real = memory.loss

    def broken(*a):
        loss, pending = real(*a)
        return (loss * math.nan if how == "nan-loss" else InfiniteGradient.apply(loss)), pending
    monkeypatch.setattr(memory, "loss", broken)
    metrics, applied, stop = step(1)
    assert not applied and not stop
    # weights, BatchNorm statistics, bank or queue + pointer + key encoder, optimizer momentum: all as before
    assert states_equal(state(model, memory, optimizer), before)
    assert all(p.grad is None for p in model.parameters())

    monkeypatch.undo()
    _, applied, _ = step(2)                 # and a good step afterwards does move them
    after = state(model, memory, optimizer)
    assert applied
    assert not states_equal(after["model"], before["model"]) and not states_equal(after["optimizer"], before["optimizer"])
    assert not states_equal(after["memory"], before["memory"])


def test_fp16_scaler_skips_and_lowers_its_scale(tmp_path, monkeypatch):
    step, model, memory, optimizer, scaler = setup(tmp_path, moco=False, scaler_enabled=True)
    step(0)
    before, scale = state(model, memory, optimizer), scaler.get_scale()
    real = memory.loss

    def infinite_gradient(*a):
        loss, pending = real(*a)
        return InfiniteGradient.apply(loss), pending
    monkeypatch.setattr(memory, "loss", infinite_gradient)
    _, applied, _ = step(1)
    assert not applied and states_equal(state(model, memory, optimizer), before)
    assert scaler.get_scale() == scale / 2  # the scaler backs off, as it must to recover


def test_stop_request_travels_with_the_step(tmp_path):
    step, model, *_ = setup(tmp_path, moco=False)
    assert step(0)[1:] == (True, False)
    before = copy.deepcopy(model.state_dict())
    assert step(1, stop=True)[1:] == (True, True)  # the step still happens; the loop then saves and stops
    assert not states_equal(model.state_dict(), before)


# ---------------------------------------------------------------- whole runs

@pytest.fixture
def no_signal_handlers(monkeypatch):
    """main() installs SIGINT/SIGTERM handlers; in-process runs must not leave them in pytest."""
    monkeypatch.setattr(train_cld.signal, "signal", lambda *a: None)


def nan_at(monkeypatch, bad_steps):
    """Make the instance loss NaN at the given global steps (and count the steps seen)."""
    current = {"step": None}
    real_step, real_loss = train_cld.train_step, MemoryBank.loss

    def train_step(*a, **k):
        current["step"] = a[6]
        return real_step(*a, **k)

    def npid_loss(*a):
        loss, pending = real_loss(*a)
        return (loss * math.nan if bad_steps(current["step"]) else loss), pending
    monkeypatch.setattr(train_cld, "train_step", train_step)
    monkeypatch.setattr(MemoryBank, "loss", npid_loss)


def test_skipped_steps_are_counted_and_the_run_goes_on(tmp_path, monkeypatch, no_signal_handlers):
    nan_at(monkeypatch, lambda s: s in (3, 4, STEPS + 7))
    args = train_cld.parse_args([*TINY, "--epochs", "2", "--out", str(tmp_path)])
    train_cld.main(args)
    records = strict_json_lines((tmp_path / "metrics.jsonl").read_text())
    assert [r["skipped_steps"] for r in records] == [2, 1]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert torch.load(tmp_path / "last.pth", weights_only=False)["epoch"] == 2


def stderr_errors(err):
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    return [line for line in lines if "error" in line.lower() or "Traceback" in line]


def test_a_run_of_bad_steps_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys, no_signal_handlers):
    nan_at(monkeypatch, lambda s: s >= STEPS + 5)  # from step 5 of epoch 2 on
    args = train_cld.parse_args([*TINY, "--epochs", "3", "--save-every", "1", "--max-bad-steps", "4",
                                 "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        train_cld.main(args)
    assert stop.value.code == 1
    errors = stderr_errors(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].startswith("error: 4 steps in a row had a non-finite loss")
    assert "epoch 2/3, step 9 of 22" in errors[0] and f"{tmp_path}/last.pth (epoch 1)" in errors[0]
    assert (tmp_path / "last.pth").read_bytes() == (tmp_path / "epoch_1.pth").read_bytes()
    assert not (tmp_path / "epoch_2.pth").exists()
    assert [r["epoch"] for r in strict_json_lines((tmp_path / "metrics.jsonl").read_text())] == [1]


def test_an_epoch_without_a_good_step_writes_null_not_nan(tmp_path, monkeypatch, no_signal_handlers):
    nan_at(monkeypatch, lambda s: s >= STEPS)      # every step of epoch 2
    args = train_cld.parse_args([*TINY, "--epochs", "2", "--max-bad-steps", "100", "--out", str(tmp_path)])
    train_cld.main(args)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text
    second = strict_json_lines(text)[1]
    assert second["skipped_steps"] == STEPS and second["loss"] is None and second["loss_ins"] is None


def test_a_non_finite_state_is_never_saved(tmp_path, monkeypatch, no_signal_handlers):
    """Something the step guard cannot see (here: a weight poisoned after the last step of epoch 2)."""
    real_step = train_cld.train_step

    def train_step(model, raw_model, *a, **k):
        out = real_step(model, raw_model, *a, **k)
        if a[4] == 2 * STEPS - 1:
            with torch.no_grad():
                next(raw_model.parameters()).view(-1)[0] = math.nan
        return out
    monkeypatch.setattr(train_cld, "train_step", train_step)
    args = train_cld.parse_args([*TINY, "--epochs", "3", "--save-every", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        cli.run_main(train_cld.main, args)
    assert stop.value.code.startswith(f"error: not writing {tmp_path}/last.pth: model entry ")
    assert "not finite" in stop.value.code and "\n" not in stop.value.code
    assert (tmp_path / "last.pth").read_bytes() == (tmp_path / "epoch_1.pth").read_bytes()


def test_refuse_non_finite_names_the_entry():
    good = {"model": {"w": torch.ones(2)}, "memory": {"bank": torch.ones(3, 2)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}}
    train_cld.refuse_non_finite(good, "x.pth")
    for part, path in (("memory", ("bank",)), ("optimizer", ("state", 0, "momentum_buffer")), ("model", ("w",))):
        bad = copy.deepcopy(good)
        target = bad[part]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]].view(-1)[-1] = math.inf
        with pytest.raises(CheckpointError, match=f"{part} entry {'.'.join(map(str, path))} is not finite"):
            train_cld.refuse_non_finite(bad, "x.pth")


def test_huge_learning_rate_end_to_end(tmp_path, capsys):
    """--lr 1e5: the first epoch (the recipe's warm-up from lr / 100) stays finite, then everything overflows."""
    out = tmp_path / "run"
    with pytests_own_signals():
        code, stdout, err = as_main(capsys, "train_cld.py", *TINY[:-4], "--lr", "1e5", "--epochs", "3",
                                    "--save-every", "1", "--out", out)
    assert code == 1
    errors = stderr_errors(err)
    assert len(errors) == 1 and errors[0].startswith("error: 20 steps in a row had a non-finite"), err[-2000:]
    assert (out / "last.pth").read_bytes() == (out / "epoch_1.pth").read_bytes()
    records = strict_json_lines((out / "metrics.jsonl").read_text())
    assert [r["epoch"] for r in records] == [1] and math.isfinite(records[0]["loss"])
    printed = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(strict_json_lines("\n".join(printed))) == 1  # epoch 1's line, printed while training: strict JSON too


# ---------------------------------------------------------------- strict JSON

def test_jsonl_writes_null_for_non_finite_numbers(tmp_path):
    import numpy as np
    record = {"a": math.nan, "b": [math.inf, 1.5, -math.inf], "c": (np.float32("nan"), np.float64(2.0)), "d": "NaN",
              "e": 3, "f": None, "g": {"h": -math.inf}}
    line = jsonl.dumps(record)
    assert strict_json_lines(line) == [{"a": None, "b": [None, 1.5, None], "c": [None, 2.0], "d": "NaN", "e": 3,
                                        "f": None, "g": {"h": None}}]
    jsonl.append(tmp_path / "m.jsonl", record)
    jsonl.append(tmp_path / "m.jsonl", {"x": 1})
    assert len(strict_json_lines((tmp_path / "m.jsonl").read_text())) == 2


# ---------------------------------------------------------------- several processes

def test_a_nan_on_one_process_is_skipped_by_all(tmp_path):
    """Only the last of two processes sees a NaN loss (its gradient stays finite): both must skip the step,
    or their weights and banks part ways (or, as the bank update gathers, one waits for the other forever:
    hence the short timeout; the run takes seconds)."""
    out = tmp_path / "run"
    r = torchrun("tests/dist_nan_worker.py", *TINY, "--batch-size", "128", "--epochs", "1", "--out", str(out),
                 env={"NAN_STEPS": "2,3,7"}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert torch.equal(rank0["bank"], rank1["bank"])
    for key in rank0["model"]:
        assert torch.equal(rank0["model"][key], rank1["model"][key]), key
    [record] = strict_json_lines((out / "metrics.jsonl").read_text())
    assert record["skipped_steps"] == 3 and math.isfinite(record["loss"])


OPTIMIZERS = {
    "fused": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, fused=True),
    "plain": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4),
    "lars": lambda m: LARS(param_groups(m, 1e-4), lr=0.1, momentum=0.9, weight_decay=1e-4, eta=0.02),
}


@pytest.mark.parametrize("kind", OPTIMIZERS)
def test_a_skipped_first_step_then_a_good_one_equals_a_fresh_optimizers_first_step(kind):
    """The very first step skipped (momentum buffers do not exist yet): the weights stay, and the next good
    step is exactly a fresh optimizer's first step. Fused SGD would otherwise keep its uninitialised buffers."""
    torch.manual_seed(0)
    skipped, fresh = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    fresh.load_state_dict(skipped.state_dict())
    opt_skipped, opt_fresh = (OPTIMIZERS[kind](m) for m in (skipped, fresh))
    x = torch.randn(5, 4)
    before = copy.deepcopy(skipped.state_dict())
    InfiniteGradient.apply(skipped(x).sum()).backward()
    train_cld.step_unless(opt_skipped, torch.tensor(True))
    opt_skipped.zero_grad(set_to_none=True)
    assert states_equal(skipped.state_dict(), before)
    skipped(x).pow(2).sum().backward()
    train_cld.step_unless(opt_skipped, torch.tensor(False))
    fresh(x).pow(2).sum().backward()
    opt_fresh.step()                                  # torch's own first step, the reference
    assert states_equal(skipped.state_dict(), fresh.state_dict())
    assert states_equal(opt_skipped.state_dict()["state"], opt_fresh.state_dict()["state"])
