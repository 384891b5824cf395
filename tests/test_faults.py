"""Faults a shared cluster produces: preemption, full disks, two runs in one folder, broken files. Each
ends without a traceback and loses nothing that was finished."""
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import train_cld
from lib import checkpoint, cli, data, runfolder
from tests.common import ROOT, digits_subset, train
from tests.fixtures import write_imagefolder

# Its tests share module fixtures: one test process runs them all (pytest -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group(name="test_faults")

TINY = ["--dataset", "digits", "--arch", "resnet20", "--batch-size", "64", "--clusters", "10", "--workers", "0",
        "--knn-every", "0", "--lr", "0.01", "--warmup-epochs", "0"]
STEPS = 1437 // 64  # steps per epoch of TINY: 22


@pytest.fixture
def no_signal_handlers(monkeypatch):
    """main() installs SIGINT/SIGTERM handlers; in-process runs must not leave them in pytest."""
    monkeypatch.setattr(train_cld.signal, "signal", lambda *a: None)


def signal_after(monkeypatch, steps, signum=signal.SIGTERM):
    """The run behaves as if `signum` arrived during its `steps`-th step (counted from this start): the next
    step carries the request to every process, then the run saves and exits."""
    class Stop(train_cld.StopSignal):
        asked = 0

        def __bool__(self):
            Stop.asked += 1
            if Stop.asked > steps:
                self.received[:1] = [signum]
            return bool(self.received)
    monkeypatch.setattr(train_cld, "StopSignal", Stop)


