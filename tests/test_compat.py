"""What today's files must keep meaning across code moves: a feature cache's key and a
checkpoint's pickle name no module of ours."""

from __future__ import annotations

import hashlib
import pickletools
import zipfile

import torch

from mobiletune.frozen.cache import code_source
from mobiletune.model.checkpoint import save_checkpoint
from tests.helpers_runs import make_live_run

# sha256 of code_source() as e0a76dd (the last commit before the folder layout) computed it
# from mobiletune/transforms.py, images.py and frozen/engine.Normalized. If this fails, the
# code that makes pixels changed and every user's cache is rebuilt: update it only on purpose.
SOURCE_AT_E0A76DD = "74af8746556fd32981fe14e1912b645cf87656d0ff885f3b02a544a533fc425a"


def test_moving_modules_kept_the_feature_cache_key():
    assert hashlib.sha256(code_source().encode()).hexdigest() == SOURCE_AT_E0A76DD


def _globals(path) -> set[str]:
    """Every class or function a torch.save file's pickle refers to."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    out, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "GLOBAL":
            out.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            out.add(".".join(strings[-2:]))
    return out


def test_checkpoints_name_no_module_of_ours(tmp_path):
    """A checkpoint is a plain dict of tensors, strings and numbers: no mobiletune class is
    pickled, so moving modules cannot break loading one (weights_only=True checks the rest)."""
    run = make_live_run(tmp_path)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    path = save_checkpoint(tmp_path / "again.pt", ckpt)
    names = _globals(run / "best.pt") | _globals(path)
    assert names and any(n.startswith("torch") for n in names)  # the reader sees globals
    assert not [n for n in names if n.startswith("mobiletune")]
    assert torch.load(path, weights_only=True)["class_names"] == ckpt["class_names"]
