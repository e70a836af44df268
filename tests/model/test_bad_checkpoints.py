"""Bad checkpoints are refused with exit 2 and never executed: hostile pickles, damaged
files, checkpoints that do not fit the command. (Run directories and files that are never
overwritten or left half-written: tests/test_fileio.py.)"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import WEIGHTS, make_folder
from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
    write_config,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished 2-class run to damage copies of."""
    tmp = tmp_path_factory.mktemp("ckpt")
    data = make_folder(tmp / "data", classes=("ant", "bee"), per_class=4, size=32)
    invoke(["train", "--config", write_config(tmp, data), "-q"], 0)
    return tmp / "runs" / "t"


def _copy_run(run: Path, dest: Path, **changes) -> Path:
    """A copy of `run` whose best.pt and last.pt have `changes` applied."""
    shutil.copytree(run, dest)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(dest / name, weights_only=True)
        ckpt.update(changes)
        torch.save(ckpt, dest / name)
    return dest


class Hostile:
    """Unpickling this creates `path`: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_files(tmp: Path, marker: Path) -> list[Path]:
    zipped, legacy = tmp / "zip.pt", tmp / "legacy.pt"
    torch.save({"model": Hostile(marker), "format_version": 1}, zipped)
    legacy.write_bytes(pickle.dumps({"model": Hostile(marker)}, protocol=2))
    return [zipped, legacy]


def _commands(ckpt: Path, run_dir: Path, image: Path) -> list[list]:
    """Every command that reads a checkpoint, pointed at `ckpt` (or the run dir holding it)."""
    return [["predict", image, "--checkpoint", ckpt],
            ["finetune", "--from", ckpt, "--unfreeze", "1", "-q"],
            ["train", "--resume", run_dir, "-q"]]


def _image(run: Path) -> Path:
    return next((run.parent.parent / "data" / "ant").glob("*.jpg"))


def test_hostile_pickle_is_refused_and_never_runs(run, tmp_path):
    marker = tmp_path / "pwned"
    files = _hostile_files(tmp_path, marker)
    with open(files[1], "rb") as f:  # the control: a plain unpickler does run it
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    for i, evil in enumerate(files):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        shutil.copy(evil, run_dir / "last.pt")
        shutil.copy(evil, run_dir / "best.pt")
        for args in _commands(evil, run_dir, _image(run)):
            res = invoke(args, 2)
            assert "could not be loaded safely" in res.stderr and "nothing in it was executed" \
                in res.stderr, args
            assert not marker.exists(), args


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "image", "torchvision"])
def test_unreadable_checkpoint_is_exit_2(run, tmp_path, damage):
    run_dir = shutil.copytree(run, tmp_path / "run")
    good = (run / "best.pt").read_bytes()
    if damage == "torchvision" and not WEIGHTS.is_file():
        pytest.skip("no offline torchvision weights in ../shared")
    content = {"truncated": good[: len(good) // 2], "empty": b"", "text": b"not a model\n",
               "image": _image(run).read_bytes(),
               "torchvision": WEIGHTS.read_bytes() if damage == "torchvision" else b""}[damage]
    for name in ("best.pt", "last.pt"):
        (run_dir / name).write_bytes(content)
    for args in _commands(run_dir / "best.pt", run_dir, _image(run)):
        res = invoke(args, 2)
        assert "best.pt" in res.stderr or "last.pt" in res.stderr
        want = "not a mobiletune checkpoint" if damage == "torchvision" else "could not be loaded"
        assert want in res.stderr, (args, res.stderr)


@pytest.mark.parametrize("changes, needles", [  # the message names one of the needles
    ({"arch": "mobilenet_v2"}, ["does not fit mobilenet_v2", "holds a mobilenet_v2 model"]),
    ({"class_names": ["ant", "bee", "cow"]}, ["does not fit", "same classes", "now holds"]),
    ({"class_names": "ant,bee"}, ["bad class_names"]),
    ({"arch": "resnet50"}, ["bad arch"]),
    ({"config": ["not", "a", "dict"]}, ["bad config"]),
    ({"format_version": 99}, ["Upgrade mobiletune"]),
])
def test_checkpoint_that_does_not_fit_is_exit_2(run, tmp_path, changes, needles):
    bad = _copy_run(run, tmp_path / "bad", **changes)
    for args in _commands(bad / "best.pt", bad, _image(run)):
        err = invoke(args, 2).stderr
        assert any(n in err for n in needles), (args, err)


def test_finetune_with_another_arch_or_classes_is_exit_2(run, tmp_path):
    res = invoke(["finetune", "--from", run, "--arch", "mobilenet_v2", "-q"], 2)
    assert "mobilenet_v3_small" in res.stderr and "--arch" in res.stderr
    three = make_folder(tmp_path / "three", classes=("ant", "bee", "cow"), per_class=3, size=32)
    res = invoke(["finetune", "--from", run, "--data", three, "-q"], 2)
    assert "same classes" in res.stderr and "cow" in res.stderr
    res = invoke(["finetune", "--from", run, "--unfreeze", "14", "-q"], 2)
    assert "'finetune.unfreeze' in the command line" in res.stderr and "1-13" in res.stderr
    res = invoke(["finetune", "--from", run, "--unfreeze", "2", "--lr", "0", "-q"], 2)
    assert "'finetune.lr' in the command line" in res.stderr
    assert not list(run.parent.glob("t-ft*"))  # a refused finetune leaves no run behind
