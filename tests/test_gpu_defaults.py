"""The GPU's defaults, end to end on the CPU: bf16 autocast (and fp16 with the gradient scaler) and the host
reading the device every 20 steps, in training with its kNN monitor, in a resume, and in every evaluation
script. BYOL and C2BIN run so in tests/test_byol.py, MoCo under torchrun in tests/test_distributed.py.

On a CPU without AMX or AVX512-BF16 torch emulates bf16, several times slower than fp32: the runs here are a
few steps each."""
import json
import math

import pytest
import torch

import eval_clusters
import eval_features
import eval_knn
import eval_linear
from tests.common import digits_subset, evaluate, refuse_non_json, states_equal, train
from tests.fixtures import write_imagefolder

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_gpu_defaults")

GPU = ["--precision", "bf16", "--sync-every", "20"]
DIGITS = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "128", "--clusters", "10", "--workers", "0",
          "--lr", "0.05", "--warmup-epochs", "0", "--knn-every", "1"]


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def subset(tmp_path_factory):
    """26 digits per class: two steps of 128 per epoch."""
    return digits_subset(tmp_path_factory.mktemp("subset") / "digits_260.json", 26)


def records(out):
    """metrics.jsonl, parsed strictly (a NaN would be refused), every number finite."""
    lines = [json.loads(line, parse_constant=refuse_non_json) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in lines:
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
    return lines


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def bf16_run(tmp_path_factory, subset):
    """Two epochs of NPID+CLD under the GPU's defaults, epoch_1.pth kept."""
    out = tmp_path_factory.mktemp("bf16")
    train(*DIGITS, *GPU, "--subset", subset, "--epochs", 2, "--save-every", 1, "--out", out)
    return out


def test_npid_trains_under_the_gpu_defaults_and_resumes_bit_exactly(bf16_run, subset, tmp_path):
    config = json.loads((bf16_run / "config.json").read_text())
    assert config["precision"] == "bf16" and config["sync_every"] == 20
    logged = records(bf16_run)
    assert [r["epoch"] for r in logged] == [1, 2] and all(r["skipped_steps"] == 0 for r in logged)
    assert all(0 < r["knn_top1"] <= 100 for r in logged)
    train(*DIGITS, *GPU, "--subset", subset, "--epochs", 2, "--resume", bf16_run / "epoch_1.pth", "--out", tmp_path)
    a, b = (torch.load(run / "last.pth", weights_only=True) for run in (bf16_run, tmp_path))
    for key in ("model", "memory", "optimizer", "epoch", "step"):
        assert states_equal(a[key], b[key]), key
    assert records(tmp_path)[-1]["loss"] == logged[-1]["loss"]


def test_npid_trains_in_fp16_with_the_gradient_scaler(subset, tmp_path):
    train(*DIGITS, "--precision", "fp16", "--sync-every", "20", "--subset", subset, "--epochs", 1, "--out", tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["precision"] == "fp16"
    assert 0 < records(tmp_path)[0]["knn_top1"] <= 100
    scaler = torch.load(tmp_path / "last.pth", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0   # a live scaler was saved


def test_infomin_trains_under_the_gpu_defaults(tmp_path):
    """InfoMin's crops and jigsaw tiles come from the loader (an image folder of 16 px images). On CPUs where
    oneDNN takes its AVX-512 / AMX bf16 path, a convolution of 1x1 inputs at stride 2 has been seen to give NaN
    weight gradients (a torch bug, neither ours nor CUDA's): such a step is skipped, as any non-finite step is."""
    root = write_imagefolder(tmp_path / "data", classes=3, n_per_class=16, size=16)
    train("--infomin", "--dataset", "imagefolder", "--data", root, "--image-size", "16", "--arch", "resnet20",
          "--epochs", "1", "--batch-size", "16", "--clusters", "4", "--queue", "64", "--workers", "0",
          "--knn-every", "1", *GPU, "--out", tmp_path / "run")
    (record,) = records(tmp_path / "run")
    steps = 48 // 16
    assert record["skipped_steps"] < steps and 0 <= record["knn_top1"] <= 100
    assert record["loss_ins"] == pytest.approx(0.5 * record["loss_query"] + 0.5 * record["loss_jigsaw"], rel=1e-4)


def test_every_evaluation_script_runs_in_bf16(bf16_run, capsys):
    ckpt = bf16_run / "last.pth"
    bf16 = ["--precision", "bf16", "--workers", "0"]
    knn = evaluate(eval_knn, "--ckpt", ckpt, *bf16, capsys=capsys)
    assert knn["precision"] == "bf16" and 0 < knn["top1"] <= 100
    # the float32 kNN scores of bf16 features: within a point of the fp32 monitor's on the same network
    assert knn["top1"] == pytest.approx(records(bf16_run)[-1]["knn_top1"], abs=1.0)
    linear = evaluate(eval_linear, "--ckpt", ckpt, "--cached-features", "--epochs", "3", *bf16, capsys=capsys)
    assert linear["precision"] == "bf16" and 0 < linear["top1"] <= 100
    clusters = evaluate(eval_clusters, "--ckpt", ckpt, "--restarts", "1", "--kmeans-iters", "5", *bf16, capsys=capsys)
    assert clusters["precision"] == "bf16" and 0 <= clusters["kmeans"]["nmi"] <= 100
    features = evaluate(eval_features, "--ckpt", ckpt, "--selection-images", "64", "--restarts", "1",
                        "--kmeans-iters", "5", *bf16, capsys=capsys)
    assert features["precision"] == "bf16" and 0 <= features["features"]["f_I"]["nmi"] <= 100
    assert 0 <= features["selection"]["f_I"]["score"] <= 1
