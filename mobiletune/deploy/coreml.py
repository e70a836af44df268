"""Core ML: an .mlpackage (ML Program) that an iOS/macOS app feeds a plain image.

The image input (RGB, the crop size) hands the model pixels 0-255; normalization and softmax
are inside (`mobile.UInt8Classifier`), and the classifier config attaches the class names,
so Vision/Core ML return `classLabel` and `classLabel_probs`. Core ML runs only on Apple
platforms: here the package is converted and checked structurally (classes, input), not run.
coremltools comes with the optional extra `mobiletune[coreml]` and is imported here only.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

from mobiletune.errors import CheckpointError, MissingExtraError


def need(feature: str = "Core ML export") -> None:
    """MissingExtraError (exit 2) unless coremltools is importable."""
    try:
        with _quiet():  # it logs missing native libraries (macOS only) on import
            import coremltools  # noqa: F401
    except ImportError:
        raise MissingExtraError(feature, "coreml", "coremltools") from None


@contextlib.contextmanager
def _quiet():
    """coremltools logs and draws progress bars on import and conversion."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def convert(wrapper, ckpt: dict, meta: dict[str, str], path: Path) -> Path:
    """Write `wrapper` (NCHW float pixels 0-255 -> probabilities) as an .mlpackage at `path`,
    whole or not at all (built beside it, then renamed into place)."""
    import torch

    with _quiet():
        import coremltools as ct

        crop = ckpt["preprocess"]["crop"]
        with torch.inference_mode(False):
            traced = torch.jit.trace(wrapper.eval(), torch.zeros(1, 3, crop, crop))
        model = ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
            inputs=[ct.ImageType(name="image", shape=(1, 3, crop, crop), scale=1.0,
                                 bias=[0.0, 0.0, 0.0], color_layout=ct.colorlayout.RGB)],
            classifier_config=ct.ClassifierConfig(list(ckpt["class_names"])))
    model.short_description = (f"mobiletune {ckpt['arch']} classifier of "
                               f"{len(ckpt['class_names'])} classes")
    model.input_description["image"] = (f"RGB image, {crop}x{crop}: resize the short side to "
                                        f"{ckpt['preprocess']['resize']} and center-crop")
    model.user_defined_metadata.update(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.mlpackage")  # coremltools wants the suffix
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
            model.save(str(tmp))
        if path.exists():  # a folder cannot be renamed over another: replace it whole
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _spec_classes(spec) -> list[str]:
    """Class names as the package lists them (the ML Program's `classify` op)."""
    main = spec.mlProgram.functions["main"]
    for op in main.block_specializations[main.opset].operations:
        if op.type == "classify":
            values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
            return [v.immediateValue.tensor.strings.values[0] for v in values]
    return []


def check(path: Path, ckpt: dict) -> list[str]:
    """Structural checks of a written package (it cannot run off Apple platforms): its
    classes, image input and metadata match the checkpoint. Returns what was checked."""
    with _quiet():
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    classes, names = _spec_classes(spec), list(ckpt["class_names"])
    image = spec.description.input[0].type.imageType
    crop = ckpt["preprocess"]["crop"]
    stored = json.loads(spec.description.metadata.userDefined.get("class_names", "[]"))
    problems = [what for what, ok in (
        (f"classes {classes} != {names}", classes == names),
        (f"input {image.width}x{image.height} != {crop}x{crop}",
         (image.width, image.height) == (crop, crop)),
        ("metadata class_names differ", stored == names)) if not ok]
    if problems:
        raise CheckpointError(f"The Core ML package {path} does not match the checkpoint: "
                              f"{'; '.join(problems)}.")
    return [f"classes in the spec: {', '.join(classes)}",
            f"input: RGB image {image.width}x{image.height} (normalization inside); outputs: "
            f"{spec.description.predictedFeatureName}, {spec.description.predictedProbabilitiesName}",
            "converted and checked structurally here, not run (Core ML needs macOS/iOS)"]
