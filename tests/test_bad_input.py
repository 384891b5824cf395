"""Bad input to the five scripts: one line on stderr naming the flag or file and what would be valid,
a non-zero exit, no traceback, nothing written to --out."""
import os
import subprocess
import sys

import pytest

import build_kitchen_hc
import eval_knn
import eval_linear
import make_longtail
import train_cld
from fixtures import write_fashion_mnist, write_imagefolder
from lib import cli
from lib.data import DatasetError
from tests.common import as_main, only_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"train_cld": train_cld, "eval_knn": eval_knn, "eval_linear": eval_linear, "make_longtail": make_longtail,
           "build_kitchen_hc": build_kitchen_hc}


@pytest.fixture
def paths(tmp_path):
    """A regular file, a folder, a dummy checkpoint and a --out that must stay unwritten."""
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "ckpt.pth").write_bytes(b"parse_args never opens it")
    return {"FILE": str(tmp_path / "file"), "DIR": str(tmp_path / "folder"), "CKPT": str(tmp_path / "ckpt.pth"),
            "OUT": str(tmp_path / "out"), "MISSING": str(tmp_path / "missing")}


def one_line(capsys, stop):
    """The error of a parse_args that stopped: exit status 2 and exactly one stderr line, returned."""
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ")
    return lines[0]


