"""A pretrained ResNet-50 in detectron2's weight format, and the commands that fine-tune it on PASCAL VOC
(the paper's Table 7: Faster R-CNN R50-C4 with synchronised BatchNorm, as MoCo's detection configs).

    python convert_detectron2.py runs/in_cld/last.pth cld_r50.pkl     # a checkpoint of train_cld.py
    python convert_detectron2.py backbone.pth cld_r50.pkl             # eval_linear.py --export, or torchvision's resnet50

It writes the backbone's 265 weights and BatchNorm statistics as numpy arrays under detectron2's ResNet
names (stem.conv1.weight, stem.conv1.norm.running_mean, res2.0.conv1.weight, res2.0.shortcut.norm.bias,
..., res5.2.conv3.norm.running_var), then prints the detectron2 command for each of the two VOC configs in
detection/configs/ (VOC07+12 24k iterations, VOC07 9k), ready to paste. detectron2 itself is not needed
here: the configs and detection/train_net.py run on a machine that has it.

The file is what MoCo's detection/convert-pretrain-to-detectron2.py (github.com/facebookresearch/moco)
writes and detectron2's DetectionCheckpointer reads for a name ending in .pkl (detectron2/checkpoint/
detection_checkpoint.py): a pickled dict {"model": {name: array}, "__author__": ...,
"matching_heuristics": True}. The flag lets detectron2 match each name to the model's by suffix:
res5.* lands in the ROI head (roi_heads.res5.*), the rest in the backbone. A pickle is a program, and this
project never loads one it is handed; this script only writes one, for detectron2, from weights it read
with torch.load(weights_only=True). It holds a dict, strings, a bool and numpy arrays, nothing else, and
names numpy's array constructor by its numpy 1.x path (numpy.core.multiarray), which numpy 2 still reads,
so that a detectron2 environment on either numpy loads it.

Only ResNet-50 converts: detectron2's C4 ROI head builds res5 from three bottleneck blocks (Res5ROIHeads in
detectron2/modeling/roi_heads/roi_heads.py), which ResNet-18's basic blocks and the small CIFAR ResNets
cannot fill. fc (torchvision's classifier, absent from this project's exports) and BatchNorm's
num_batches_tracked counters are left out: detectron2's detector has no classifier over ImageNet classes,
and its BatchNorm layers keep their own counters (as for MSRA's R-50.pkl, detectron2's default weights).
"""
import argparse
import os
import pickle
import re
import shlex
import tempfile

import numpy as np
import torch
import torchvision

from lib import checkpoint, cli
from lib.checkpoint import CheckpointWriteError
from lib.data import dataset_info

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN_NET = os.path.join(HERE, "detection", "train_net.py")
CONFIGS = os.path.join(HERE, "detection", "configs")
# (config file, what it fine-tunes on): the two settings of Table 7
RUNS = [("voc0712_R_50_C4_24k.yaml", "VOC07+12: fine-tune on VOC2007+2012 trainval for 24k iterations, "
                                     "test on VOC2007 test (Table 7, right)"),
        ("voc07_R_50_C4_9k.yaml", "VOC07: fine-tune on VOC2007 trainval for 9k iterations, test on VOC2007 test "
                                  "(Table 7, left)")]
IMS_PER_BATCH = 16  # SOLVER.IMS_PER_BATCH of detection/configs/Base-RCNN-C4-SyncBN.yaml
AUTHOR = "CLD reproduction: convert_detectron2.py"
SMALL_RESNETS = ("resnet20", "resnet32", "resnet56")


class ConvertError(Exception):
    """The input holds no ResNet-50 that detectron2's R50-C4 can take."""


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a checkpoint written by train_cld.py (RUN/last.pth) with --arch resnet50, or a "
                               "torchvision ResNet-50 state dict (eval_linear.py --export PATH)")
    p.add_argument("dst", help="the detectron2 weights to write; the name must end in .pkl")
    p.add_argument("--num-gpus", type=int, default=8,
                   help="GPUs in the printed commands (default 8, as MoCo's); the configs' 16 images per iteration "
                        "are shared among them, so it must divide 16")
    cli.add_trust_checkpoint(p)
    args = p.parse_args(argv)
    cli.input_file(p, "src", args.src, "a checkpoint written by train_cld.py or a torchvision ResNet-50 state dict")
    cli.output_file(p, "dst", args.dst)
    if not args.dst.endswith(".pkl"):
        p.error(f"dst {args.dst} must end in .pkl: detectron2 reads a weights file in this format only under "
                "that suffix (any other name goes to torch.load)")
    if os.path.abspath(args.dst) == os.path.abspath(args.src):
        p.error("dst must differ from src")
    if args.num_gpus < 1 or IMS_PER_BATCH % args.num_gpus:
        p.error(f"--num-gpus must divide the configs' {IMS_PER_BATCH} images per iteration (1, 2, 4, 8 or 16), "
                f"got {args.num_gpus}")
    return args