def start(*argv, env=None):
    return subprocess.Popen([sys.executable, "train_cld.py", *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- numbering

def test_stop_message_counts_epochs_as_the_progress_bar_does(tmp_path, monkeypatch, capsys, no_signal_handlers):
    signal_after(monkeypatch, STEPS + 4)  # the signal comes during step 4 of epoch 2; step 5 carries it
    args = train_cld.parse_args([*TINY, "--epochs", "3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        train_cld.main(args)
    assert stop.value.code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert f"stopped by signal in epoch 2/3 after step 5 of {STEPS}; resume with --resume {tmp_path}/last.pth" in err
    saved = torch.load(tmp_path / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 5)  # epoch 2 counted from 1 is index 1 counted from 0


# ---------------------------------------------------------------- Ctrl-C during start-up

def test_ctrl_c_while_main_starts_exits_quietly_with_130():
    def main(args):
        raise KeyboardInterrupt
    with pytest.raises((SystemExit, KeyboardInterrupt)) as stop:
        cli.run_main(main, None)
    assert stop.type is SystemExit and stop.value.code == 130


@pytest.mark.parametrize("after", [1.5, 4.0])
def test_ctrl_c_during_imports_and_data_loading_exits_quietly_with_130(after, tmp_path):
    # Enough epochs that the process is still running when the signal comes: on an idle machine the device
    # path trains a digits epoch in well under a second, so one epoch could end before 4 s.
    proc = start(*TINY, "--epochs", "100", "--out", tmp_path / "run")
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]


# ---------------------------------------------------------------- shared folders: file modes

@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_checkpoints_follow_the_umask_as_config_json_does(mask, tmp_path):
    old = os.umask(mask)
    try:
        checkpoint.save_atomic({"a": 1}, tmp_path / "last.pth")
        checkpoint.write_json_atomic({"a": 1}, tmp_path / "config.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "last.pth").st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(os.stat(tmp_path / "config.json").st_mode) == 0o666 & ~mask


# ---------------------------------------------------------------- paths and damaged checkpoints

@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def one_epoch(tmp_path_factory):
    """A finished one-epoch run of TINY (and its last.pth)."""
    out = tmp_path_factory.mktemp("one_epoch")
    train(*TINY, "--epochs", "1", "--out", out)
    return out


def damage(ckpt, how):
    if how == "memory-bank":
        del ckpt["memory"]["bank"]
    elif how == "optimizer-groups":
        del ckpt["optimizer"]["param_groups"]
    elif how == "optimizer-state":
        ckpt["optimizer"] = {"state": {}}
    elif how == "scaler":
        ckpt["scaler"] = "fp16"
    elif how == "rng-empty":
        ckpt["rng"] = []
    elif how == "rng-entry":
        del ckpt["rng"][0]["numpy"]
    elif how == "sums":
        ckpt["sums"] = torch.zeros(2)
    elif how == "epoch":
        ckpt["epoch"] = "one"
    elif how == "model-entry":
        del ckpt["model"][next(iter(ckpt["model"]))]
    elif how == "network":
        ckpt["network"] = {"arch": "resnet20"}


@pytest.mark.parametrize("how", ["memory-bank", "optimizer-groups", "optimizer-state", "scaler", "rng-empty",
                                 "rng-entry", "sums", "epoch", "model-entry", "network"])
def test_a_checkpoint_missing_an_entry_is_one_line(how, one_epoch, tmp_path, capsys, no_signal_handlers):
    ckpt = torch.load(one_epoch / "last.pth", weights_only=True)
    damage(ckpt, how)
    torch.save(ckpt, tmp_path / "damaged.pth")
    args = train_cld.parse_args([*TINY, "--epochs", "2", "--resume", str(tmp_path / "damaged.pth"),
                                 "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as stop:
        cli.run_main(train_cld.main, args)
    assert isinstance(stop.value.code, str) and stop.value.code.startswith("error: "), stop.value.code
    assert "damaged.pth" in stop.value.code and "\n" not in stop.value.code
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_folder_as_checkpoint_or_resume_is_one_line(one_epoch, tmp_path, capsys):
    for argv in (["eval_knn.py", "--ckpt", one_epoch], ["eval_linear.py", "--ckpt", one_epoch],
                 ["train_cld.py", *TINY, "--resume", one_epoch, "--out", tmp_path / "run"]):
        with pytest.raises(SystemExit) as stop:
            module = {"eval_knn.py": "eval_knn", "eval_linear.py": "eval_linear", "train_cld.py": "train_cld"}[argv[0]]
            __import__(module).parse_args([str(a) for a in argv[1:]])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{one_epoch} is a folder" in err, err


# ---------------------------------------------------------------- resuming with other settings

@pytest.fixture(scope="session")  # session: kept while the test process runs other modules between its tests
def mid_epoch(tmp_path_factory):
    """last.pth of a TINY run stopped after step 5 of epoch 1 (as if SIGTERM came during step 4)."""
    out = tmp_path_factory.mktemp("mid_epoch")
    with pytest.MonkeyPatch.context() as patch:
        signal_after(patch, 4)
        patch.setattr(train_cld.signal, "signal", lambda *a: None)
        with pytest.raises(SystemExit) as stop:
            train_cld.main(train_cld.parse_args([*TINY, "--epochs", "2", "--out", str(out)]))
    assert stop.value.code == 128 + signal.SIGTERM
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 5
    return out


@pytest.mark.parametrize("flag,value", [("--batch-size", "128"), ("--seed", "1")])
def test_a_mid_epoch_checkpoint_refuses_other_step_settings(flag, value, mid_epoch, tmp_path, no_signal_handlers):
    argv = [*TINY, "--epochs", "2", "--resume", str(mid_epoch / "last.pth"), "--out", str(tmp_path / "run")]
    args = train_cld.parse_args(argv + [flag, value])
    with pytest.raises(SystemExit) as stop:
        cli.run_main(train_cld.main, args)
    code = stop.value.code
    assert isinstance(code, str) and "\n" not in code, code
    assert code.startswith(f"error: {mid_epoch}/last.pth stopped in the middle of epoch 1 (after step 5) with {flag} ")
    assert f"resume with {flag} " in code
    assert not (tmp_path / "run" / "last.pth").exists()


def test_step_settings_name_the_number_of_processes(mid_epoch):
    ckpt = torch.load(mid_epoch / "last.pth", weights_only=True)
    args = train_cld.parse_args([*TINY, "--resume", str(mid_epoch / "last.pth"), "--out", str(mid_epoch)])
    train_cld.check_same_steps(args, ckpt, 1, 1437)
    with pytest.raises(train_cld.CheckpointError, match=r"with processes \(WORLD_SIZE\) 1; with 2 "):
        train_cld.check_same_steps(args, ckpt, 2, 1437)
    with pytest.raises(train_cld.CheckpointError, match="with training images 1437; with 1000 "):
        train_cld.check_same_steps(args, ckpt, 1, 1000)
    ckpt["step"] = 0  # at an epoch boundary every setting may change
    train_cld.check_same_steps(args, ckpt, 2, 1000)


# ---------------------------------------------------------------- metrics.jsonl and the checkpoint agree

def killed_before_logging(out, epoch, *argv):
    """Train TINY in a subprocess that dies (os._exit, as SIGKILL would) right after saving `epoch`'s
    checkpoint, before appending its line to metrics.jsonl."""
    code = ("import os, sys, train_cld; from lib import cli, jsonl\n"
            "real = jsonl.append\n"
            f"def append(path, record):\n    os._exit(137) if record['epoch'] == {epoch} else real(path, record)\n"
            "train_cld.jsonl.append = append\n"
            "cli.run_main(train_cld.main, train_cld.parse_args(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, *TINY, *argv, "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 137, r.stderr[-3000:]


def test_death_between_checkpoint_and_log_line_loses_no_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    killed_before_logging(out, 1, "--epochs", "2")
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1 and not (out / "metrics.jsonl").exists()
    capsys.readouterr()
    train(*TINY, "--epochs", "2", "--resume", out / "last.pth", "--out", out)
    assert [record["epoch"] for record in records(out)] == [1, 2]
    assert "restored the line of epoch 1 from the checkpoint" in capsys.readouterr().err


def test_repair_drops_later_epochs_and_a_torn_line_and_restores_missing_ones(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 3.0}\n{"epoch": 3, "loss": 1.0}\n{"epoch": 4, "loss": 0.5}\n{"epo')
    saved = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}, {"epoch": 3, "loss": 1.0}]
    assert runfolder.repair_metrics(str(path), 3, saved) == ([2], [4], [])
    assert [json.loads(line) for line in path.read_text().splitlines()] == saved
    assert runfolder.repair_metrics(str(path), 3, saved) == ([], [], [])       # nothing left to do
    assert runfolder.repair_metrics(str(path), 4, saved[:1]) == ([], [], [4])  # a line no one holds any more
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_resume_from_an_earlier_snapshot_logs_each_epoch_once(tmp_path, no_signal_handlers):
    out = tmp_path / "run"
    train_cld.main(train_cld.parse_args([*TINY, "--epochs", "2", "--save-every", "1", "--out", str(out)]))
    train_cld.main(train_cld.parse_args([*TINY, "--epochs", "2", "--resume", str(out / "epoch_1.pth"),
                                         "--out", str(out)]))
    assert [record["epoch"] for record in records(out)] == [1, 2]


# ---------------------------------------------------------------- one run per folder; no litter

HOLD = ("import sys, time; from lib import runfolder; runfolder.lock(sys.argv[1]); print('held', flush=True); "
        "time.sleep(600)")


def hold_lock(folder):
    """Another process holding folder's lock, as a running train_cld.py does."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_in_a_busy_folder_refuses_and_removes_nothing(one_epoch, tmp_path, no_signal_handlers):
    litter = one_epoch / ".tmp-live.pth"          # as a running run's write in progress
    litter.write_bytes(b"half")
    before = (one_epoch / "metrics.jsonl").read_bytes()
    holder = hold_lock(one_epoch)
    try:
        args = train_cld.parse_args([*TINY, "--epochs", "2", "--resume", str(one_epoch / "last.pth"),
                                     "--out", str(one_epoch)])
        with pytest.raises(SystemExit) as stop:
            cli.run_main(train_cld.main, args)
    finally:
        holder.kill()
        holder.wait()
    assert stop.value.code == (f"error: {one_epoch} is in use by another run (pid {holder.pid} on "
                               f"{socket.gethostname()}, since " + stop.value.code.split(", since ")[1])
    assert "pick another --out" in stop.value.code and "\n" not in stop.value.code
    assert litter.exists() and (one_epoch / "metrics.jsonl").read_bytes() == before
    litter.unlink()


def test_a_dead_run_leaves_no_lock_and_its_temporaries_go(tmp_path, no_signal_handlers):
    out = tmp_path / "run"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)         # dies holding the lock
    holder.wait()
    (out / ".tmp-k2j4h5.pth").write_bytes(b"half a checkpoint")
    (out / "config.json.tmp").write_text("{")
    (out / "keep.txt").write_text("not ours")
    train_cld.main(train_cld.parse_args([*TINY, "--epochs", "1", "--out", str(out)]))
    assert sorted(p.name for p in out.iterdir()) == [".lock", "config.json", "keep.txt", "last.pth", "metrics.jsonl"]


def test_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path):
    runfolder.lock(tmp_path)
    runfolder.lock(tmp_path)                   # the same process again (in-process callers of main)
    code = "import sys; from lib import runfolder; runfolder.lock(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr
    runfolder.release(tmp_path)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- full disks

def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, no_signal_handlers):
    real = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second epoch's last.pth
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 2048 vs 1986")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(checkpoint.torch, "save", save)
    args = train_cld.parse_args([*TINY, "--epochs", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        cli.run_main(train_cld.main, args)
    code = stop.value.code
    assert code.startswith(f"error: could not write {tmp_path}/last.pth ([enforce fail at inline_container.cc"), code
    assert "it needs about 3 MiB (" in code and f"the previous {tmp_path}/last.pth is intact" in code
    assert "\n" not in code
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_file_size_limit_ends_in_one_line(tmp_path):
    """ulimit -f below the checkpoint's size, SIGXFSZ ignored as batch systems do: the write fails with EFBIG."""
    code = ("import resource, signal, sys, train_cld; from lib import cli\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "cli.run_main(train_cld.main, train_cld.parse_args(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, *TINY, "--epochs", "1", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not write {tmp_path}/last.pth (") and "no earlier last.pth was there" in last
    assert not (tmp_path / "last.pth").exists() and not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------- preemption with loader workers

def test_signal_to_the_process_group_with_loader_workers_saves_the_step(tmp_path):
    """SLURM's preemption (SIGTERM) and Ctrl-C (SIGINT, handled alike) reach the workers too; they must leave it
    to the main process, which saves at the current step and exits with 128 + the signal."""
    signum = signal.SIGTERM
    out = tmp_path / "run"
    subset = digits_subset(tmp_path / "digits_700.json", 70)  # 10 steps an epoch
    argv = [*TINY, "--subset", subset, "--data-path", "loader", "--workers", "2", "--epochs", "3", "--knn-every", "1"]
    proc = subprocess.Popen([sys.executable, "train_cld.py", *argv, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:  # epoch 1 and its kNN are done
        time.sleep(0.05)
    # Workers of epoch 2 are busy. An idle machine trains this epoch in about half a second, so the signal may
    # also reach epoch 3's workers; either way it lands inside an epoch, before that epoch's record.
    time.sleep(0.3)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    stopped = re.search(r"stopped by signal in epoch ([23])/3 after step ", err)
    assert stopped, err[-3000:]
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["epoch"] == int(stopped.group(1)) - 1 and 0 < saved["step"] <= 10
    train(*argv, "--resume", out / "last.pth", "--out", out)
    assert [record["epoch"] for record in records(out)] == [1, 2, 3]


# ---------------------------------------------------------------- broken images

def test_broken_images_are_listed_before_training(tmp_path):
    root = write_imagefolder(tmp_path / "tree", classes=2, n_per_class=4, size=16)
    jpeg = tmp_path / "tree" / "train" / "class_0" / "img_9.jpg"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:-200])                                    # truncated: opens, fails to load
    png = tmp_path / "tree" / "val" / "class_1" / "img_2.png"
    png.write_bytes(b"\x89PNG but nothing else")                                  # a kNN test file
    argv = ["--dataset", "imagefolder", "--data", root, "--arch", "resnet20", "--image-size", "16",
            "--batch-size", "4", "--clusters", "2", "--epochs", "1", "--workers", "1", "--out", tmp_path / "run"]
    r = subprocess.run([sys.executable, "train_cld.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    [line] = [line for line in r.stderr.splitlines() if line.strip()]
    assert line.startswith("error: 2 of 17 image files cannot be read: ")
    assert f"{jpeg} (" in line and f"{png} (not an image format PIL recognises)" in line
    assert not (tmp_path / "run").exists()


def test_unreadable_images_reads_every_file_with_workers(tmp_path):
    write_imagefolder(tmp_path, classes=2, n_per_class=40, size=8, splits=("train",))
    paths = sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))
    (tmp_path / "train" / "class_1" / "img_33.png").write_bytes(b"")
    bad = data.unreadable_images(paths, workers=2)
    assert [path for path, _ in bad] == [str(tmp_path / "train" / "class_1" / "img_33.png")]


def test_a_fresh_run_in_the_folder_of_a_running_one_names_the_running_one(one_epoch, no_signal_handlers):
    holder = hold_lock(one_epoch)
    try:
        with pytest.raises(SystemExit) as stop:
            cli.run_main(train_cld.main, train_cld.parse_args([*TINY, "--epochs", "2", "--out", str(one_epoch)]))
    finally:
        holder.kill()
        holder.wait()
    assert stop.value.code.startswith(f"error: {one_epoch} is in use by another run (pid {holder.pid} on ")
