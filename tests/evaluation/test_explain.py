"""explain: Grad-CAM maps of the right shape and range, overlays of the input's aspect, the
prediction equal to predict's, and the randomization sanity check of Adebayo et al. (2018)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import mobiletune
from mobiletune.cli import app
from mobiletune.evaluation.explain import Explainer, grad_cam
from tests.conftest import make_image
from tests.helpers_runs import live_model, make_live_run

runner = CliRunner()
SIZE = 128  # crop; the map is the last block's grid: 128 / 32 = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_live_run(tmp_path_factory.mktemp("explain"), size=SIZE, per_class=3)


def _images(run):
    return sorted(str(p) for p in (run.parent / "data").rglob("*.jpg"))


def test_map_shape_range_and_overlay_aspect(run, tmp_path):
    wide = make_image(tmp_path / "wide.jpg", size=SIZE)
    Image.open(wide).resize((300, 150)).save(wide)
    r = Explainer.from_checkpoint(run).explain_one(str(wide))
    assert r.error is None and r.cam.shape == (SIZE // 32, SIZE // 32)
    assert r.cam.min() >= 0.0 and r.cam.max() == pytest.approx(1.0)
    assert np.ptp(r.cam) > 0.1  # a map, not a constant
    over = r.overlay()
    assert abs(over.width / over.height - 2.0) < 0.02  # same aspect as the input
    assert over.height == Explainer.from_checkpoint(run).pre["resize"]


def test_explain_predicts_what_predict_predicts(run):
    files = _images(run)
    preds = mobiletune.load(run).predict(files)
    exps = Explainer.from_checkpoint(run).explain(files)
    assert [e.label for e in exps] == [p.label for p in preds]
    assert [e.score for e in exps] == pytest.approx([p.score for p in preds], abs=1e-5)
    assert len({e.label for e in exps}) == 2 or np.ptp([e.score for e in exps]) > 0.05


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def test_randomizing_the_head_changes_the_maps():
    """Adebayo et al. (2018): a map that survives randomizing the weights explains the input
    (an edge detector), not the model. Randomize the head: the maps must change."""
    torch.manual_seed(1)
    model = live_model("mobilenet_v2", classes=3)
    x = torch.randn(6, 3, SIZE, SIZE)
    cams, _ = grad_cam(model, x, [0] * 6)
    again, _ = grad_cam(model, x, [0] * 6)
    np.testing.assert_array_equal(cams, again)  # deterministic, so a change means something
    other = [grad_cam(model, x[i:i + 1], [0])[0][0] for i in range(6)]
    np.testing.assert_allclose(np.stack(other), cams, atol=1e-5)  # batching changes nothing
    with torch.no_grad():
        head = model.classifier[-1]
        head.weight.copy_(torch.randn_like(head.weight) * head.weight.std())
    rand, _ = grad_cam(model, x, [0] * 6)
    corr = [_corr(a, b) for a, b in zip(cams, rand)]
    assert np.mean(corr) < 0.5, corr
    assert np.abs(cams - rand).mean() > 0.1


def test_class_option_explains_another_class(run):
    files = _images(run)[:2]
    ex = Explainer.from_checkpoint(run)
    own = ex.explain(files)
    other = {"ants": "bees", "bees": "ants"}
    forced = [ex.explain_one(f, ex.target(other[e.label])) for f, e in zip(files, own)]
    assert [f.explained for f in forced] == [other[e.label] for e in own]
    assert [f.label for f in forced] == [e.label for e in own]  # the prediction is unchanged
    assert any(not np.allclose(a.cam, b.cam, atol=1e-3) for a, b in zip(own, forced))


def test_cli_on_a_folder_writes_overlays_and_json(run, tmp_path):
    data = run.parent / "data" / "val"
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    res = runner.invoke(app, ["explain", str(data), str(bad), "--checkpoint", str(run),
                              "--json", "--out", str(tmp_path / "cams")])
    assert res.exit_code == 2, res.output  # one input failed; the others are explained
    lines = [json.loads(x) for x in res.stdout.strip().splitlines()]
    good = [x for x in lines if "error" not in x]
    assert len(good) == len(list(data.rglob("*.jpg"))) and lines[-1]["path"] == str(bad)
    for x in good:
        cam = np.asarray(x["cam"])
        assert cam.shape == (4, 4) and 0.0 <= cam.min() and cam.max() <= 1.0
        assert x["class"] == x["label"] and Image.open(x["overlay"]).size[1] == 146
    again = runner.invoke(app, ["explain", good[0]["path"], "--checkpoint", str(run),
                                "--out", str(tmp_path / "cams")])
    assert again.exit_code == 0  # a second call never replaces an overlay
    assert len(list((tmp_path / "cams").glob("*.png"))) == len(good) + 1


def test_cli_refuses_an_unknown_class_and_an_export(run, tmp_path):
    res = runner.invoke(app, ["explain", _images(run)[0], "--checkpoint", str(run),
                              "--class", "wasps"])
    assert res.exit_code == 2 and "ants, bees" in res.output
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    res = runner.invoke(app, ["explain", _images(run)[0], "--checkpoint", str(onnx)])
    assert res.exit_code == 2 and "PyTorch checkpoint" in res.output
    assert not (run / "explain").exists()


def test_report_shows_an_overlay_beside_each_confident_mistake(run, tmp_path):
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "ev" / "report.html").read_text()
    wrong = json.loads((tmp_path / "ev" / "metrics.json").read_text())["accuracy"] < 1.0
    assert wrong  # the live model errs on some val images, so the gallery is not empty
    assert page.count('alt="Grad-CAM of') == page.count('class="pair"') >= 1
