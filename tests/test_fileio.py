"""Run directories and files are never overwritten or left half-written: a name taken
gets the next free one (fileio.new_run_dir), a failed write leaves the old file whole
(fileio.atomic_write), and a full disk is exit 2 that keeps the last saved checkpoint."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch

from mobiletune.fileio import atomic_write, new_run_dir
from tests.conftest import make_folder
from tests.helpers_robust import (
    invoke,
    one_thread,  # noqa: F401 (autouse fixture)
    write_config,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny 2-class folder to train on."""
    return make_folder(tmp_path_factory.mktemp("fileio") / "data", classes=("ant", "bee"),
                       per_class=4, size=32)


def test_runs_with_one_name_live_side_by_side(data, tmp_path):
    out = tmp_path / "runs"
    (out / "latest").mkdir(parents=True)  # a real folder the user named `latest`
    (out / "cats-2").write_text("the user's notes")  # a file in the way of the 2nd name
    dirs = [new_run_dir(out, "cats") for _ in range(3)]
    assert [d.name for d in dirs] == ["cats", "cats-3", "cats-4"]
    assert (out / "cats-2").read_text() == "the user's notes"
    cfg = write_config(tmp_path, data, name="twin")
    for _ in range(2):
        invoke(["train", "--config", cfg, "-q"], 0)
    for d in ("twin", "twin-2"):
        ckpt = torch.load(out / d / "best.pt", weights_only=True)
        assert ckpt["class_names"] == ["ant", "bee"] and (out / d / "metrics.csv").is_file()
    assert (out / "latest").is_dir() and not (out / "latest").is_symlink()


@pytest.mark.parametrize("fits", [1, 3])
def test_disk_full_is_exit_2_and_keeps_the_saved_checkpoint(data, tmp_path, monkeypatch, fits):
    from mobiletune.training import runstate

    real, calls = runstate.save_checkpoint, []

    def full_after(path, ckpt):
        calls.append(path)
        if len(calls) > fits:  # the first `fits` checkpoints fit, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, ckpt)

    monkeypatch.setattr(runstate, "save_checkpoint", full_after)
    cfg = write_config(tmp_path, data, train={"epochs": 2})
    res = invoke(["train", "--config", cfg, "-q"], 2)
    assert "No space left on device" in res.stderr
    if fits == 1:  # full before the first epoch was saved: no half-made run is left
        assert not (tmp_path / "runs" / "t").exists()
        return
    # start's last.pt, then the stage end's best.pt and last.pt fit: that epoch is kept,
    # resumable (epochs reach the disk at stage ends, runstate.CHECKPOINT_EVERY_S)
    ckpt = torch.load(tmp_path / "runs" / "t" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and "resume" in ckpt


def test_atomic_write_leaves_the_old_file_whole_on_failure(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"previous, complete")

    def half_then_fail(f: io.BufferedWriter) -> None:
        f.write(b"half of a new")
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"previous, complete"
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind
