"""What the GPU does by default, run on the CPU: mixed precision and what must stay float32 inside it, the
precision a GPU without bf16 gets, checkpoints read to the CPU whatever the training device, a step that never
waits for the device, gradient accumulation, and the watchdog's account of a stalled peer."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import train_cld
from lib import analysis, precision, rng
from lib.c2bin import c2bin_terms
from lib.cluster import _draw, grouping, kmeans
from lib.dist import Watchdog
from lib.knn import knn_scores
from lib.losses import cld_terms
from lib.models import NetworkSpec
from lib.partners import PARTNERS
from tests.test_batch_augment import OpLog

BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


# ---------------------------------------------------------------------------------------------- precision

def test_auto_precision_per_device():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert precision.resolve("auto", cpu)[0] == "fp32"
    assert precision.resolve("auto", gpu, bf16_ok=True)[0] == "bf16"
    used, why = precision.resolve("auto", gpu, bf16_ok=False)  # a V100
    assert used == "fp16" and "V100" in why and "scaler" in why
    assert precision.resolve("fp16", gpu, bf16_ok=False)[0] == "fp16"
    assert precision.resolve("bf16", cpu)[0] == "bf16"
    with pytest.raises(precision.PrecisionError, match="--precision bf16: this GPU has no bf16"):
        precision.resolve("bf16", gpu, bf16_ok=False)


def test_a_gpu_without_bf16(monkeypatch, capsys, tmp_path):
    """On a V100 auto becomes fp16 with the scaler, said in the run's config; bf16 asked for is one line."""
    monkeypatch.setattr(train_cld, "training_device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    args = train_cld.parse_args(["--out", str(tmp_path / "run")])
    config = train_cld.resolved_config(args, 1)
    assert config["precision"] == "fp16" and "gradient scaler" in config["precision_reason"]
    with pytest.raises(SystemExit) as stop:
        train_cld.parse_args(["--precision", "bf16", "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --precision bf16: this GPU has no bf16")


def test_fp16_gets_the_gradient_scaler_and_bf16_does_not(tmp_path):
    for asked, scaled, dtype in (("fp16", True, torch.float16), ("bf16", False, torch.bfloat16), ("fp32", False, None)):
        args = train_cld.parse_args(["--dataset", "digits", "--arch", "resnet20", "--precision", asked,
                                     "--out", str(tmp_path / "run")])
        spec = NetworkSpec.from_config(vars(args), 1)
        _, _, _, scaler, autocast = train_cld.make_network(args, spec, PARTNERS["npid"], 16, 1, torch.device("cpu"))
        assert scaler.is_enabled() == scaled
        with autocast:
            assert (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None) == dtype


# ---------------------------------------------------------------------------------------------- float32 inside autocast

def test_kmeans_groups_in_float32_inside_autocast():
    """Two views of 128 features in a narrow cone (as a network's are early in training, where cosines differ in
    the third decimal), K = 32: in bf16 autocast the assignments would move; kmeans keeps them float32's."""
    g = torch.Generator().manual_seed(0)
    x = F.normalize(1 + 0.5 * torch.randn(2, 128, 128, generator=g), dim=-1).bfloat16()  # a bf16 f_G
    expected, _ = kmeans(x.float(), 32)
    with BF16:
        labels, centroids = kmeans(x, 32)
        unguarded, _ = kmeans.__wrapped__(x, 32)  # the same code with autocast left on
    assert torch.equal(labels, expected) and centroids.dtype == torch.float32
    assert (unguarded != expected).float().mean() > 0.03  # what autocast would have done


def test_spectral_and_cld_terms_in_float32_inside_autocast():
    g1, g2 = unit(64, 16, 1), unit(64, 16, 2)
    group = grouping(8, "spectral")
    torch.manual_seed(0)
    loss, accuracy = cld_terms(g1, g2, group, 0.2)
    torch.manual_seed(0)
    with BF16:
        loss_bf, accuracy_bf = cld_terms(g1, g2, group, 0.2)
    assert loss_bf.dtype == torch.float32 and torch.equal(loss, loss_bf) and torch.equal(accuracy, accuracy_bf)


def test_c2bin_terms_in_float32_inside_autocast_and_gradients_reach_bf16_inputs():
    l1 = torch.randn(32, 30, generator=torch.Generator().manual_seed(3)).bfloat16().requires_grad_()
    l2 = torch.randn(32, 30, generator=torch.Generator().manual_seed(4)).bfloat16().requires_grad_()
    plain = c2bin_terms(l1.float(), l2.float(), [10, 20], 1.0)
    with BF16:
        loss, agreement, terms = c2bin_terms(l1, l2, [10, 20], 1.0)
    assert loss.dtype == torch.float32 and torch.equal(loss, plain[0]) and torch.equal(terms, plain[2])
    assert torch.allclose(terms.sum(), loss)
    loss.backward()
    assert l1.grad is not None and l1.grad.dtype == torch.bfloat16 and torch.isfinite(l1.grad.float()).all()


def test_knn_and_analysis_measures_in_float32_inside_autocast():
    bank, test = unit(2000, 64, 5), unit(300, 64, 6)
    labels = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(7))
    expected = knn_scores(test, bank, labels, 10, k=200, sigma=0.1)
    with BF16:
        assert torch.equal(knn_scores(test, bank, labels, 10, k=200, sigma=0.1), expected)
        _, nearest = analysis.nearest(test, bank, 5)
        retrieval = analysis.cross_view_retrieval(test, test + 1e-3)
        clusters = analysis.kmeans_labels(test, 10, restarts=2, iters=10)
    assert torch.equal(nearest, analysis.nearest(test, bank, 5)[1])
    assert retrieval == analysis.cross_view_retrieval(test, test + 1e-3)
    assert torch.equal(clusters, analysis.kmeans_labels(test, 10, restarts=2, iters=10))


def test_kmeanspp_draw_is_torch_multinomials_own_draw():
    """_draw replaces torch.multinomial(w, 1), which reads its input on the host; same numbers, same state."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        w = torch.rand(4, 50, generator=g) * (torch.rand(4, 50, generator=g) > 0.3)
        torch.manual_seed(trial)
        expected = torch.multinomial(w, 1).squeeze(1)
        torch.manual_seed(trial)
        assert torch.equal(_draw(w), expected)
    w = torch.tensor([[1.0, 0.0, 3.0, 0.0]])
    torch.manual_seed(0)
    counts = torch.bincount(torch.cat([_draw(w) for _ in range(4000)]), minlength=4).float()
    assert counts[1] == counts[3] == 0 and abs(counts[2] / 4000 - 0.75) < 0.03


# ---------------------------------------------------------------------------------------------- no host sync

def partner_step(partner, extra=()):
    """One train_step's callable for a small network of `partner`, on the CPU."""
    flags = {"npid": [], "moco": ["--moco", "--queue", "32"], "byol": ["--byol", "--byol-hidden", "32"],
             "c2bin": ["--c2bin", "--byol-hidden", "32"], "infomin": ["--infomin", "--queue", "32"]}[partner]
    args = train_cld.parse_args(["--dataset", "digits", "--arch", "resnet20", "--clusters", "4", "--dim", "8",
                                 "--out", "unused", *flags, *extra])
    spec = NetworkSpec.from_config(vars(args), 1)
    model, memory, optimizer, scaler, autocast = train_cld.make_network(args, spec, PARTNERS[args.partner], 16, 1,
                                                                         torch.device("cpu"))
    cld = train_cld.make_cross_level(args)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 1, 8, 8, generator=g) for _ in range(PARTNERS[args.partner].views)]
    if partner == "infomin":
        views.append(torch.randn(8, 9, 1, 4, 4, generator=g))  # the jigsaw tiles
    indices = torch.arange(8)
    return lambda step: train_cld.train_step(model, model, memory, cld, views, indices, step, optimizer, scaler,
                                             autocast, False, args.accumulate), (model, memory)