# (script, arguments, the line it must print); FILE, DIR, CKPT, OUT, MISSING stand for the paths above.
CASES = [
    # train_cld.py: the ones users met as tracebacks, then every other numeric flag and path
    ("train_cld", "--lr -1", "error: --lr must be positive, got -1.0"),
    ("train_cld", "--lr nan", "error: --lr must be finite and positive, got nan"),
    ("train_cld", "--workers -1", "error: --workers must be 0 or more, got -1"),
    ("train_cld", "--image-size 0", "error: --image-size must be positive, got 0"),
    ("train_cld", "--image-size -32", "error: --image-size must be positive, got -32"),
    ("train_cld", "--epochs 0", "error: --epochs must be positive, got 0"),
    ("train_cld", "--momentum -0.1", "error: --momentum must be in [0, 1), got -0.1"),
    ("train_cld", "--momentum 1", "error: --momentum must be in [0, 1), got 1.0"),
    ("train_cld", "--wd -0.0001", "error: --wd must be 0 or more, got -0.0001"),
    ("train_cld", "--min-lr -0.000001", "error: --min-lr must be 0 or more, got -1e-06"),
    ("train_cld", "--warmup-epochs -1", "error: --warmup-epochs must be 0 or more, got -1"),
    ("train_cld", "--epochs 3 --warmup-epochs 4", "error: --warmup-epochs must be at most --epochs (3), got 4"),
    ("train_cld", "--ins-t 0", "error: --ins-t must be positive, got 0.0"),
    ("train_cld", "--cld-t -0.2", "error: --cld-t must be positive, got -0.2"),
    ("train_cld", "--cld-t inf", "error: --cld-t must be finite and positive, got inf"),
    ("train_cld", "--dist-timeout 0", "error: --dist-timeout must be positive, got 0.0"),
    ("train_cld", "--lam -1", "error: --lam must be 0 or more, got -1.0"),
    ("train_cld", "--bank-momentum 1", "error: --bank-momentum must be in [0, 1), got 1.0"),
    ("train_cld", "--bank-momentum -0.5", "error: --bank-momentum must be in [0, 1), got -0.5"),
    ("train_cld", "--moco --moco-momentum 1.5", "error: --moco-momentum must be in [0, 1), got 1.5"),
    ("train_cld", "--moco --moco-momentum -1", "error: --moco-momentum must be in [0, 1), got -1.0"),
    ("train_cld", "--sync-every 0", "error: --sync-every must be positive, got 0"),
    ("train_cld", "--accumulate 0", "error: --accumulate must be positive, got 0"),
    ("train_cld", "--infomin --beta 1.5", "error: --beta must be in [0, 1], got 1.5"),
    ("train_cld", "--c2bin --c2bin-scales 1", "error: --c2bin-scales must be 2 or more, got 1"),
    ("train_cld", "--c2bin --c2bin-t 0", "error: --c2bin-t must be positive, got 0.0"),
    ("train_cld", "--byol --byol-hidden 0", "error: --byol-hidden must be positive, got 0"),
    ("train_cld", "--byol --byol-dim 0", "error: --byol-dim must be positive, got 0"),
    ("train_cld", "--byol --lars-eta 0", "error: --lars-eta must be positive, got 0.0"),
    ("train_cld", "--byol --byol-tau 1", "error: --byol-tau must be in [0, 1), got 1.0"),
    ("train_cld", "--infomin --queue 0", "error: --queue must be positive, got 0"),
    ("train_cld", "--infomin --data-path device", "error: --data-path device cannot build the infomin partner's "
     "jigsaw tiles or the infomin augmentation (RandAugment) on the device: use --data-path loader"),
    ("train_cld", "--moco --aug infomin --data-path device", "error: --data-path device cannot build the infomin "
     "augmentation (RandAugment) on the device: use --data-path loader"),
    ("train_cld", "--moco --queue 0", "error: --queue must be positive, got 0"),
    ("train_cld", "--dim 0", "error: --dim must be positive, got 0"),
    ("train_cld", "--kmeans-iters 0", "error: --kmeans-iters must be positive, got 0"),
    ("train_cld", "--knn-every -1", "error: --knn-every must be 0 or more, got -1"),
    ("train_cld", "--knn-k 0", "error: --knn-k must be positive, got 0"),
    ("train_cld", "--save-every -2", "error: --save-every must be 0 or more, got -2"),
    ("train_cld", "--seed -1", "error: --seed must be in [0, 2**31 - 1], got -1"),
    ("train_cld", "--max-bad-steps 0", "error: --max-bad-steps must be positive, got 0"),
    ("train_cld", "--data FILE", "error: --data FILE is a file; pass the dataset's root folder"),
    ("train_cld", "--subset DIR", "error: --subset DIR is a folder; pass a subset file written by make_longtail.py"),
    ("train_cld", "--subset MISSING",
     "error: --subset MISSING does not exist; pass a subset file written by make_longtail.py"),
    ("train_cld", "--resume DIR", "error: --resume DIR is a folder; pass a checkpoint, RUN/last.pth or RUN/epoch_N.pth"),
    ("train_cld", "--resume MISSING",
     "error: --resume MISSING does not exist; pass a checkpoint, RUN/last.pth or RUN/epoch_N.pth"),
    ("train_cld", "--out FILE", "error: --out FILE is a file; pass a folder (it is created when missing)"),
    ("train_cld", "--out FILE/run", "error: --out FILE/run cannot be created: FILE is a file, not a folder"),
    ("train_cld", "--out EMPTY", "error: --out is empty; pass a folder (it is created when missing)"),
    ("train_cld", "--data EMPTY", "error: --data is empty; pass the dataset's root folder"),
    ("train_cld", "--subset EMPTY", "error: --subset is empty; pass a subset file written by make_longtail.py"),
    # eval_knn.py
    ("eval_knn", "--ckpt CKPT --k 0", "error: --k must be positive, got 0"),
    ("eval_knn", "--ckpt CKPT --sigma -0.1", "error: --sigma must be positive, got -0.1"),
    ("eval_knn", "--ckpt CKPT --sigma nan", "error: --sigma must be finite and positive, got nan"),
    ("eval_knn", "--ckpt CKPT --many -1", "error: --many must be 0 or more, got -1"),
    ("eval_knn", "--ckpt CKPT --few 30 --many 10", "error: --few must be at most --many (10), got 30"),
    ("eval_knn", "--ckpt CKPT --batch-size 0", "error: --batch-size must be positive, got 0"),
    ("eval_knn", "--ckpt CKPT --workers -1", "error: --workers must be 0 or more, got -1"),
    ("eval_knn", "--ckpt MISSING",
     "error: --ckpt MISSING does not exist; pass a checkpoint written by train_cld.py (RUN/last.pth)"),
    ("eval_knn", "--ckpt DIR", "error: --ckpt DIR is a folder; pass a checkpoint written by train_cld.py (RUN/last.pth)"),
    ("eval_knn", "--ckpt CKPT --data FILE", "error: --data FILE is a file; pass the dataset's root folder"),
    ("eval_knn", "--ckpt CKPT --subset DIR",
     "error: --subset DIR is a folder; pass a subset file written by make_longtail.py"),
    # eval_linear.py
    ("eval_linear", "--ckpt CKPT --lr 0", "error: --lr must be positive, got 0.0"),
    ("eval_linear", "--ckpt CKPT --lr -30", "error: --lr must be positive, got -30.0"),
    ("eval_linear", "--ckpt CKPT --wd -1", "error: --wd must be 0 or more, got -1.0"),
    ("eval_linear", "--ckpt CKPT --momentum 1", "error: --momentum must be in [0, 1), got 1.0"),
    ("eval_linear", "--ckpt CKPT --epochs 0", "error: --epochs must be positive, got 0"),
    ("eval_linear", "--ckpt CKPT --batch-size -1", "error: --batch-size must be positive, got -1"),
    ("eval_linear", "--ckpt CKPT --eval-batch-size 0", "error: --eval-batch-size must be positive, got 0"),
    ("eval_linear", "--ckpt CKPT --gamma 0", "error: --gamma must be positive, got 0.0"),
    ("eval_linear", "--ckpt CKPT --milestones 10 -5", "error: --milestones must be positive, got -5"),
    ("eval_linear", "--ckpt CKPT --head-lr-mult -1", "error: --head-lr-mult must be positive, got -1.0"),
    ("eval_linear", "--ckpt CKPT --seed -1", "error: --seed must be in [0, 2**31 - 1], got -1"),
    ("eval_linear", "--ckpt CKPT --workers -4", "error: --workers must be 0 or more, got -4"),
    ("eval_linear", "--ckpt CKPT --label-fraction nan", "error: --label-fraction must be in (0, 1], got nan"),
    ("eval_linear", "--ckpt MISSING",
     "error: --ckpt MISSING does not exist; pass a checkpoint written by train_cld.py (RUN/last.pth)"),
    ("eval_linear", "--ckpt CKPT --data FILE", "error: --data FILE is a file; pass the dataset's root folder"),
    ("eval_linear", "--ckpt CKPT --export EMPTY", "error: --export is empty; pass the path of the file to write"),
    ("eval_linear", "--ckpt CKPT --export DIR", "error: --export DIR is a folder; pass the path of the file to write"),
    ("eval_linear", "--ckpt CKPT --export FILE/b.pth",
     "error: --export FILE/b.pth cannot be created: FILE is a file, not a folder"),
    # make_longtail.py
    ("make_longtail", "--dataset cifar10 --ratio 0.5 --out OUT", "error: --ratio must be at least 1, got 0.5"),
    ("make_longtail", "--dataset cifar10 --ratio inf --out OUT", "error: --ratio must be finite and at least 1, got inf"),
    ("make_longtail", "--dataset cifar10 --seed -1 --out OUT", "error: --seed must be in [0, 2**32 - 1], got -1"),
    ("make_longtail", "--dataset cifar10 --data FILE --out OUT",
     "error: --data FILE is a file; pass the dataset's root folder"),
    ("make_longtail", "--dataset cifar10 --out DIR", "error: --out DIR is a folder; pass the path of the file to write"),
    ("make_longtail", "--dataset cifar10 --out FILE/lt.json",
     "error: --out FILE/lt.json cannot be created: FILE is a file, not a folder"),
    ("make_longtail", "--dataset imagenet-lt --lists MISSING --out OUT",
     "error: --lists MISSING does not exist; pass the folder holding ImageNet_LT_train.txt, or that file"),
    # build_kitchen_hc.py
    ("build_kitchen_hc", "--gmu DIR --out OUT --size -1", "error: --size must be 0 or positive, got -1"),
    ("build_kitchen_hc", "--gmu FILE --out OUT",
     "error: --gmu FILE is a file; pass the folder holding gmu_scene_001 ... gmu_scene_009"),
    ("build_kitchen_hc", "--gmu DIR --out FILE/kitchen",
     "error: --out FILE/kitchen cannot be created: FILE is a file, not a folder"),
]


