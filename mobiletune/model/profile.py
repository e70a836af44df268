"""The cost arithmetic of MobileNets: parameters, multiply-adds, and what separability saves.

Multiply-adds (MACs) are counted with forward hooks on every Conv2d and Linear, the
convention behind the published figures (MobileNetV2 300M, V3-Large 217M, V3-Small 56M at
224 px). A depthwise conv (f x f, one filter per channel) followed by a pointwise 1x1 conv
replaces a standard f x f conv; for n_c input and n_c' output channels on an n_out x n_out
output, that costs f*f*n_c*n_out^2 + n_c*n_out^2*n_c' against f*f*n_c*n_out^2*n_c', a ratio
of 1/n_c' + 1/f^2 (Howard et al., 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mobiletune.model.backbone import build_model
from mobiletune.onnxrt import time_ms
from mobiletune.vision import ops

# (parameters, multiply-adds) at 224 px with the 1000-class head, as published:
# MobileNetV2 (Sandler et al., 2018) and MobileNetV3 (Howard et al., 2019).
PUBLISHED = {"mobilenet_v2": (3.50e6, 300e6), "mobilenet_v3_large": (5.48e6, 217e6),
             "mobilenet_v3_small": (2.54e6, 56e6)}
# Order in which roles are listed; "conv1x1" is a pointwise conv with no depthwise before it.
ROLES = ("conv", "expand", "depthwise", "se", "pointwise", "conv1x1", "linear")


@dataclass
class _Layer:
    """One Conv2d or Linear as seen by a forward hook."""

    block: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    in_se: bool
    role: str = ""


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    """Multiply-adds of one call at batch 1: each output element costs one dot product."""
    per_item = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_item * (module.in_channels // module.groups) * kh * kw
    return per_item * module.in_features


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The rows of the profile: each block of `features`, then the other top-level parts."""
    if not isinstance(getattr(model, "features", None), nn.Sequential):
        return list(model.named_children())
    rows = [(f"features.{i}", b) for i, b in enumerate(model.features)]
    return rows + [(n, m) for n, m in model.named_children() if n != "features"]


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _is_1x1(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1


def _assign_roles(layers: list[_Layer]) -> list[tuple[_Layer, _Layer]]:
    """Label each layer's role and return the (depthwise, pointwise) pairs.

    A depthwise conv pairs with the next 1x1 conv outside a squeeze-and-excitation whose
    input is its output; a 1x1 conv that a depthwise conv follows in the same block is the
    expansion of an inverted residual.
    """
    pairs, pending = [], None
    for i, layer in enumerate(layers):
        m = layer.module
        if isinstance(m, nn.Linear):
            layer.role = "linear"
        elif layer.in_se:
            layer.role = "se"
        elif _is_depthwise(m):
            layer.role, pending = "depthwise", layer
        elif _is_1x1(m) and pending is not None and pending.out_shape == layer.in_shape:
            layer.role = "pointwise"
            pairs.append((pending, layer))
            pending = None
        elif _is_1x1(m):
            later = [x for x in layers[i + 1:] if x.block == layer.block]
            layer.role = "expand" if any(_is_depthwise(x.module) for x in later) else "conv1x1"
        else:
            layer.role = "conv"
    return pairs


def separable_cost(dw: _Layer, pw: _Layer) -> dict:
    """The standard conv a depthwise + pointwise pair replaces, against the pair itself."""
    f = dw.module.kernel_size[0]
    n_c, n_c2 = dw.module.in_channels, pw.module.out_channels
    n_out = dw.out_shape[-1]  # square inputs: the output's side
    standard = f * f * n_c * n_out * n_out * n_c2
    own = f * f * n_c * n_out * n_out + n_c * n_out * n_out * n_c2
    return {"block": dw.block, "f": f, "n_c": n_c, "n_c_out": n_c2, "n_out": n_out,
            "standard_macs": standard, "separable_macs": own, "ratio": own / standard}


def _trace(model: nn.Module, x: torch.Tensor) -> tuple[list[_Layer], dict[str, tuple]]:
    """Run `model(x)` once, recording each Conv2d/Linear call and each block's output shape."""
    blocks = _blocks(model)
    owner, in_se = {}, set()
    for name, block in blocks:
        for m in block.modules():
            owner.setdefault(m, name)
            if isinstance(m, ops.SqueezeExcitation):
                in_se.update(m.modules())
    layers: list[_Layer] = []
    shapes: dict[str, tuple] = {}

    def on_layer(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        layers.append(_Layer(owner.get(m, "-"), m, tuple(args[0].shape[1:]),
                             tuple(out.shape[1:]), _macs(m, out), m in in_se))

    handles = [m.register_forward_hook(on_layer) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    for name, block in blocks:
        handles.append(block.register_forward_hook(
            lambda m, a, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return layers, shapes


def profile_model(model: nn.Module, input_shape: tuple[int, int, int]) -> dict:
    """Per-block output shape, parameters and MACs (by role), separable pairs, and totals.

    `input_shape` is (channels, height, width) of one input; MACs are per image.
    """
    model.eval()
    layers, shapes = _trace(model, torch.zeros(1, *input_shape))
    pairs = _assign_roles(layers)
    seps = [separable_cost(dw, pw) for dw, pw in pairs]
    rows = []
    for name, block in _blocks(model):
        mine = [x for x in layers if x.block == name]
        by_role = {r: sum(x.macs for x in mine if x.role == r) for r in ROLES}
        rows.append({"name": name, "type": type(block).__name__,
                     "out_shape": list(shapes.get(name, ())),
                     "params": sum(p.numel() for p in block.parameters()),
                     "macs": sum(x.macs for x in mine),
                     "macs_by_role": {r: v for r, v in by_role.items() if v},
                     "separable": [s for s in seps if s["block"] == name]})
    std, own = sum(s["standard_macs"] for s in seps), sum(s["separable_macs"] for s in seps)
    return {"input_shape": list(input_shape),
            "params": sum(p.numel() for p in model.parameters()),
            "macs": sum(x.macs for x in layers),
            "macs_by_role": {r: sum(x.macs for x in layers if x.role == r) for r in ROLES},
            "separable_totals": {"pairs": len(seps), "standard_macs": std,
                                 "separable_macs": own, "ratio": own / std if std else None},
            "blocks": rows}


def profile_arch(arch: str, image_size: int = 224, num_classes: int = 1000) -> dict:
    """Profile a torchvision MobileNet with a `num_classes` head (1000: the published setup).

    `published` holds the papers' figures where the setup matches theirs (224 px, 1000
    classes), else None.
    """
    model = build_model(arch, "none", num_classes)
    out = profile_model(model, (3, image_size, image_size))
    same = image_size == 224 and num_classes == 1000
    pub = PUBLISHED.get(arch) if same else None
    return {"arch": arch, "image_size": image_size, "num_classes": num_classes,
            "published": dict(params=pub[0], macs=pub[1]) if pub else None, **out}


def measure_latency(model: nn.Module, image_size: int, batches: tuple[int, ...] = (1, 32),
                    budget_s: float = 1.0) -> dict[str, dict[int, float]]:
    """Median milliseconds per batch in PyTorch (eager) and ONNX Runtime on this machine."""
    from mobiletune.onnxrt import make_session, onnx_bytes

    torch.set_flush_denormal(True)  # random-init weights otherwise hit slow denormal paths
    model.eval()
    session = make_session(onnx_bytes(model, image_size))
    out: dict[str, dict[int, float]] = {"pytorch": {}, "onnxruntime": {}}
    for b in batches:
        x = torch.rand(b, 3, image_size, image_size)
        with torch.inference_mode():
            out["pytorch"][b] = time_ms(lambda: model(x), budget_s=budget_s)
        feed = {session.get_inputs()[0].name: x.numpy()}
        out["onnxruntime"][b] = time_ms(lambda: session.run(None, feed), budget_s=budget_s)
    return out