# ---------------------------------------------------------------- the input: a ResNet-50 state dict

def torchvision_resnet50():
    """{name: shape} of torchvision's ResNet-50 without fc and num_batches_tracked (built without memory)."""
    with torch.device("meta"):
        state = torchvision.models.resnet50().state_dict()
    return {name: tuple(value.shape) for name, value in state.items() if keep(name)}


def keep(name):
    return not name.startswith("fc.") and not name.endswith("num_batches_tracked")


def from_training_checkpoint(ckpt, path):
    """The backbone of a train_cld.py checkpoint -> (torchvision-named state dict, what it is)."""
    config = ckpt["config"]
    arch = config["arch"]
    if arch in SMALL_RESNETS:
        raise ConvertError(f"checkpoint {path} holds a {arch}, the small CIFAR ResNet of lib/models.py, which has no "
                           "counterpart in detectron2; only resnet50 converts to the paper's R50-C4 detector: "
                           "pretrain with --arch resnet50")
    if arch != "resnet50":
        raise ConvertError(f"checkpoint {path} holds a {arch}; only resnet50 converts: detectron2's R50-C4 detector "
                           "builds its res5 ROI head from ResNet-50's bottleneck blocks, which a ResNet-18 lacks; "
                           "pretrain with --arch resnet50")
    channels = None if "network" in ckpt else dataset_info(config["dataset"]).channels
    spec = checkpoint.network_spec(ckpt, path, channels)
    if spec.in_channels != 3:
        raise ConvertError(f"checkpoint {path} holds a ResNet-50 for {spec.in_channels}-channel images "
                           f"({config['dataset']}); detectron2 feeds the detector RGB images, so only a network "
                           "pretrained on 3-channel images converts")
    backbone = checkpoint.load_network(ckpt, path, spec.in_channels).backbone
    what = f"the ResNet-50 backbone of {path}"
    if isinstance(ckpt.get("epoch"), int):
        what += f" (after {ckpt['epoch']} epochs" + (f" and {ckpt['step']} steps" if ckpt.get("step") else "") + ")"
    return {name: value for name, value in backbone.state_dict().items() if keep(name)}, what


def from_state_dict(state, path):
    """A torchvision ResNet-50 state dict (fc allowed, and ignored), checked name by name and shape by shape."""
    names = [name for name in state if isinstance(name, str)]
    if len(names) != len(state) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"{path} is neither a train_cld.py checkpoint nor a state dict of tensors; pass RUN/last.pth "
                           "or the file of eval_linear.py --export")
    if "layer1.0.conv1.weight" in state and "layer1.0.conv3.weight" not in state:
        raise ConvertError(f"{path} holds a torchvision ResNet-18/34 backbone (basic blocks); only a ResNet-50 "
                           "converts: detectron2's R50-C4 detector builds its res5 ROI head from bottleneck blocks")
    reference = torchvision_resnet50()
    state = {name: value for name, value in state.items() if keep(name)}
    missing = [name for name in reference if name not in state]
    unexpected = [name for name in state if name not in reference]
    if missing or unexpected:
        raise ConvertError(f"{path} is not a torchvision ResNet-50 state dict: it lacks {len(missing)} of ResNet-50's "
                           f"tensors (first: {missing[0] if missing else '-'}) and holds {len(unexpected)} that are "
                           f"not ResNet-50's (first: {unexpected[0] if unexpected else '-'})")
    for name, shape in reference.items():
        if tuple(state[name].shape) != shape:
            raise ConvertError(f"{path}: {name} has shape {list(state[name].shape)} where torchvision's ResNet-50 has "
                               f"{list(shape)}" + (" (a network for other than 3-channel images: detectron2 feeds "
                                                   "RGB)" if name == "conv1.weight" else ""))
    return state, f"the torchvision ResNet-50 state dict {path}"


def load_resnet50(path, trust):
    """(torchvision-named ResNet-50 state dict without fc, a description of where it came from)."""
    obj = checkpoint.read(path, trust=trust)
    if isinstance(obj, dict) and ("config" in obj or "model" in obj):
        ckpt = checkpoint.load(path, trust=trust)  # checked as the evaluation scripts check it
        return from_training_checkpoint(ckpt, path)
    if not isinstance(obj, dict):
        raise ConvertError(f"{path} holds a {type(obj).__name__}, not a checkpoint or a state dict")
    return from_state_dict(obj, path)


