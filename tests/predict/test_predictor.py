"""mobiletune.load(...).predict(...): one predictor for runs, checkpoints and exports, equal
to `mobiletune predict --json`; TorchScript recognised by its layout only; failed inputs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mobiletune
from mobiletune.cli import app
from mobiletune.deploy.export import export_checkpoint
from mobiletune.errors import CheckpointError
from mobiletune.model.checkpoint import load_checkpoint
from mobiletune.predict.backends import is_torchscript
from tests.helpers_runs import make_live_run
from tests.numerics import float_tolerance

runner = CliRunner()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A run whose model's probabilities vary across images, its ONNX and TorchScript exports,
    and its images."""
    root = tmp_path_factory.mktemp("pred")
    run = make_live_run(root)
    ckpt = load_checkpoint(run)
    onnx = export_checkpoint(ckpt, "onnx", root / "m.onnx", latency_budget_s=0.0).path
    script = export_checkpoint(ckpt, "torchscript", root / "m.pt", latency_budget_s=0.0).path
    files = sorted(str(p) for p in (root / "data").rglob("*.jpg"))
    return run, onnx, script, files


def _cli_json(files: list[str], checkpoint: Path) -> tuple[int, list[dict]]:
    res = runner.invoke(app, ["predict", *files, "--json", "--top-k", "2",
                              "--checkpoint", str(checkpoint)])
    return res.exit_code, [json.loads(x) for x in res.stdout.strip().splitlines()]


def test_outputs_vary_so_the_comparisons_below_can_fail(live):
    run, _, _, files = live
    scores = [r.score for r in mobiletune.load(run).predict(files)]
    assert np.ptp(scores) > 0.05


@pytest.mark.parametrize("which", [0, 1, 2], ids=["run", "onnx", "torchscript"])
def test_load_predict_equals_predict_json(live, which):
    files = live[3]
    model = live[which]
    code, lines = _cli_json(files, model)
    assert code == 0
    preds = mobiletune.load(model).predict(files, top_k=2)
    assert [p.to_json() for p in preds] == lines
    p = preds[0]
    assert p.label == lines[0]["label"] and p.score == pytest.approx(lines[0]["confidence"], abs=1e-6)
    assert set(p.probs) == set(mobiletune.load(model).class_names) == {"ants", "bees"}
    assert sum(p.probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_every_format_predicts_like_best_pt(live):
    run, onnx, script, files = live
    ref = np.array([[r.probs[c] for c in ("ants", "bees")] for r in mobiletune.load(run).predict(files)])
    for model in (onnx, script):
        got = np.array([[r.probs[c] for c in ("ants", "bees")]
                        for r in mobiletune.load(model).predict(files)])
        assert (got.argmax(1) == ref.argmax(1)).all()
        tol = float_tolerance(mobiletune.load(run).backend.module)
        np.testing.assert_allclose(got, ref, rtol=0, atol=tol)


def test_pil_images_predict_like_their_files(live):
    run, _, _, files = live
    model = mobiletune.load(run)
    images = [Image.open(f) for f in files[:3]]
    by_image = model.predict(images)
    by_path = model.predict(files[:3])
    assert [p.path for p in by_image] == [None] * 3
    for a, b in zip(by_image, by_path):
        assert a.probs == pytest.approx(b.probs, abs=1e-6)
    assert model.predict(files[0])[0].label == by_path[0].label  # one path, not a list


def test_torchscript_export_is_a_checkpoint_for_predict(live):
    run, _, script, files = live
    assert is_torchscript(script) and not is_torchscript(run / "best.pt")
    code, lines = _cli_json(files, script)
    _, ref = _cli_json(files, run)
    assert code == 0 and [x["label"] for x in lines] == [x["label"] for x in ref]


class _Payload:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("pwned",))


def test_a_pt_that_fails_the_safe_load_is_never_run_as_torchscript(tmp_path, capsys):
    bad = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, bad)
    assert not is_torchscript(bad)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        mobiletune.load(bad)
    assert "pwned" not in capsys.readouterr().out
    (tmp_path / "junk.pt").write_bytes(pickle.dumps([1, 2]))
    assert not is_torchscript(tmp_path / "junk.pt")


def test_unreadable_inputs_get_errors_the_rest_predicted_exit_2(live, tmp_path):
    run, _, _, files = live
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    inputs = [files[0], str(bad), str(tmp_path / "missing.jpg"), files[1]]
    preds = mobiletune.load(run).predict(inputs)
    assert [p.error is None for p in preds] == [True, False, False, True]
    assert preds[2].error == "file not found" and preds[1].label is None
    res = runner.invoke(app, ["predict", *inputs, "--checkpoint", str(run)])
    assert res.exit_code == 2
    assert "error: 2 of 4 input(s) could not be read" in res.stderr
    assert "bees" in res.stdout or "ants" in res.stdout  # the others are in the table


