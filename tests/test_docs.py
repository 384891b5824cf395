"""The documentation holds together: every relative link in README.md and docs/ reaches a file of the
repository, the README stays an entrance page, and the README's train_cld.py commands parse. No training."""
import glob
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train_cld  # noqa: E402

README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(text):
    """The targets of the Markdown links and images in text, outside code blocks and code spans."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def test_link_finder_reads_links_and_skips_code():
    text = "[a](x.md) ![b](img/y.png#top) `[c](no.md)`\n```bash\n[d](no2.md)\n```\n[e](z.md \"title\")"
    assert links(text) == ["x.md", "img/y.png#top", "z.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda path: os.path.relpath(path, ROOT))
def test_relative_links_reach_files_of_the_repository(page):
    text = open(page, encoding="utf-8").read()
    broken = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):  # http(s), mailto, anchors
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#", 1)[0]))
        if os.path.commonpath([path, ROOT]) != ROOT:
            broken.append(f"{target} (outside the repository)")
        elif not os.path.exists(path):
            broken.append(target)
    assert not broken, f"{os.path.relpath(page, ROOT)}: links to missing files: {broken}"


def test_readme_is_an_entrance_page():
    with open(README, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail into docs/"


def readme_training_commands():
    """Every command of README.md that runs train_cld.py, as its arguments: lines that start with
    `python train_cld.py` or `torchrun ... train_cld.py` (also after `&&` on one line), continuation lines
    joined, comments dropped."""
    with open(README, encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for part in line.split("&&"):
            part = part.strip()
            words = shlex.split(part, comments=True) if part.startswith(("python", "torchrun")) else []
            if "train_cld.py" not in words:
                continue
            if words[0] == "python" and words[1] != "train_cld.py":
                continue  # another script that takes train_cld.py as an argument
            commands.append((part, words[words.index("train_cld.py") + 1:]))
    return commands


COMMANDS = readme_training_commands()


def test_the_readme_has_training_commands():
    assert len(COMMANDS) >= 5


def placeholders_replaced(argv, tmp_path):
    """Paths in a documented command stand for the reader's own: --data becomes a folder that is not there (the
    loader names what to fetch later), --subset and --resume an existing file, --out a fresh folder."""
    argv = list(argv)
    stand_in = tmp_path / "stand-in.json"
    stand_in.write_text("{}")
    for i, word in enumerate(argv[:-1]):
        if word == "--data":
            argv[i + 1] = str(tmp_path / "DATA")
        elif word in ("--subset", "--resume") and argv[i + 1] != "auto":
            argv[i + 1] = str(stand_in)
        elif word == "--out":
            argv[i + 1] = str(tmp_path / "out")
    return argv


@pytest.mark.parametrize("command,argv", COMMANDS, ids=[command for command, _ in COMMANDS])
def test_readme_training_commands_parse(command, argv, tmp_path):
    try:
        args = train_cld.parse_args(placeholders_replaced(argv, tmp_path))
    except SystemExit as stop:
        pytest.fail(f"train_cld.parse_args refused the README's command (exit {stop.code}): {command}")
    assert args.out == str(tmp_path / "out")