def fill(text, paths):
    for key in sorted(paths, key=len, reverse=True):  # MISSING before anything it could contain
        text = text.replace(key, paths[key])
    return text


@pytest.mark.parametrize("script,argv,expected", CASES, ids=[f"{s}:{a}" for s, a, _ in CASES])
def test_flag_out_of_range_or_wrong_path(script, argv, expected, paths, capsys):
    argv = ["" if word == "EMPTY" else word for word in fill(argv, paths).split()]
    if script == "train_cld" and "--out" not in argv:
        argv += ["--out", paths["OUT"]]
    with pytest.raises(SystemExit) as stop:
        SCRIPTS[script].parse_args(argv)
    assert one_line(capsys, stop) == fill(expected, paths)
    assert not os.path.exists(paths["OUT"])


def test_the_cases_cover_every_numeric_flag_of_train_cld():
    named = {case[1].split()[-2] for case in CASES if case[0] == "train_cld"}
    ranged = {cli.flag(name) for name in train_cld.RANGES}
    assert ranged - {"--batch-size", "--clusters"} <= named  # those two: tests/test_train.py


def test_unwritable_out(paths, monkeypatch, capsys):
    """os.access decides (a root user may write anywhere, so the permission bits alone cannot be tested here)."""
    denied = {paths["DIR"]}
    real = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if os.path.abspath(p) in denied else real(p, mode))
    with pytest.raises(SystemExit) as stop:
        train_cld.parse_args(["--out", paths["DIR"]])
    assert one_line(capsys, stop) == f"error: --out {paths['DIR']} is not writable (permissions)"
    with pytest.raises(SystemExit) as stop:
        train_cld.parse_args(["--out", os.path.join(paths["DIR"], "a", "run")])
    assert one_line(capsys, stop) == (f"error: --out {paths['DIR']}/a/run cannot be created: "
                                      f"no permission to write in {paths['DIR']}")
    with pytest.raises(SystemExit) as stop:
        make_longtail.parse_args(["--dataset", "cifar10", "--out", os.path.join(paths["DIR"], "lt.json")])
    assert "no permission to write in" in one_line(capsys, stop)
    denied.add(paths["CKPT"])
    with pytest.raises(SystemExit) as stop:
        eval_knn.parse_args(["--ckpt", paths["CKPT"]])
    assert one_line(capsys, stop) == f"error: --ckpt {paths['CKPT']} is not readable (permissions)"


