"""AdamW groups: weight decay shrinks conv and linear weights, never biases or norm params."""

from __future__ import annotations

import torch

from mobiletune.model.backbone import build_model, configure_stage
from mobiletune.training.stage import StageSpec, make_optimizer


def test_decay_hits_weights_only():
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", "none", 3)
    configure_stage(model, 2)
    spec = StageSpec("finetune", 2, 1, lr=0.1, weight_decay=0.5, label_smoothing=0.0,
                     patience=0)
    opt = make_optimizer(model, spec)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    for p in trainable.values():
        p.grad = torch.zeros_like(p)  # no gradient: only decoupled decay can move a value
    opt.step()
    norm = [n for n, p in trainable.items() if p.ndim < 2]
    multiply = [n for n, p in trainable.items() if p.ndim >= 2]
    assert any(".bias" in n for n in norm) and any("features" in n for n in norm)  # BN too
    for n in norm:
        assert torch.equal(trainable[n], before[n]), n
    for n in multiply:
        assert torch.allclose(trainable[n], before[n] * (1 - 0.1 * 0.5)), n