def test_batches_on_several_workers_keep_every_result_with_its_input(live, tmp_path, monkeypatch):
    """Batches finish in any order on several workers: each probability row and each error
    must still land on its own input (distinct errors, rows checked one image at a time)."""
    monkeypatch.setattr("mobiletune.predict.predictor.workers", lambda: 3)
    run, _, _, files = live
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    inputs = files[:2] + [str(tmp_path / "missing.jpg")] + files[2:5] + [str(bad)] + files[5:8]
    model = mobiletune.load(run)
    preds = model.predict(inputs, batch_size=2)
    alone = [model.predict(x)[0] for x in inputs]
    rows = [p.probs[model.class_names[0]] for p in alone if p.error is None]
    assert np.std(rows) > 1e-3  # outputs vary: a row on the wrong input would show
    assert [p.path for p in preds] == inputs
    for p, a in zip(preds, alone):
        assert p.error == a.error
        assert p.probs == pytest.approx(a.probs, abs=1e-5)
    assert preds[2].error == "file not found" and preds[6].error.startswith("unreadable")


def test_a_finetuned_checkpoint_runs_its_frozen_part_from_the_cached_export(tmp_path, monkeypatch):
    """Scoring a fine-tuned run: the blocks training left frozen run from the export its
    cache fill made (nothing new is exported), the trained blocks in PyTorch, and the
    probabilities are the whole model's."""
    from mobiletune.data.images import load_image
    from mobiletune.data.preprocess import crop_uint8, normalize
    from mobiletune.frozen.engine import frozen_engine
    from mobiletune.model.backbone import preprocess_spec, split
    from tests.helpers_runs import live_model

    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mobiletune.predict.backends.ORT_FROM", 1)  # a dozen images go to ORT
    run = make_live_run(tmp_path)
    ckpt = load_checkpoint(run)
    model = live_model()
    with torch.no_grad():  # "fine-tuned": the last two blocks differ from the pretrained ones
        for p in model.features[-2:].parameters():
            p.mul_(1.1)
    pre = preprocess_spec("mobilenet_v3_small", "none", 64)
    frozen_engine(split(model, 2)[0], torch.device("cpu"), tmp_path / "cache", 64, pixels=pre)
    engines = sorted((tmp_path / "cache" / "engines").iterdir())  # what the fill exported
    ckpt.update(stage="finetune", unfrozen_blocks=2, model=model.state_dict())
    torch.save(ckpt, run / "best.pt")
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.jpg"))
    probs, _ = mobiletune.load(run).predict_probs(files)
    assert sorted((tmp_path / "cache" / "engines").iterdir()) == engines  # no new export
    x = normalize(np.stack([crop_uint8(load_image(f, pre["resize"]), pre) for f in files]), pre)
    with torch.no_grad():
        whole = torch.softmax(model.eval()(torch.from_numpy(x)), 1).numpy()
    assert whole[:, 0].std() > 1e-3  # outputs vary: the comparison can fail
    assert np.allclose(probs, whole, atol=1e-4)


def test_a_head_only_checkpoint_runs_the_blocks_its_run_cached_from_that_export(
        tmp_path, monkeypatch):
    """A head-only run caches at the finetune boundary, so its cache holds the export of the
    blocks before it, not of the whole frozen backbone. Scoring the run uses that file and
    exports nothing (the backbone export took 0.4 s of every `train`), and the probabilities
    are still the whole model's."""
    from mobiletune.config.schema import finetune_depth
    from mobiletune.data.images import load_image
    from mobiletune.data.preprocess import crop_uint8, normalize
    from mobiletune.frozen import engine
    from mobiletune.model.backbone import preprocess_spec, split

    monkeypatch.setenv("MOBILETUNE_CACHE", str(tmp_path / "cache"))
    run = make_live_run(tmp_path)
    ckpt = load_checkpoint(run)
    depth = finetune_depth(ckpt["arch"], ckpt["config"]["finetune"]["unfreeze"])
    assert depth > 0 and ckpt["unfrozen_blocks"] == 0
    model = mobiletune.load(run).backend.module
    pre = preprocess_spec("mobilenet_v3_small", "none", 64)
    # what the head run's cache fill exported: the blocks before the finetune boundary
    engine.frozen_engine(split(model, depth)[0], torch.device("cpu"), tmp_path / "cache", 64,
                         pixels=pre)
    exports = []
    real = engine.onnx_bytes
    monkeypatch.setattr(engine, "onnx_bytes", lambda *a, **k: exports.append(a) or real(*a, **k))
    monkeypatch.setattr("mobiletune.predict.backends.ORT_FROM", 1)  # a dozen images: ORT
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.jpg"))
    probs, _ = mobiletune.load(run).predict_probs(files)
    assert exports == []  # the cached file ran; nothing was exported again
    x = normalize(np.stack([crop_uint8(load_image(f, pre["resize"]), pre) for f in files]), pre)
    with torch.no_grad():
        whole = torch.softmax(model.eval()(torch.from_numpy(x)), 1).numpy()
    assert whole[:, 0].std() > 1e-3  # outputs vary: the comparison can fail
    assert np.allclose(probs, whole, atol=1e-4)
