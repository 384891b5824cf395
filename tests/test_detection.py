"""convert_detectron2.py and detection/: a train_cld.py checkpoint of a ResNet-50 becomes detectron2's R50-C4
weights under detectron2's own names, the printed commands name the VOC configs, the configs hold MoCo's
settings, and what cannot convert is refused in one line. detectron2 itself is not installed here."""
import importlib.util
import os
import pickle
import shlex
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
import yaml

import convert_detectron2
import eval_linear
from lib import checkpoint, cli
from lib.models import NetworkSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "detection", "configs")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}

# detectron2's ResNet-50 as a C4 detector holds it (detectron2/modeling/backbone/resnet.py: BasicStem and
# BottleneckBlock; res5 sits in the ROI head, Res5ROIHeads): every convolution with the shape of its weight
# [out, in, kh, kw]. detectron2's Conv2d carries its BatchNorm as the submodule "norm", so each row stands for
# the five keys NAME.weight and NAME.norm.{weight, bias, running_mean, running_var}.
DETECTRON2_R50_CONVS = """
stem.conv1      64 3 7 7
res2.0.conv1    64 64 1 1
res2.0.conv2    64 64 3 3
res2.0.conv3    256 64 1 1
res2.0.shortcut 256 64 1 1
res2.1.conv1    64 256 1 1
res2.1.conv2    64 64 3 3
res2.1.conv3    256 64 1 1
res2.2.conv1    64 256 1 1
res2.2.conv2    64 64 3 3
res2.2.conv3    256 64 1 1
res3.0.conv1    128 256 1 1
res3.0.conv2    128 128 3 3
res3.0.conv3    512 128 1 1
res3.0.shortcut 512 256 1 1
res3.1.conv1    128 512 1 1
res3.1.conv2    128 128 3 3
res3.1.conv3    512 128 1 1
res3.2.conv1    128 512 1 1
res3.2.conv2    128 128 3 3
res3.2.conv3    512 128 1 1
res3.3.conv1    128 512 1 1
res3.3.conv2    128 128 3 3
res3.3.conv3    512 128 1 1
res4.0.conv1    256 512 1 1
res4.0.conv2    256 256 3 3
res4.0.conv3    1024 256 1 1
res4.0.shortcut 1024 512 1 1
res4.1.conv1    256 1024 1 1
res4.1.conv2    256 256 3 3
res4.1.conv3    1024 256 1 1
res4.2.conv1    256 1024 1 1
res4.2.conv2    256 256 3 3
res4.2.conv3    1024 256 1 1
res4.3.conv1    256 1024 1 1
res4.3.conv2    256 256 3 3
res4.3.conv3    1024 256 1 1
res4.4.conv1    256 1024 1 1
res4.4.conv2    256 256 3 3
res4.4.conv3    1024 256 1 1
res4.5.conv1    256 1024 1 1
res4.5.conv2    256 256 3 3
res4.5.conv3    1024 256 1 1
res5.0.conv1    512 1024 1 1
res5.0.conv2    512 512 3 3
res5.0.conv3    2048 512 1 1
res5.0.shortcut 2048 1024 1 1
res5.1.conv1    512 2048 1 1
res5.1.conv2    512 512 3 3
res5.1.conv3    2048 512 1 1
res5.2.conv1    512 2048 1 1
res5.2.conv2    512 512 3 3
res5.2.conv3    2048 512 1 1
"""


def detectron2_r50_shapes():
    """{detectron2 key: shape} of the 53 convolutions above and their BatchNorms: 265 keys."""
    shapes = {}
    for row in DETECTRON2_R50_CONVS.split("\n"):
        if row.strip():
            name, *dims = row.split()
            shapes[f"{name}.weight"] = tuple(map(int, dims))
            for field in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.norm.{field}"] = (int(dims[0]),)
    return shapes


RECONSTRUCT = np.empty(0).__reduce_ex__(2)[0]


class ArraysOnly(pickle.Unpickler):
    """Unpickles our own file admitting nothing but numpy arrays: the three globals an array needs, under the
    names numpy 1.x has (what detectron2 environments on old numpy can import)."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): RECONSTRUCT, ("numpy", "ndarray"): np.ndarray,
               ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"the file refers to {module}.{name}")
        return self.ALLOWED[module, name]


def read_pkl(path):
    with open(path, "rb") as f:
        return ArraysOnly(f, encoding="latin1").load()  # detectron2 reads .pkl with encoding="latin1"


def randomise_batchnorm(net):
    """Fresh BatchNorms are all alike (1, 0, 0, 1); distinct values show that each lands in its own place."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                for tensor in (m.weight, m.bias, m.running_mean):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return net


