"""Shared pieces of the robustness tests: a CLI runner that rejects tracebacks, tiny
configs, and a messy data folder holding one of every odd file a user might have."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import make_folder

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches: a second intra-op thread only adds waiting, and on a busy 2-core
    machine it makes every convolution ~10x slower. Import this into a test module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(args: list[str], code: int):
    """Run the CLI in-process; assert the exit code and that no traceback leaked."""
    from mobiletune.cli import app

    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    if code == 2:  # a user error: a message on stderr, not a Python exception escaping
        assert isinstance(res.exception, SystemExit), res.exception
        assert ("\n" + res.stderr).count("\nerror:") == 1, res.stderr  # one message
    return res


def write_config(tmp: Path, data_root: Path, name: str = "t", file: str = "cfg.yaml",
                 **sections) -> Path:
    """A tiny, fast config: v3-small, random init, 32 px, no cache, 1-2 steps per epoch."""
    cfg = {"name": name, "output": str(tmp / "runs"), "device": "cpu", "seed": 3,
           "model": {"arch": "mobilenet_v3_small", "weights": "none"},
           "data": {"root": str(data_root), "image_size": 32, "batch_size": 8, "workers": 0,
                    "cache": False, "augment": "light"},
           "train": {"epochs": 1, "lr": 1e-2}}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp / file
    path.write_text(yaml.safe_dump(cfg))
    return path


def rgb(size: tuple[int, int] = (40, 40), seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    # surrogateescape: splits.csv holds file names that are not valid UTF-8 as raw bytes
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def every_entry(root: Path) -> set[str]:
    """Every file and symlink under `root`, as absolute paths, links not followed."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        names = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        out |= {str(Path(dirpath, n).absolute()) for n in names}
    return out


# name -> (builder(class folder) -> path made, expected: "used" or a reason substring)
def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(d: Path) -> Path:
    p = save(rgb((64, 64), 1), d / "truncated.jpg")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return p


def _png16(d: Path) -> Path:
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    return save(Image.fromarray(ramp), d / "deep16.png")


def _gif(d: Path) -> Path:
    frames = [rgb(seed=s).convert("P") for s in (4, 5)]
    p = d / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50)
    return p


def _exif_rotated(d: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return save(rgb((60, 30), 6), d / "rotated.jpg", exif=exif)


def _symlink_loop(d: Path) -> Path:
    (d / "loop").symlink_to("..", target_is_directory=True)
    return d / "loop"


def _link_cycle(d: Path) -> Path:
    (d / "x.jpg").symlink_to("y.jpg")
    (d / "y.jpg").symlink_to("x.jpg")
    return d / "x.jpg"


def _fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe.jpg")  # opening it to decode would block forever
    return d / "pipe.jpg"


def _hidden_folder(d: Path) -> Path:
    return save(rgb(seed=7), d / ".thumbs" / "small.jpg")


DATA_CASES = {
    "zero_byte": (lambda d: _raw(d / "zero.jpg", b""), "empty file"),
    "truncated_jpeg": (_truncated, "unreadable"),
    "text_named_jpg": (lambda d: _raw(d / "notes.jpg", b"hello"), "unreadable"),
    "ds_store": (lambda d: _raw(d / ".DS_Store", b"\0\1\2"), "hidden file"),
    "appledouble": (lambda d: save(rgb(), d / "._photo.jpg"), "hidden file"),
    "not_an_image": (lambda d: _raw(d / "labels.txt", b"x"), "not an image extension"),
    "cmyk_jpeg": (lambda d: save(rgb(seed=2).convert("CMYK"), d / "cmyk.jpg"), "used"),
    "png_16bit": (_png16, "used"),
    "rgba_png": (lambda d: save(rgb(seed=3).convert("RGBA"), d / "alpha.png"), "used"),
    "palette_png": (lambda d: save(rgb(seed=3).convert("P"), d / "palette.png",
                                   transparency=0), "used"),
    "gif": (_gif, "used"),
    "grayscale": (lambda d: save(rgb(seed=5).convert("L"), d / "gray.jpg"), "used"),
    "exif_rotated": (_exif_rotated, "used"),
    "symlink_loop": (_symlink_loop, "symlink loop"),
    "symlink_cycle": (_link_cycle, "looping symbolic link"),
    "hidden_folder": (_hidden_folder, "inside hidden folder"),
    "fifo": (_fifo, "not a regular file"),
}


def make_messy(root: Path) -> dict[str, tuple[str, str]]:
    """A folder with every odd case: good classes named with spaces and non-ASCII, an empty
    class folder, a stray file at the root, a non-UTF-8 file name, and all of DATA_CASES.
    Returns case -> (absolute path, "used" or the expected skip reason)."""
    make_folder(root, classes=("big cat", "hünd"), per_class=5, size=40)
    made = {case: (str(build(root / "big cat").absolute()), expected)
            for case, (build, expected) in DATA_CASES.items()}
    (root / "empty class").mkdir()
    (root / "README.md").write_text("stray file")
    latin1 = save(rgb(seed=9), root / "hünd" / os.fsdecode(b"caf\xe9.jpg"))
    made["non_utf8_name"] = (str(latin1), "used")
    made["stray_file"] = (str(root / "README.md"), "not inside a class folder")
    (root / "everything").symlink_to(".", target_is_directory=True)  # a class-level loop
    made["root_loop"] = (str(root / "everything"), "symlink loop")
    (root / "hünd" / "gone.jpg").symlink_to(root / "deleted.jpg")
    made["broken_link"] = (str(root / "hünd" / "gone.jpg"), "broken")
    return made
