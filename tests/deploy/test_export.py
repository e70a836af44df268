"""export: ONNX / TorchScript round trips with metadata, parity, int8, and the ONNX backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mobiletune.data.preprocess import normalize, preprocess_image
from mobiletune.data.transforms import eval_transform
from mobiletune.deploy.export import (
    export_checkpoint,
    load_torchscript,
    metadata,
    write_onnx,
)
from mobiletune.deploy.int8 import quantize_int8
from mobiletune.deploy.parity import calibration_batches, check_samples, decode_crops
from mobiletune.errors import CheckpointError, ConfigError, DataError, MobiletuneError
from mobiletune.model.backbone import build_model, preprocess_spec
from mobiletune.model.checkpoint import load_checkpoint, model_from_checkpoint
from mobiletune.onnxrt import onnx_bytes
from mobiletune.predict.backends import onnx_backend, open_backend
from tests.conftest import make_folder
from tests.numerics import float_tolerance
from tests.helpers_runs import make_live_run

CLASSES = ("ants", "bees", "wasps")
FAST = {"latency_budget_s": 0.0}


def make_run(root: Path, image_size: int = 64) -> Path:
    """A run directory as `train` leaves it (best.pt, splits.csv) with a model whose outputs
    vary across images: a random-init model gives every image the head's bias, and parity
    checks on it pass whatever the export computes."""
    torch.set_flush_denormal(True)
    return make_live_run(root, CLASSES, size=image_size)


def assert_varies(probs: np.ndarray) -> None:
    """Outputs differ across inputs, so that comparing two models' outputs means something."""
    assert np.ptp(probs, axis=0).max() > 0.02, probs


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One float + int8 ONNX export, shared by the tests that only read it."""
    run = make_run(tmp_path_factory.mktemp("exp"))
    ckpt = load_checkpoint(run)
    return ckpt, export_checkpoint(ckpt, "onnx", int8=True, max_drop=1.0, **FAST)


def _probs(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), 1).numpy()


def test_onnx_round_trip_keeps_metadata_and_top1(exported):
    import onnx

    ckpt, report = exported
    assert report.path == Path(ckpt["path"]).parent / "export" / "model.onnx"
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props["class_names"]) == list(CLASSES)
    pre = ckpt["preprocess"]
    assert json.loads(props["mean"]) == pre["mean"] and json.loads(props["std"]) == pre["std"]
    assert (int(props["resize"]), int(props["crop"])) == (pre["resize"], pre["crop"]) == (73, 64)
    pred = onnx_backend(report.path)
    assert pred.class_names == list(CLASSES) and pred.preprocess == pre
    crops = np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    model = model_from_checkpoint(ckpt)
    ref = _probs(model, normalize(crops, pre))
    assert_varies(ref)
    for batch in (crops[:1], crops):  # the batch axis is dynamic
        got = pred.run(batch)
        assert got.shape == (len(batch), 3)
        np.testing.assert_array_equal(got.argmax(1), ref[:len(batch)].argmax(1))
        np.testing.assert_allclose(got, ref[:len(batch)], rtol=0, atol=float_tolerance(model))


def test_parity_report_on_the_runs_val_images(exported):
    ckpt, report = exported
    val = [s for s in check_samples(ckpt, None)[1]]
    x = normalize(decode_crops(val, ckpt["preprocess"])[0], ckpt["preprocess"])
    assert_varies(_probs(model_from_checkpoint(ckpt), x))  # the images the report compares on
    assert report.images == 6  # splits.csv: 2 val images per class
    assert report.agreement == 1.0 and report.max_prob_diff < 1e-4
    assert report.accuracy["onnx"] == report.accuracy["pytorch"]
    assert set(report.latency_ms) == set(report.size_bytes) == {"pytorch", "onnx", "int8"}
    assert all(v > 0 for v in report.latency_ms.values())


def test_int8_model_is_quantized_runs_and_is_reported(exported):
    import onnx

    ckpt, report = exported
    assert report.int8_path == report.path.with_name("model.int8.onnx")
    assert report.int8_float_blocks == 0  # within a lenient budget, nothing stays float
    ops = {n.op_type for n in onnx.load(str(report.int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert report.size_bytes["int8"] < 0.5 * report.size_bytes["onnx"]
    assert 0.0 <= report.accuracy["int8"] <= 1.0
    assert report.int8_drop == pytest.approx(report.accuracy["onnx"] - report.accuracy["int8"])
    pred = onnx_backend(report.int8_path)  # metadata survives quantization
    assert pred.class_names == list(CLASSES)
    probs = pred.run(np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_int8_keeps_the_tail_float_when_full_int8_misses_the_budget(tmp_path):
    import onnx

    ckpt = load_checkpoint(make_run(tmp_path))
    meta, model = metadata(ckpt), model_from_checkpoint(ckpt)
    path = write_onnx(model, tmp_path / "f.onnx", meta, 64)
    train, _ = check_samples(ckpt, None)
    # a negative budget is never met: every try keeps one more block float, up to the cap
    res = quantize_int8(path, tmp_path / "q.onnx", *calibration_batches(train, ckpt["preprocess"]),
                        meta, n_blocks=len(model.features), budget=-1.0, max_float_blocks=2)
    assert res.float_blocks == 2
    proto = onnx.load(str(res.path))
    assert {p.key: p.value for p in proto.metadata_props}["int8_float_blocks"] == "2"
    made_by = {o: n.op_type for n in proto.graph.node for o in n.output}

    def quantized(node) -> bool:  # int8 weights reach the node through a DequantizeLinear
        return made_by.get(node.input[1]) == "DequantizeLinear"

    convs = {n.name: n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")}
    blocks = {name: quantized(n) for name, n in convs.items()}
    assert all(q for name, q in blocks.items() if "/features.10/" in name)
    assert not any(q for name, q in blocks.items()
                   if "/features.11/" in name or "/features.12/" in name or "classifier" in name)


def test_int8_refused_beyond_max_drop_leaves_no_int8_file(tmp_path):
    run = make_run(tmp_path)
    out = tmp_path / "deploy" / "m.onnx"
    with pytest.raises(MobiletuneError, match="--max-drop"):
        # a negative allowance refuses even an int8 model as good as the float one
        export_checkpoint(load_checkpoint(run), "onnx", out, int8=True, max_drop=-1.0, **FAST)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_out_may_name_a_folder(tmp_path):
    report = export_checkpoint(load_checkpoint(make_run(tmp_path)), "onnx", tmp_path, **FAST)
    assert report.path == tmp_path / "model.onnx" and report.path.is_file()


def test_torchscript_round_trip(tmp_path):
    ckpt = load_checkpoint(make_run(tmp_path))
    report = export_checkpoint(ckpt, "torchscript", **FAST)
    assert report.path.name == "model.pt" and report.agreement == 1.0
    module, meta = load_torchscript(report.path)
    assert json.loads(meta["class_names"]) == list(CLASSES) and int(meta["crop"]) == 64
    x = np.random.default_rng(2).normal(size=(3, 3, 64, 64)).astype(np.float32)
    model = model_from_checkpoint(ckpt)
    ref = _probs(model, x)
    assert_varies(ref)
    np.testing.assert_allclose(_probs(module, x), ref, rtol=0, atol=float_tolerance(model))


def test_int8_needs_onnx_and_format_is_checked(tmp_path):
    ckpt = load_checkpoint(make_run(tmp_path))
    with pytest.raises(ConfigError, match="--format onnx"):
        export_checkpoint(ckpt, "torchscript", int8=True)
    with pytest.raises(ConfigError, match="onnx, torchscript, tflite, coreml"):
        export_checkpoint(ckpt, "keras")
    assert not (tmp_path / "run" / "export").exists()


def test_check_images_from_a_data_folder(tmp_path):
    ckpt = load_checkpoint(make_run(tmp_path))
    other = make_folder(tmp_path / "other", ("bees", "wasps"), per_class=3, layout="split")
    train, val = check_samples(ckpt, str(other))
    # labels follow the checkpoint's class order, not the folder's
    assert {Path(s.path).parent.name: s.label for s in val} == {"bees": 1, "wasps": 2}
    assert len(train) == 4 and len(val) == 2
    with pytest.raises(DataError, match="moths"):
        check_samples(ckpt, str(make_folder(tmp_path / "bad", ("ants", "moths"), layout="split")))


def test_missing_or_malformed_splits_csv_is_a_data_error(tmp_path):
    run = make_run(tmp_path)
    ckpt = load_checkpoint(run)
    (run / "splits.csv").write_text("file,class\nx.jpg,ants\n")
    with pytest.raises(DataError, match="--data"):
        check_samples(ckpt, None)
    (run / "splits.csv").unlink()
    with pytest.raises(DataError, match="no splits.csv"):
        export_checkpoint(ckpt, "onnx")
    assert not (run / "export").exists()  # nothing written before the check images are known


@pytest.mark.parametrize("size", [(97, 61), (61, 97), (300, 200), (64, 64)])
def test_numpy_preprocessing_matches_the_eval_transform(size):
    pre = preprocess_spec("mobilenet_v2", "none", 64)
    arr = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), np.uint8)
    img = Image.fromarray(arr)
    np.testing.assert_allclose(preprocess_image(img, pre), eval_transform(pre)(img).numpy(),
                               atol=1e-5)


def test_onnx_backend_rejects_files_it_cannot_use(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        open_backend(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="could not be opened"):
        onnx_backend(tmp_path / "junk.onnx")
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(onnx_bytes(build_model("mobilenet_v3_small", "none", 2), 32))
    with pytest.raises(CheckpointError, match="class_names"):
        onnx_backend(plain)


def test_cli_export_prints_parity_and_maps_errors_to_exit_2(tmp_path, monkeypatch):
    from mobiletune.cli import app

    monkeypatch.setattr("mobiletune.onnxrt.time_ms", lambda fn, **kw: 1.0)  # no timing here
    run = make_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "onnx",
                              "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "agreement with PyTorch: 100.00% of 6 images" in res.stdout
    assert (tmp_path / "m.onnx").is_file()
    bad = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "nope"), "--format", "onnx"])
    assert bad.exit_code == 2 and "not found" in bad.output
    bad = runner.invoke(app, ["export", "--checkpoint", str(run), "--format", "keras"])
    assert bad.exit_code == 2 and "coreml" in bad.output  # the choices are named


def test_int8_partial_is_removed_when_quantizing_fails(tmp_path):
    """Both int8 paths (ONNX and TFLite) write through int8_partial: a quantizer that fails
    half-way leaves neither the .partial file nor a final int8 file."""
    from mobiletune.deploy.int8 import int8_partial

    final = tmp_path / "model.int8.tflite"
    with pytest.raises(RuntimeError):
        with int8_partial(final) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("quantizer failed")
    assert not list(tmp_path.iterdir())
    with int8_partial(None) as tmp:
        assert tmp is None