def write_checkpoint(path, arch, dataset="stl10", image_size=96, channels=3):
    """A checkpoint with the entries train_cld.py's save() writes that the converter reads: config, network,
    model, epoch. Returns the network."""
    torch.manual_seed(0)
    spec = NetworkSpec(arch, channels, image_size)
    net = randomise_batchnorm(spec.build())
    config = {"dataset": dataset, "arch": arch, "image_size": image_size, "dim": spec.dim,
              "instance_head": spec.instance_head, "group_head": spec.group_head}
    checkpoint.save_atomic({"config": config, "network": asdict(spec), "model": net.state_dict(), "epoch": 7}, path)
    return net


def pairs(resnet):
    """(detectron2 name, conv, its BatchNorm) for every convolution of a torchvision ResNet-50, found by walking
    its modules, independently of the converter's renaming."""
    yield "stem.conv1", resnet.conv1, resnet.bn1
    for stage, layer in enumerate([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4], start=2):
        for i, block in enumerate(layer):
            for j in (1, 2, 3):
                yield f"res{stage}.{i}.conv{j}", getattr(block, f"conv{j}"), getattr(block, f"bn{j}")
            if block.downsample is not None:
                yield f"res{stage}.{i}.shortcut", block.downsample[0], block.downsample[1]


def run_convert(*args):
    return subprocess.run([sys.executable, "convert_detectron2.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=ONE_THREAD)


def run_in_process(capsys, *argv):
    """convert_detectron2.py in this process as its __main__ runs it -> (exit status or message, stdout, stderr)."""
    try:
        cli.run_main(convert_detectron2.main, convert_detectron2.parse_args([str(a) for a in argv]),
                     errors=(convert_detectron2.ConvertError,))
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def converted(tmp_path_factory):
    """A ResNet-50 checkpoint converted by the script as a user runs it, into a folder with a space in its name."""
    folder = tmp_path_factory.mktemp("detection")
    net = write_checkpoint(folder / "last.pth", "resnet50")
    dst = folder / "with space" / "cld r50.pkl"
    result = run_convert(folder / "last.pth", dst)
    assert result.returncode == 0, result.stderr[-3000:]
    return net, folder, dst, result.stdout


# ---------------------------------------------------------------- conversion

def test_checkpoint_converts_to_detectron2_r50_names(converted):
    net, folder, dst, _ = converted
    data = read_pkl(dst)
    assert set(data) == {"model", "__author__", "matching_heuristics"}
    assert data["matching_heuristics"] is True and isinstance(data["__author__"], str)
    assert data["__author__"] != "Caffe2"  # that name would make detectron2 rename the keys as Caffe2 blobs
    weights, expected = data["model"], detectron2_r50_shapes()
    assert len(expected) == 265 and sorted(weights) == sorted(expected)
    for name, array in weights.items():
        assert type(array) is np.ndarray and array.dtype == np.float32 and array.shape == expected[name], name
    for name, conv, bn in pairs(net.backbone):
        assert np.array_equal(weights[f"{name}.weight"], conv.weight.detach().numpy()), name
        for field in ("weight", "bias", "running_mean", "running_var"):
            assert np.array_equal(weights[f"{name}.norm.{field}"], getattr(bn, field).detach().numpy()), (name, field)
    assert not [p.name for p in dst.parent.iterdir() if p.name.startswith(".tmp")]


def test_printed_commands_launch_both_voc_configs(converted):
    _, _, dst, out = converted
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert [os.path.basename(c[3]) for c in commands] == ["voc0712_R_50_C4_24k.yaml", "voc07_R_50_C4_9k.yaml"]
    for command in commands:
        assert command[:3] == ["python", "detection/train_net.py", "--config-file"]
        assert command[4:] == ["--num-gpus", "8", "MODEL.WEIGHTS", str(dst)]  # the space survives the quoting
        assert os.path.isfile(os.path.join(ROOT, command[3]))
    assert "265 arrays" in out and "(after 7 epochs)" in out


def test_exported_backbone_converts_to_the_same_arrays(converted, tmp_path, capsys):
    """eval_linear.py --export's file, here with torchvision's fc beside it, gives the checkpoint's arrays."""
    net, _, dst, _ = converted
    eval_linear.export_backbone(net.backbone, {"arch": "resnet50"}, 3, str(tmp_path / "backbone.pth"), write=True)
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    state.update({"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    torch.save(state, tmp_path / "with_fc.pth")
    status, out, err = run_in_process(capsys, tmp_path / "with_fc.pth", tmp_path / "b.pkl", "--num-gpus", 4)
    assert status == 0, err
    assert "torchvision ResNet-50 state dict" in out and "--num-gpus 4" in out
    ours, theirs = read_pkl(tmp_path / "b.pkl")["model"], read_pkl(dst)["model"]
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_names_match_torchvision_layout():
    assert convert_detectron2.detectron2_name("bn1.running_var") == "stem.conv1.norm.running_var"
    assert convert_detectron2.detectron2_name("layer3.5.bn3.bias") == "res4.5.conv3.norm.bias"
    assert convert_detectron2.detectron2_name("layer4.0.downsample.1.weight") == "res5.0.shortcut.norm.weight"
    assert convert_detectron2.detectron2_name("layer1.0.downsample.0.weight") == "res2.0.shortcut.weight"


# ---------------------------------------------------------------- what does not convert

@pytest.mark.parametrize("arch, words", [("resnet18", "only resnet50 converts"),
                                         ("resnet18_cifar", "only resnet50 converts"),
                                         ("resnet20", "small CIFAR ResNet")])
def test_only_resnet50_converts(arch, words, tmp_path, capsys):
    write_checkpoint(tmp_path / "last.pth", arch, dataset="cifar10", image_size=32)
    status, _, _ = run_in_process(capsys, tmp_path / "last.pth", tmp_path / "out.pkl")
    assert isinstance(status, str) and status.startswith("error: ") and "\n" not in status
    assert arch in status and words in status and "--arch resnet50" in status
    assert not (tmp_path / "out.pkl").exists()


def test_torchvision_resnet18_file_is_refused(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    status, _, _ = run_in_process(capsys, tmp_path / "r18.pth", tmp_path / "out.pkl")
    assert status.startswith("error: ") and "ResNet-18/34" in status and "\n" not in status


def test_bad_files_are_one_line(converted, tmp_path, capsys):
    net = converted[0]
    state = {k: v for k, v in net.backbone.state_dict().items()}
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)                    # a network for grey images
    torch.save(state, tmp_path / "grey.pth")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"epoch": 3, "arch": "resnet50"}, tmp_path / "other.pth")
    for src, words in [("grey.pth", "other than 3-channel"), ("notes.txt", "unreadable"),
                       ("other.pth", "nor a state dict of tensors")]:
        status, _, _ = run_in_process(capsys, tmp_path / src, tmp_path / "out.pkl")
        assert isinstance(status, str) and status.startswith("error: ") and "\n" not in status, status
        assert words in status, status
    assert not (tmp_path / "out.pkl").exists()


@pytest.mark.parametrize("argv, words", [("{tmp}/missing.pth {tmp}/out.pkl", "does not exist"),
                                         ("{src} {tmp}/out.pth", "must end in .pkl"),
                                         ("{src} {tmp}/out.pkl --num-gpus 3", "--num-gpus must divide")])
def test_bad_arguments_are_one_line(argv, words, converted, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        convert_detectron2.parse_args(argv.format(tmp=tmp_path, src=converted[1] / "last.pth").split())
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ") and words in err, err


# ---------------------------------------------------------------- the configs

def effective(name):
    """A config with its _BASE_ chain merged in, as detectron2's CfgNode.merge_from_file does."""
    with open(os.path.join(CONFIGS, name)) as f:
        config = yaml.safe_load(f)
    base = config.pop("_BASE_", None)
    return merge(effective(base), config) if base else config


def merge(base, update):
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("name, train, max_iter, steps", [
    ("voc0712_R_50_C4_24k.yaml", ["voc_2007_trainval", "voc_2012_trainval"], 24000, [18000, 22000]),  # MoCo's
    ("voc07_R_50_C4_9k.yaml", ["voc_2007_trainval"], 9000, [6750, 8250])])  # 9k: CLD supplementary; steps ours
def test_configs_hold_mocos_settings(name, train, max_iter, steps):
    c = effective(name)
    assert c["SOLVER"] == {"IMS_PER_BATCH": 16, "BASE_LR": 0.02, "MAX_ITER": max_iter, "STEPS": steps,
                           "WARMUP_ITERS": 100}
    assert c["DATASETS"] == {"TRAIN": train, "TEST": ["voc_2007_test"]}
    assert c["INPUT"] == {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(range(480, 801, 32)), "MIN_SIZE_TEST": 800}
    model = c["MODEL"]
    assert model["RESNETS"] == {"DEPTH": 50, "OUT_FEATURES": ["res4"], "NORM": "naiveSyncBN", "STRIDE_IN_1X1": False}
    assert model["BACKBONE"]["FREEZE_AT"] == 0 and model["MASK_ON"] is False
    assert model["ROI_HEADS"] == {"NAME": "Res5ROIHeadsExtraNorm", "IN_FEATURES": ["res4"], "NUM_CLASSES": 20}
    assert model["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and model["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert model["RPN"]["PRE_NMS_TOPK_TEST"] == 6000 and model["RPN"]["POST_NMS_TOPK_TEST"] == 1000
    assert c["TEST"] == {"PRECISE_BN": {"ENABLED": True}}
    assert c["OUTPUT_DIR"] == "output/" + name[:-len(".yaml")]


def test_train_net_without_detectron2_is_one_line():
    if importlib.util.find_spec("detectron2") is not None:
        pytest.skip("detectron2 is installed here")
    result = subprocess.run([sys.executable, "detection/train_net.py", "--config-file",
                             "detection/configs/voc07_R_50_C4_9k.yaml"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "detectron2" in result.stderr and "install" in result.stderr
