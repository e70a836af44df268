"""torchrun on CPU (gloo, 127.0.0.1): one run for all ranks, the cache filled once, resume.

Every launch runs under a timeout, so a hung rendezvous fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, make_folder, tiny_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MOBILETUNE_CACHE": str(cache),
           "OMP_NUM_THREADS": "1", "MOBILETUNE_DIST_TIMEOUT_MIN": "2"}
    env.pop("RANK", None)
    tmp = cache.parent / "tmp"  # torchrun's torchelastic_* folders stay in the test's tmp_path
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    return env


def _launch(args: list[str], cache: Path, log: Path, **launcher) -> subprocess.Popen:
    opts = launcher or {"nproc-per-node": 2, "master-addr": "127.0.0.1", "master-port": _port()}
    cmd = TORCHRUN + [f"--{k}={v}" for k, v in opts.items()] + ["-m", "mobiletune"] + args
    return subprocess.Popen(cmd, cwd=REPO, env=_env(cache), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, seconds: float) -> int:
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("torchrun did not finish in time (hung rendezvous or collective?)")


def _rows(run: Path) -> list[tuple[str, str]]:
    lines = (run / "metrics.csv").read_text().splitlines()[1:] if (run / "metrics.csv").is_file() else []
    return [tuple(line.split(",")[:2]) for line in lines]


def test_two_ranks_train_one_run_fill_once_and_resume_after_sigterm(tmp_path):
    data = make_folder(tmp_path / "data", per_class=6, size=40)
    cfg = tiny_config(tmp_path, data, train={"epochs": 60},
                      finetune={"unfreeze": 2, "epochs": 2})
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    proc = _launch(["train", "-c", str(cfg), "-q"], cache, tmp_path / "first.log")
    # interrupt once two epochs are on disk: the other 58 and the finetune stage take
    # seconds more (3.6 s to the 61st row on a 2-core box), 180 looks at 20 ms apart
    deadline = time.monotonic() + 150  # a hang guard
    while len(_rows(runs / "t")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # what torchrun gets from a scheduler or Ctrl-C
    _finish(proc, 90)
    first = _rows(runs / "t")
    assert 2 <= len(first) < 62, (tmp_path / "first.log").read_text()[-3000:]
    ckpt = torch.load(runs / "t" / "last.pt", weights_only=True)
    assert "resume" in ckpt  # a resumable last.pt

    # the sharded fill: both ranks computed entries, and every entry was computed once
    packs = list(cache.glob("features/*/packs/*.json"))
    keys = [k for p in packs for k in json.loads(p.read_text())["keys"]]
    writers = {p.name.split("-")[1] for p in packs}
    assert len(keys) == len(set(keys)) == 12 and len(writers) == 2

    proc = _launch(["train", "--resume", str(runs / "t"), "-q"], cache, tmp_path / "resume.log")
    assert _finish(proc, 240) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    rows = _rows(runs / "t")
    want = [("head", str(e)) for e in range(1, 61)] + [("finetune", str(e)) for e in (0, 1, 2)]
    assert rows == want  # every epoch once, in order: one writer
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "t"]  # one run directory
    log = (runs / "t" / "train.log").read_text()
    assert log.count("resumed") == 1 and log.count("head epoch 1:") == 1
    assert len(list(cache.glob("features/*/packs/*.json"))) == len(packs)  # nothing recomputed


def test_user_error_exits_2_on_every_rank_with_one_message(tmp_path):
    """Two launchers (two 'nodes') meeting through c10d on 127.0.0.1, as in a cluster."""
    cfg = tiny_config(tmp_path, tmp_path / "no-such-folder")
    port = _port()
    node = {"nnodes": 2, "nproc-per-node": 1, "rdzv-backend": "c10d",
            "rdzv-endpoint": f"127.0.0.1:{port}", "rdzv-id": "t", "max-restarts": 0}
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    procs = [_launch(["train", "-c", str(cfg)], tmp_path / "cache", log, **node) for log in logs]
    codes = [_finish(p, 120) for p in procs]
    texts = [log.read_text() for log in logs]
    text = "".join(texts)
    assert all(c != 0 for c in codes), (codes, text)  # each launcher fails (torchrun: 1)
    for log in texts:  # its rank's own exit code, from the launcher's failure report
        seen = re.findall(r"exitcode\s*:\s*(-?\d+)", log)
        assert seen and set(seen) == {"2"}, log
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-folder" in errors[0], text  # one message in all
    assert not (tmp_path / "runs").exists()  # nothing made


def test_rank_zero_alone_can_read_every_val_entry(monkeypatch):
    """Under torchrun each rank evaluates its share; rank 0's calibration (which runs on
    rank 0 alone) must see every val image."""
    import numpy as np

    from mobiletune import dist
    from mobiletune.frozen.feeds import CachedData

    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 0)
    val = np.arange(10, dtype=np.float32).reshape(10, 1, 1)
    feed = CachedData(val, [0] * 10, val, list(range(10)), batch_size=4, balance="none")
    share = torch.cat([y for _, y in feed.val_batches()]).tolist()
    whole = torch.cat([y for _, y in feed.val_batches(shard=False)]).tolist()
    assert share == [0, 2, 4, 6, 8] and whole == list(range(10))
