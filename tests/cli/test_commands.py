"""The commands end to end on a tiny folder: train, finetune, predict, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from mobiletune.cli import app
from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint
from tests.conftest import REPO, make_folder, tiny_config
from tests.helpers_runs import make_live_run

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = make_folder(tmp / "data", classes=("red", "green"), per_class=6)
    cfg = tiny_config(tmp, data, data={"cache": False})
    res = runner.invoke(app, ["train", "--config", str(cfg), "--quiet", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    return tmp, data, cfg, res.output


def test_quiet_prints_no_epoch_lines_but_the_log_keeps_them(trained):
    tmp, _, _, output = trained
    assert "head 1:" not in output and "head 2:" not in output
    assert "done." in output and "run directory:" in output  # the summary still comes
    log = (tmp / "runs" / "t" / "train.log").read_text()
    assert "head epoch 1:" in log and "head epoch 2:" in log


def test_train_writes_the_run_directory(trained):
    tmp, data, cfg, _ = trained
    run = tmp / "runs" / "t"
    for name in ("config.yaml", "metrics.csv", "best.pt", "last.pt", "splits.csv",
                 "skipped.csv", "train.log", "curves.png"):
        assert (run / name).is_file(), name
    assert (tmp / "runs" / "latest").resolve() == run.resolve()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "stage,epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"
    assert [r.split(",")[:2] for r in rows[1:]] == [["head", "1"], ["head", "2"]]
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["class_names"] == ["green", "red"] and ckpt["arch"] == "mobilenet_v3_small"
    assert set(ckpt["preprocess"]) == {"resize", "crop", "mean", "std"}
    assert ckpt["config"]["data"]["image_size"] == 32


def test_checkpoint_round_trip_gives_identical_logits(trained):
    tmp, _, _, _ = trained
    ckpt = load_checkpoint(tmp / "runs" / "t")
    a, b = model_from_checkpoint(ckpt), model_from_checkpoint(ckpt)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_second_run_with_same_name_is_kept_beside(trained):
    tmp, _, cfg, _ = trained
    res = runner.invoke(app, ["train", "--config", str(cfg), "--quiet", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert (tmp / "runs" / "t" / "best.pt").is_file() and (tmp / "runs" / "t-2" / "best.pt").is_file()


def test_finetune_makes_a_child_run(trained):
    tmp, _, _, _ = trained
    res = runner.invoke(app, ["finetune", "--from", str(tmp / "runs" / "t"), "--unfreeze", "2",
                              "--lr", "1e-4", "--epochs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    child = tmp / "runs" / "t-ft"
    ckpt = torch.load(child / "last.pt", weights_only=True)
    assert ckpt["stage"] == "finetune" and ckpt["unfrozen_blocks"] == 2
    assert "parent: " + str(tmp / "runs" / "t") in (child / "config.yaml").read_text()


def test_predict_json_lines(trained):
    tmp, data, _, _ = trained
    files = sorted(str(p) for p in (data / "red").glob("*.jpg"))[:3]
    bad = tmp / "broken.jpg"
    bad.write_text("nope")
    res = runner.invoke(app, ["predict", *files, str(bad), "--json", "--top-k", "2",
                              "--checkpoint", str(tmp / "runs" / "t")])
    assert res.exit_code == 2, res.output  # the others are predicted, then exit 2
    assert "1 of 4 input(s) could not be read" in res.stderr
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [x["path"] for x in lines] == files + [str(bad)]
    for x in lines[:3]:
        assert x["label"] in ("red", "green") and x["top_k"][0]["label"] == x["label"]
        assert abs(sum(t["prob"] for t in x["top_k"]) - 1) < 1e-4
    assert "error" in lines[3] and "label" not in lines[3]


def test_predict_errors_exit_2(trained, tmp_path):
    tmp, data, _, _ = trained
    res = runner.invoke(app, ["predict", str(data), "--checkpoint", str(tmp_path / "none.pt")])
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "x.jpg"
    bad.write_text("x")
    res = runner.invoke(app, ["predict", str(bad), "--checkpoint", str(tmp / "runs" / "t")])
    assert res.exit_code == 2 and "could be read" in res.output


def test_user_errors_exit_2_without_traceback(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trian:\n  epochs: 1\n")
    res = runner.invoke(app, ["train", "--config", str(cfg)])
    assert res.exit_code == 2 and "Did you mean 'train'" in res.output
    assert "Traceback" not in res.output
    cfg.write_text(f"data:\n  root: {tmp_path / 'missing'}\nmodel:\n  weights: none\n")
    res = runner.invoke(app, ["train", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "not found" in res.output


def test_help_does_not_import_torch_and_lists_defaults():
    """`--help` answers at once because nothing on its path imports torch (seconds on a
    busy machine); -X importtime lists every module the process imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "mobiletune", "train",
                           "--help"], capture_output=True, text=True, check=True, cwd=REPO,
                          timeout=120)
    assert "--config" in proc.stdout and "--set" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"mobiletune.cli", "typer"} <= imported  # the listing is read right
    assert sorted(m for m in imported if m.split(".")[0] == "torch") == []


