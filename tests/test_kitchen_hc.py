"""build_kitchen_hc.py on GMU Kitchens scenes written in the real layout (VOC XML, PNG frames)."""
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

import build_kitchen_hc
from build_kitchen_hc import CATEGORIES, pixel_box
from lib.data import DatasetError, load_dataset
from tests.fixtures import write_gmu_scene, write_imagefolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH, HEIGHT = 120, 80


def scene_objects(scene):
    """Every category once (category c at columns 10c+1..10c+8, rows 5..20+scene, 1-based), plus, in
    scene 1, a float box running off the image, a box wholly outside it and a foreign object."""
    objects = [(name, 10 * c + 1, 5, 10 * c + 8, 20 + scene) for c, name in enumerate(CATEGORIES)]
    if scene == 1:
        objects += [("red_bull", 100.6, 70.4, 130.2, 90.0), ("pringles_bbq", 200, 200, 220, 220),
                    ("some_other_object", 1, 1, 10, 10)]
    return objects


@pytest.fixture
def gmu(tmp_path):
    root = tmp_path / "gmu"
    for scene in range(1, 10):
        write_gmu_scene(root, scene, [scene_objects(scene)], size=(WIDTH, HEIGHT))
    return root


def build(capsys, gmu, out, *extra):
    build_kitchen_hc.main(build_kitchen_hc.parse_args(["--gmu", str(gmu), "--out", str(out), *map(str, extra)]))
    return capsys.readouterr().out


def crop_pixels(out, split, name, file):
    return np.asarray(Image.open(os.path.join(out, split, name, file)))


def test_pixel_box():
    assert pixel_box((1, 1, 10, 5), 100, 100) == (0, 0, 10, 5)           # 1-based, inclusive
    assert pixel_box((2.4, 2.5, 9.6, 5.49), 100, 100) == (1, 2, 10, 5)   # floats to the nearest pixel
    assert pixel_box((-5, 90, 20, 130), 100, 100) == (0, 89, 20, 100)    # clamped to the image
    assert pixel_box((150, 1, 160, 5), 100, 100) is None                 # nothing inside
    assert pixel_box((10, 10, 5, 20), 100, 100) is None                  # xmax before xmin


def test_fold1_crops_exactly_the_boxes(gmu, tmp_path, capsys):
    out = tmp_path / "Kitchen-HC"
    summary = build(capsys, gmu, out, "--fold", 1, "--size", 0)
    assert sorted(os.listdir(out)) == ["test", "train"]
    assert sorted(os.listdir(out / "train")) == sorted(CATEGORIES)
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    # fold 1: train scenes 1,3,6,7,8,9, test scenes 2,4,5; scene 1 adds one red_bull crop
    train_files = os.listdir(out / "train" / "hunts_sauce")
    assert sorted(train_files) == [f"scene{s}_rgb_1_3.png" for s in (1, 3, 6, 7, 8, 9)]
    assert sorted(os.listdir(out / "test" / "hunts_sauce")) == [f"scene{s}_rgb_1_3.png" for s in (2, 4, 5)]
    assert len(os.listdir(out / "train" / "red_bull")) == 7
    # the crop of category 3 in scene 4: columns 30..37, rows 4..23 (0-based); red = column, green = row
    pixels = crop_pixels(out, "test", "hunts_sauce", "scene4_rgb_1_3.png")
    assert pixels.shape == (20, 8, 3)
    assert pixels[0, 0].tolist() == [30, 4, 41] and pixels[-1, -1].tolist() == [37, 23, 41]
    # the float box running off the image: columns 100..119, rows 69..79
    pixels = crop_pixels(out, "train", "red_bull", "scene1_rgb_1_11.png")
    assert pixels.shape == (11, 20, 3) and pixels[0, 0, :2].tolist() == [100, 69]
    lines = summary.splitlines()
    assert lines[0].split() == ["category", "train", "test"]
    assert lines[1].split() == ["coca_cola_glass_bottle", "6", "3"]
    assert lines[-2].split() == ["total", "67", "33"]
    assert "ignored 1 objects of other categories (some_other_object); skipped 1 boxes" in lines[-1]


