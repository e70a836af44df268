"""The finetune tail's input layout on the CPU: channels_last where the tail has depthwise
convolutions (faster there, benchmarks/bench_layout.py), NCHW for a tail of 1x1 convolutions
alone, in val passes and training steps alike; the same logits either way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mobiletune.model.backbone import configure_stage, has_depthwise, split
from mobiletune.training import stage
from tests.helpers_runs import live_model

CPU = torch.device("cpu")
CACHED = SimpleNamespace(live=False)  # a batch holds boundary activations, not images


def _seen_layouts(tail) -> list[bool]:
    """Whether each call of the tail got a channels_last input (a hook on its first block)."""
    seen: list[bool] = []
    first = next(m for m in tail.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_pre_hook(
        lambda _m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)
                                  and not a[0].is_contiguous()))
    return seen


@pytest.mark.parametrize("unfreeze, depthwise", [(3, True), (1, False)])
def test_tail_input_layout_follows_its_convolutions(unfreeze, depthwise, monkeypatch):
    monkeypatch.setattr(stage, "cpu_bf16", lambda: False)  # float32: exact comparisons
    model = live_model("mobilenet_v2", 4, small_head=False)
    opt = torch.optim.AdamW(configure_stage(model, unfreeze), lr=1e-2)
    prefix, tail = split(model, unfreeze)
    assert has_depthwise(tail) is depthwise
    g = torch.Generator().manual_seed(1)
    channels = 320 if unfreeze == 1 else 160  # MobileNetV2's input to block 18 / 16
    x = torch.randn(8, channels, 7, 7, generator=g).half()  # float16, as cached
    y = torch.arange(8) % 4
    model.eval()
    with torch.no_grad():
        ref = tail(x.float())
        seen = _seen_layouts(tail)
        got, _, _ = stage.step_batch(tail, prefix, CACHED, x, y, CPU, lambda a, b: None)
    assert ref.std(0).min() > 1e-3, "logits must vary across inputs for the check to mean anything"
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    model.train()
    for _ in range(2):  # training steps take the same layout
        _, loss, _ = stage.step_batch(tail, prefix, CACHED, x, y, CPU,
                                      torch.nn.CrossEntropyLoss())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert seen == [depthwise] * 3