# Functions that make a tensor: without device= they make it on the CPU, which on a GPU means a copy to it.
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.eye, torch.tensor, torch.rand,
             torch.randn, torch.randint, torch.randperm, torch.linspace, torch.as_tensor}


class FactoryLog(TorchFunctionMode):
    """Records the tensor-making calls given no device."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in FACTORIES and (kwargs or {}).get("device") is None:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("partner", ["npid", "moco", "byol", "c2bin", "infomin"])
def test_a_step_never_reads_the_device_nor_builds_a_tensor_on_the_host(partner):
    """On a GPU either would stall the step until the device caught up: a host read (.item(), nonzero, a mask
    index) waits for it, and a tensor made on the CPU must be copied to it. The first call may place constants
    (a recipe's mean and std); from the second on, neither happens."""
    step, _ = partner_step(partner)
    step(0)
    with OpLog() as log, FactoryLog() as made:
        step(1)
    assert not log.ops & {"aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.item",
                          "aten.masked_select", "aten.lift_fresh"}, log.ops
    assert not made.calls, made.calls


def test_the_host_checks_see_what_they_look_for():
    with OpLog() as log, FactoryLog() as made:
        torch.ones(3).sum().item()
        torch.arange(3, device="cpu")
    assert "aten._local_scalar_dense" in log.ops and made.calls == ["ones"]


# ---------------------------------------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("partner", ["npid", "moco"])
def test_accumulated_micro_batches_make_the_whole_batchs_step(partner):
    """With BatchNorm on its running statistics and lambda 0 every image's loss is its own, so two micro-batches
    of 4 must give the step one batch of 8 gives: the same weights, and the partner updated once, after it, with
    both micro-batches' rows and keys."""
    results = []
    for accumulate in ("1", "2"):
        torch.manual_seed(0)
        step, (model, memory) = partner_step(partner, ["--lam", "0", "--accumulate", accumulate])
        model.eval(), memory.eval()
        metrics, applied, _ = step(0)
        assert applied
        results.append((metrics, {k: v.clone() for k, v in model.state_dict().items()},
                        {k: v.clone() for k, v in memory.state_dict().items()}))
    (m1, w1, p1), (m2, w2, p2) = results
    assert torch.allclose(m1, m2, atol=1e-5)
    for key in w1:
        assert torch.allclose(w1[key], w2[key], atol=1e-6), key
    for key in p1:
        assert torch.allclose(p1[key].float(), p2[key].float(), atol=1e-6), key
    if partner == "moco":
        assert p2["ptr"] == 8  # every key enqueued once


def test_accumulate_must_split_the_batch(tmp_path):
    args = train_cld.parse_args(["--dataset", "digits", "--batch-size", "100", "--accumulate", "3",
                                 "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit, match="do not split into --accumulate 3"):
        train_cld.check_run(args, 1)


# ---------------------------------------------------------------------------------------------- resume on a GPU

def test_resume_reads_to_the_cpu_and_keeps_nothing_of_the_file(tmp_path):
    """A checkpoint resumed for a non-CPU device (meta stands in for cuda:N): the RNG states stay CPU tensors that
    torch.set_rng_state takes, and what is kept of the file is the position only, not its modules' tensors."""
    args = train_cld.parse_args(["--dataset", "digits", "--arch", "resnet20", "--epochs", "1", "--batch-size", "256",
                                 "--clusters", "4", "--workers", "0", "--knn-every", "0", "--out", str(tmp_path / "a")])
    model, partner = train_cld.main(args)
    args = train_cld.parse_args(["--dataset", "digits", "--arch", "resnet20", "--epochs", "2", "--batch-size", "256",
                                 "--clusters", "4", "--workers", "0", "--knn-every", "0",
                                 "--resume", str(tmp_path / "a" / "last.pth"), "--out", str(tmp_path / "b")])
    spec = NetworkSpec.from_config(vars(args), 1)
    model, partner, optimizer, scaler, _ = train_cld.make_network(args, spec, PARTNERS["npid"], 1437, 1,
                                                                  torch.device("cpu"))
    resumed = train_cld.load_resume(args, spec, model, partner, optimizer, scaler, 1, 1437, 4)
    assert set(resumed) <= set(train_cld.POSITION) and resumed["epoch"] == 1
    states = resumed["rng"][0]
    assert states["torch"].device.type == "cpu" and states["numpy"]["key"].device.type == "cpu"
    meta = torch.device("meta")
    progress = train_cld.Progress.start(resumed, meta, 4)
    assert progress.sums.device == meta and progress.epoch == 1
    train_cld.seed_processes(args, 0, 1, resumed)  # torch.set_rng_state and numpy take them
    assert torch.equal(torch.get_rng_state(), states["torch"])
    with pytest.raises((TypeError, RuntimeError, NotImplementedError)):  # what mapping the file to the device did
        rng.restore({**states, "torch": states["torch"].to(meta)})


# ---------------------------------------------------------------------------------------------- the watchdog

class FakeStore:
    """The heartbeats of the other processes, as a rendezvous store would hand them out, changing between reads."""

    def __init__(self, readings):
        self.readings, self.reads = readings, 0

    def get(self, key):
        reading = self.readings[min(self.reads // 3, len(self.readings) - 1)]
        self.reads += 1
        if reading[int(key)] is None:
            raise RuntimeError("no key")
        return json.dumps(reading[int(key)]).encode()


def beat(beats, waiting=True, what="a training step"):
    return {"beats": beats, "waiting": waiting, "what": what}


@pytest.mark.parametrize("readings,named", [
    ([[beat(5), beat(9), beat(3)], [beat(6), beat(9), beat(4)]], "process 1 (no heartbeat"),        # 1 stopped
    ([[beat(5), beat(9), beat(3)], [beat(6), beat(10, False), beat(4)]], "process 1 (alive but elsewhere"),
    ([[beat(5), None, beat(3)], [beat(6), None, beat(4)]], "process 1 (no heartbeat"),             # 1 never came
    ([[beat(5), beat(9), beat(3)], [beat(6), beat(10), beat(4)]], "all alive and waiting"),
])
def test_the_watchdog_names_the_process_that_holds_the_others_up(readings, named):
    watchdog = Watchdog.__new__(Watchdog)
    watchdog.rank, watchdog.world, watchdog.interval, watchdog.what = 0, 3, 1.0, "a training step"
    watchdog.store = FakeStore(readings)
    assert named in watchdog.culprit(settle=0)
