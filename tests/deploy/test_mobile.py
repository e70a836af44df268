"""Exports for apps: ONNX --uint8-input (always), TFLite and Core ML (optional extras; those
tests skip, with the reason, where the extra is not installed)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import mobiletune
from mobiletune.cli import app
from mobiletune.deploy.export import export_checkpoint
from mobiletune.errors import CheckpointError, MissingExtraError, MobiletuneError
from mobiletune.model.checkpoint import load_checkpoint
from tests.helpers_runs import make_live_run

runner = CliRunner()
FAST = {"latency_budget_s": 0.0}
HAS_TFLITE = all(importlib.util.find_spec(m) for m in ("litert_torch", "ai_edge_quantizer",
                                                       "ai_edge_litert"))
HAS_COREML = importlib.util.find_spec("coremltools") is not None
needs_tflite = pytest.mark.skipif(not HAS_TFLITE, reason="extra mobiletune[tflite] not "
                                  "installed (litert-torch, ai-edge-quantizer, ai-edge-litert)")
needs_coreml = pytest.mark.skipif(not HAS_COREML, reason="extra mobiletune[coreml] not "
                                  "installed (coremltools)")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("mobile")
    run = make_live_run(root)
    files = sorted(str(p) for p in (root / "data").rglob("*.jpg"))
    ref = mobiletune.load(run).predict(files)
    assert np.ptp([r.score for r in ref]) > 0.05  # outputs vary: the comparisons can fail
    return run, files, ref


def _agrees(model, files, ref, atol):
    got = mobiletune.load(model).predict(files)
    assert [g.label for g in got] == [r.label for r in ref]
    assert max(abs(g.score - r.score) for g, r in zip(got, ref)) < atol


def test_onnx_uint8_input_takes_the_crop_and_gives_probabilities(live):
    import onnx

    run, files, ref = live
    report = export_checkpoint(load_checkpoint(run), "onnx", uint8_input=True, **FAST)
    assert report.path.name == "model.uint8.onnx" and report.agreement == 1.0
    proto = onnx.load(str(report.path))
    inp = proto.graph.input[0].type.tensor_type
    assert inp.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.shape.dim][1:] == [64, 64, 3]  # NHWC, batch free
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["class_names"]) == ["ants", "bees"] and props["output"] == "probabilities"
    _agrees(report.path, files, ref, 1e-5)


@pytest.mark.parametrize("extra,fmt,module", [("tflite", "tflite", "litert_torch"),
                                              ("coreml", "coreml", "coremltools")])
def test_missing_extra_is_one_line_exit_2(live, monkeypatch, extra, fmt, module):
    run, _, _ = live
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", fmt,
                              "--out", str(run.parent / "x")])
    assert res.exit_code == 2 and f"pip install 'mobiletune[{extra}]'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (run.parent / "x").exists()
    with pytest.raises(MissingExtraError):
        from mobiletune.deploy import coreml
        from mobiletune.predict import litert

        (litert if extra == "tflite" else coreml).need()


def test_int8_needs_tflite_or_float_onnx(live):
    run, _, _ = live
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "onnx",
                              "--uint8-input", "--int8"])
    assert res.exit_code == 2 and "--format tflite --int8" in res.output
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "torchscript",
                              "--uint8-input"])
    assert res.exit_code == 2 and "--uint8-input is for --format onnx" in res.output


@needs_tflite
def test_tflite_int8_beyond_max_drop_is_refused_and_float_kept(live, tmp_path):
    run, files, ref = live
    out = tmp_path / "m.tflite"
    with pytest.raises(MobiletuneError, match="--max-drop"):
        # a negative allowance refuses even an int8 model as good as the float one
        export_checkpoint(load_checkpoint(run), "tflite", out, int8=True, max_drop=-1.0, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.txt", "m.tflite"]
    assert (tmp_path / "labels.txt").read_text() == "ants\nbees\n"
    _agrees(out, files, ref, 1e-4)  # the float model runs in LiteRT like PyTorch


@needs_tflite
def test_tflite_float_and_int8_checked_in_litert(live, tmp_path):
    from mobiletune.predict.litert import read_metadata

    run, files, ref = live
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "tflite",
                              "--int8", "--max-drop", "1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "agreement with PyTorch: 100.00% of 4 images" in res.stdout
    assert "int8 accuracy" in res.stdout and "tflite" in res.stdout
    float_path, int8_path = tmp_path / "model.tflite", tmp_path / "model.int8.tflite"
    assert int8_path.stat().st_size < 0.5 * float_path.stat().st_size
    for path in (float_path, int8_path):  # metadata survives quantization
        meta = read_metadata(path)
        assert json.loads(meta["class_names"]) == ["ants", "bees"] and meta["crop"] == "64"
    int8 = mobiletune.load(int8_path)
    assert int8.kind == "tflite"
    probs = np.array([[p.probs["ants"], p.probs["bees"]] for p in int8.predict(files)])
    assert np.allclose(probs.sum(1), 1.0, atol=0.02)  # dequantized probabilities
    bad = tmp_path / "junk.tflite"
    bad.write_bytes(b"not a flatbuffer")
    with pytest.raises(CheckpointError):
        mobiletune.load(bad)


@needs_coreml
def test_coreml_package_lists_the_classes(live, tmp_path):
    import coremltools as ct

    run, files, _ = live
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "coreml",
                              "--out", str(tmp_path / "m.mlpackage")])
    assert res.exit_code == 0, res.output
    assert "classes in the spec: ants, bees" in res.stdout and "not run" in res.stdout
    spec = ct.models.MLModel(str(tmp_path / "m.mlpackage"), skip_model_load=True).get_spec()
    image = spec.description.input[0].type.imageType
    assert (image.width, image.height) == (64, 64)
    assert spec.description.predictedFeatureName == "classLabel"
    assert json.loads(spec.description.metadata.userDefined["class_names"]) == ["ants", "bees"]
    assert not list(tmp_path.glob(".*partial*"))
    res = runner.invoke(app, ["predict", files[0], "--checkpoint", str(tmp_path / "m.mlpackage")])
    assert res.exit_code == 2 and "macOS" in res.output