def test_predict_with_an_exported_onnx_file(tmp_path):
    run = make_live_run(tmp_path, ("red", "green"), size=32)  # outputs vary across images
    onnx = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", "--format", "onnx", "--checkpoint", str(run),
                              "--out", str(onnx)])
    assert res.exit_code == 0, res.output
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.jpg"))
    outs = []
    for ckpt in (str(run), str(onnx)):
        res = runner.invoke(app, ["predict", *files, "--json", "--checkpoint", ckpt])
        assert res.exit_code == 0, res.output
        outs.append([json.loads(x) for x in res.stdout.strip().splitlines()])
    probs = [x["top_k"][0]["prob"] if x["top_k"][0]["label"] == "red" else
             1 - x["top_k"][0]["prob"] for x in outs[0]]
    assert max(probs) - min(probs) > 0.01  # else the comparison below passes whatever runs
    assert [x["label"] for x in outs[0]] == [x["label"] for x in outs[1]]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(*outs)) < 1e-4


def test_finetune_without_unfreeze_takes_three_blocks(trained):
    tmp, _, _, _ = trained
    res = runner.invoke(app, ["finetune", "--from", str(tmp / "runs" / "t"), "--epochs", "1",
                              "--name", "default-unfreeze", "--quiet"])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(tmp / "runs" / "default-unfreeze" / "last.pt", weights_only=True)
    assert ckpt["unfrozen_blocks"] == 3  # the parent config had no finetune stage


def test_the_fast_exit_still_flushes_runs_exit_handlers_and_waits_for_threads(tmp_path):
    """main() ends with os._exit (skipping the heap teardown that held finished runs for
    1-3 s); what a normal exit does that anyone can see must still happen. The thread
    finishes only once the main thread waits for it (blocked in threading's join), so an
    exit that does not wait never sees the marker, however fast or slow the machine."""
    marker = tmp_path / "thread-done"
    code = textwrap.dedent(f"""
        import atexit, sys, threading, time
        atexit.register(lambda: print('exit handler ran', flush=False))
        waiting = ('join', '_wait_for_tstate_lock', '_shutdown')

        def main_waits_for_a_thread():
            frame = sys._current_frames().get(threading.main_thread().ident)
            return (frame is not None and frame.f_code.co_filename == threading.__file__
                    and frame.f_code.co_name in waiting)

        def work():
            deadline = time.monotonic() + 60  # a bound: a correct exit is seen at once
            while not main_waits_for_a_thread():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)  # how often it looks decides nothing
            open({str(marker)!r}, 'w').close()

        threading.Thread(target=work).start()
        sys.argv = ['mobiletune', '--version']
        from mobiletune.cli import main
        main()
        """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "mobiletune" in res.stdout and "exit handler ran" in res.stdout
    assert marker.is_file()
    bad = subprocess.run([sys.executable, "-m", "mobiletune", "train", "--config",
                          str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "error:" in bad.stderr