# ---------------------------------------------------------------- as a user runs them

def run(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("argv,expected", [
    (["--lr", "-1"], "error: --lr must be positive, got -1.0"),
    (["--workers", "-1"], "error: --workers must be 0 or more, got -1"),
    (["--image-size", "0"], "error: --image-size must be positive, got 0"),
])
def test_train_cld_command_line(argv, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cld.parse_args(["--dataset", "digits", *argv, "--out", str(tmp_path / "run")])
    assert stop.value.code == 2 and capsys.readouterr().err.splitlines() == [expected]
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_train_cld_out_in_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    r = run("train_cld.py", "--dataset", "digits", "--out", folder / "run")
    assert only_line(r) == f"error: --out {folder}/run cannot be created: no permission to write in {folder}"


def test_every_other_script_from_the_command_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["eval_knn.py", "--ckpt", tmp_path], f"error: --ckpt {tmp_path} is a folder; pass a checkpoint written by "
                                              f"train_cld.py (RUN/last.pth)"),
        (["eval_linear.py", "--ckpt", tmp_path / "file", "--momentum", "1"], "error: --momentum must be in [0, 1), got 1.0"),
        (["make_longtail.py", "--dataset", "cifar10", "--ratio", "0", "--out", tmp_path / "lt.json"],
         "error: --ratio must be at least 1, got 0.0"),
        (["build_kitchen_hc.py", "--gmu", tmp_path / "file", "--out", tmp_path / "k"],
         f"error: --gmu {tmp_path}/file is a file; pass the folder holding gmu_scene_001 ... gmu_scene_009"),
    ]
    for argv, expected in cases:
        code, _, err = as_main(capsys, *argv)
        assert code == 2 and err.splitlines() == [expected], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- files with the wrong contents

