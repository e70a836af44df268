"""CPU bfloat16 for the finetune tail's training steps: the same numbers to bf16 precision,
BatchNorm statistics untouched, val passes and the head exact, and an off switch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mobiletune.model.backbone import build_model, configure_stage, split
from mobiletune.training import stage

CPU = torch.device("cpu")
CACHED = SimpleNamespace(live=False)  # a batch holds boundary activations, not images


def _tail(seed: int = 0):
    """MobileNetV2's last 3 blocks and head, trainable, with BatchNorm frozen (eval)."""
    torch.manual_seed(seed)
    model = build_model("mobilenet_v2", "none", 4)
    params = configure_stage(model, 3)
    prefix, tail = split(model, 3)
    return model, prefix, tail, params


def _batch(n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 160, 7, 7, generator=g), torch.arange(n) % 4


def _step(bf16: bool, monkeypatch, grad: bool = True):
    monkeypatch.setattr(stage, "cpu_bf16", lambda: bf16)
    model, prefix, tail, _ = _tail()
    model.train()
    x, y = _batch()
    with torch.set_grad_enabled(grad):
        logits, loss, _ = stage.step_batch(tail, prefix, CACHED, x, y, CPU,
                                           torch.nn.CrossEntropyLoss())
    if grad:
        loss.backward()
    grads = torch.cat([p.grad.flatten() for p in tail.parameters() if p.grad is not None]) \
        if grad else None
    return logits.detach(), grads


def test_bf16_training_step_matches_float32(monkeypatch):
    ref, g32 = _step(False, monkeypatch)
    got, g16 = _step(True, monkeypatch)
    assert ref.std(0).min() > 1e-3, "logits must vary across inputs for the check to mean anything"
    assert got.dtype == torch.float32  # the loss and the metrics stay float32
    assert not torch.equal(got, ref), "bfloat16 was not used"
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.99, f"bf16 gradients point elsewhere: cosine {cos:.4f}"


def test_val_passes_stay_float32(monkeypatch):
    """Selection and the learning-rate race compare val losses: those stay exact."""
    ref, _ = _step(False, monkeypatch, grad=False)
    got, _ = _step(True, monkeypatch, grad=False)
    assert torch.equal(got, ref)


def test_head_steps_stay_float32(monkeypatch):
    """Pooled features (2-D) into the linear head: bf16 would buy nothing there."""
    monkeypatch.setattr(stage, "cpu_bf16", lambda: True)
    model = build_model("mobilenet_v2", "none", 4)
    configure_stage(model, 0)
    prefix, tail = split(model, 0)
    model.eval()  # no dropout: the two passes below must be comparable
    x, y = torch.randn(8, 1280), torch.arange(8) % 4
    got, _, _ = stage.step_batch(tail, prefix, CACHED, x, y, CPU, torch.nn.CrossEntropyLoss())
    assert torch.equal(got, tail(x))


def test_bf16_steps_keep_batchnorm_statistics(monkeypatch):
    """Real AdamW steps under bf16 autocast: weights move, running statistics do not."""
    monkeypatch.setattr(stage, "cpu_bf16", lambda: True)
    model, prefix, tail, params = _tail()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        model.train()
        x, y = _batch()
        _, loss, _ = stage.step_batch(tail, prefix, CACHED, x * 3 + 1, y, CPU,
                                      torch.nn.CrossEntropyLoss())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert not stats, f"BatchNorm statistics moved under bf16: {stats}"
    assert "features.16.conv.0.0.weight" in changed and "classifier.1.weight" in changed


@pytest.mark.parametrize("value", ["0", "off"])
def test_environment_switches_it_off(monkeypatch, value):
    monkeypatch.setenv("MOBILETUNE_CPU_BF16", value)
    stage.cpu_bf16.cache_clear()
    try:
        assert stage.cpu_bf16() is False
    finally:
        stage.cpu_bf16.cache_clear()