def test_resized_tree_loads_as_kitchen_hc_and_imagefolder(gmu, tmp_path, capsys):
    out = tmp_path / "khc"
    build(capsys, gmu, out, "--fold", 3)
    for name in ("kitchen-hc", "imagefolder"):
        train, test = load_dataset(name, str(out), "train"), load_dataset(name, str(out), "test")
        assert (len(train), len(test)) == (66, 34)  # fold 3 tests on scenes 1,7,8: scene 1's extra crop
        assert train.classes == test.classes == sorted(CATEGORIES) and train.num_classes == 11
        img, target, _ = test[0]
        assert img.size == (32, 32) and img.mode == "RGB" and target == 0


def test_released_folder_loads(tmp_path):
    # The authors' release (their README): Kitchen-HC/train/<category>/ and Kitchen-HC/test/<category>/.
    root = write_imagefolder(tmp_path / "Kitchen-HC", classes=list(CATEGORIES), n_per_class=2, size=32,
                             splits=("train", "test"))
    test = load_dataset("imagefolder", root, "test")
    assert len(test) == 22 and test.num_classes == 11 and test.root.endswith("test")
    assert len(load_dataset("kitchen-hc", root, "train")) == 22
    write_imagefolder(root, classes=list(CATEGORIES), n_per_class=1, size=32, splits=("val",))
    assert load_dataset("kitchen-hc", root, "test").root.endswith("test")  # the authors' loader tests on test/
    assert load_dataset("imagefolder", root, "test").root.endswith("val")


def test_bad_inputs(gmu, tmp_path, capsys):
    out = tmp_path / "out"

    def fails(match, *extra, gmu_root=gmu):
        with pytest.raises(DatasetError, match=match) as error:
            build(capsys, gmu_root, out, *extra)
        assert "\n" not in str(error.value)
        assert not os.path.exists(out) and not [f for f in os.listdir(tmp_path) if ".tmp-" in f]

    fails("does not exist; download the GMU Kitchens", gmu_root=tmp_path / "nowhere")
    note = gmu / "gmu_scene_005" / "Annotations" / "rgb_1.xml"
    text = note.read_text()
    note.write_text(text.replace("<xmin>41</xmin>", "<xmin>forty</xmin>"))
    fails("rgb_1.xml: object 'mahatma_rice' has no numeric bndbox/xmin .got 'forty'.")
    note.write_text(text[:-20])
    fails("rgb_1.xml is not valid XML")
    note.write_text("<html></html>")
    fails("rgb_1.xml is not a PASCAL VOC annotation")
    note.write_text(text)
    (gmu / "gmu_scene_005" / "Images" / "rgb_1.png").write_bytes(b"not a png")
    fails("rgb_1.png is not a readable image")
    os.remove(gmu / "gmu_scene_005" / "Images" / "rgb_1.png")
    fails("rgb_1.xml has no image")
    os.rename(gmu / "gmu_scene_005", gmu / "scene_5")
    fails("gmu_scene_005 not found")
    os.rename(gmu / "scene_5", gmu / "gmu_scene_005")
    out.mkdir()
    with pytest.raises(DatasetError, match="already exists"):
        build(capsys, gmu, out)


def test_command_line_errors(tmp_path, monkeypatch, capsys):
    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["build_kitchen_hc.py", *map(str, argv)])
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(os.path.join(ROOT, "build_kitchen_hc.py"), run_name="__main__")
        return stop.value.code

    code = run("--gmu", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code.startswith("error: --gmu") and "\n" not in code
    assert run("--gmu", tmp_path, "--out", tmp_path / "out", "--fold", 4) == 2
    assert run("--gmu", tmp_path, "--out", tmp_path / "out", "--size", -1) == 2
    assert "--size must be 0 or positive" in capsys.readouterr().err