# ---------------------------------------------------------------- torchvision names -> detectron2 names

BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(?:(conv|bn)([1-3])|downsample\.([01]))\.(\w+)")
STEM = re.compile(r"(conv1|bn1)\.(\w+)")


def detectron2_name(name):
    """torchvision's ResNet name -> detectron2's (detectron2/modeling/backbone/resnet.py: BasicStem,
    BottleneckBlock; a Conv2d there owns its BatchNorm as .norm):
        conv1.weight                  -> stem.conv1.weight
        bn1.running_mean              -> stem.conv1.norm.running_mean
        layer1.0.conv2.weight         -> res2.0.conv2.weight
        layer3.5.bn3.bias             -> res4.5.conv3.norm.bias
        layer4.0.downsample.0.weight  -> res5.0.shortcut.weight
        layer4.0.downsample.1.weight  -> res5.0.shortcut.norm.weight
    """
    stem = STEM.fullmatch(name)
    if stem:
        return "stem.conv1." + ("norm." if stem.group(1) == "bn1" else "") + stem.group(2)
    block = BLOCK.fullmatch(name)
    if not block:
        raise ConvertError(f"no detectron2 name for {name}")
    stage, index, kind, number, downsample, param = block.groups()
    if downsample is not None:
        layer, is_norm = "shortcut", downsample == "1"
    else:
        layer, is_norm = f"conv{number}", kind == "bn"
    return f"res{int(stage) + 1}.{index}.{layer}." + ("norm." if is_norm else "") + param


def detectron2_weights(state):
    """{detectron2 name: float32 numpy array} for a torchvision-named ResNet-50 state dict."""
    return {detectron2_name(name): value.detach().cpu().float().contiguous().numpy()
            for name, value in state.items()}


# ---------------------------------------------------------------- the .pkl file

RECONSTRUCT = np.empty(0).__reduce_ex__(2)[0]  # numpy's array constructor, _reconstruct


class PortablePickler(pickle._Pickler):
    """pickle's Python implementation, writing numpy's array constructor under its numpy 1.x name,
    numpy.core.multiarray._reconstruct. numpy 2 would write numpy._core.multiarray._reconstruct, a module that
    numpy before 1.26 lacks (numpy/numpy issues #28340 and #24906); numpy 2 still reads the 1.x name, so the
    file loads with either."""

    def save_global(self, obj, name=None):
        if obj is RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def write_pickle_atomic(obj, path):
    """As lib/checkpoint.save_atomic, for a pickle: a temporary file in the same folder, renamed over path, with
    the mode any new file of the process gets; a failed write leaves what was at path untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    existed = os.path.exists(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pkl")
    try:
        os.fchmod(fd, 0o666 & ~checkpoint.umask())
        with os.fdopen(fd, "wb") as f:
            PortablePickler(f, protocol=4).dump(obj)
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, OSError):
            needed = sum(array.nbytes for array in obj["model"].values())
            raise CheckpointWriteError(checkpoint.write_failure(e, path, folder, existed, needed)) from None
        raise


# ---------------------------------------------------------------- the commands

def shown(path):
    """path relative to the current folder when it lies inside it, else absolute."""
    relative = os.path.relpath(path)
    return os.path.abspath(path) if relative.startswith(os.pardir) else relative


def launch_lines(weights, num_gpus):
    """[(what it runs, the command)] for the two VOC configs, each command quoted for a POSIX shell."""
    return [(what, shlex.join(["python", shown(TRAIN_NET), "--config-file", shown(os.path.join(CONFIGS, name)),
                               "--num-gpus", str(num_gpus), "MODEL.WEIGHTS", shown(weights)]))
            for name, what in RUNS]


def main(args):
    state, what = load_resnet50(args.src, args.trust_checkpoint)
    weights = detectron2_weights(state)
    write_pickle_atomic({"model": weights, "__author__": AUTHOR, "matching_heuristics": True}, args.dst)
    print(f"# wrote {args.dst}: {what} as {len(weights)} arrays under detectron2's ResNet names")
    print("# detectron2 (not a requirement here) fine-tunes it with the paper's Table 7 settings; run from this "
          "folder, with VOC2007 and VOC2012 under $DETECTRON2_DATASETS (default ./datasets):")
    for label, command in launch_lines(args.dst, args.num_gpus):
        print(f"# {label}\n{command}")


if __name__ == "__main__":
    cli.run_main(main, parse_args(), errors=(ConvertError,))