def make(argv, capsys):
    """make_longtail.py as from the command line, in-process: (exit message, stdout)."""
    with pytest.raises(SystemExit) as stop:
        cli.run_main(make_longtail.main, make_longtail.parse_args([str(a) for a in argv]))
    return stop.value.code, capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_damaged_fashion_mnist_file(damage, tmp_path, capsys):
    root = write_fashion_mnist(tmp_path / "fm")
    path = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not a gzip file at all")
    code, out = make(["--dataset", "fashion-mnist", "--data", root, "--out", tmp_path / "lt.json"], capsys)
    assert code.startswith(f"error: fashion-mnist: {path} cannot be read (") and "\n" not in code
    assert code.endswith("the file is truncated or corrupt, download it again")
    assert not (tmp_path / "lt.json").exists() and out == ""


def test_image_folder_with_classes_but_no_images(tmp_path, capsys):
    for split in ("train", "val"):
        for name in ("a", "b"):
            (tmp_path / "tree" / split / name).mkdir(parents=True)
    code, _ = make(["--dataset", "imagefolder", "--data", tmp_path / "tree", "--out", tmp_path / "lt.json"], capsys)
    assert code.startswith(f"error: imagefolder: {tmp_path}/tree/train holds no readable images") and "\n" not in code
    assert not (tmp_path / "lt.json").exists()


def test_subset_file_that_is_not_json(tmp_path, capsys):
    (tmp_path / "subset.json").write_text("indices: 1, 2, 3")
    code, _, err = as_main(capsys, "train_cld.py", "--dataset", "digits", "--subset", tmp_path / "subset.json",
                        "--out", tmp_path / "run")
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: subset file {tmp_path}/subset.json is not readable JSON")


def test_corrupt_image_met_by_a_dataloader_worker(tmp_path):
    """Found in the middle of training by a worker process: still one line naming the file (and the process
    ends: the worker left behind ignores SIGTERM, so the script's exit hook must kill it)."""
    root = write_imagefolder(tmp_path / "tree", classes=2, n_per_class=4, size=16)
    bad = tmp_path / "tree" / "train" / "class_1" / "img_2.png"
    bad.write_bytes(b"\x89PNG but nothing else")
    r = run("train_cld.py", "--dataset", "imagefolder", "--data", root, "--arch", "resnet20", "--image-size", "16",
            "--batch-size", "4", "--clusters", "2", "--epochs", "1", "--workers", "1", "--check-images", "off",
            "--out", tmp_path / "run")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert lines == [f"error: {bad} is not a readable image (not an image format PIL recognises); replace or remove it"]


def test_worker_traceback_is_reduced_to_the_original_message():
    wrapped = DatasetError("Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                           "last):\n  File \"x.py\", line 1, in f\nlib.data.DatasetError: x.png is not: readable")
    assert cli.message(wrapped) == "x.png is not: readable"
    assert cli.message(DatasetError("plain: message")) == "plain: message"


def test_run_main_turns_a_file_error_into_one_line():
    def main(args):
        raise PermissionError(13, "Permission denied", "/runs/x/last.pth")
    with pytest.raises(SystemExit) as stop:
        cli.run_main(main, None)
    assert stop.value.code == "error: /runs/x/last.pth: Permission denied"

