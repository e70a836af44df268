"""BatchNorm proof: running statistics stay identical through real optimizer steps, and the
tensors that change are exactly the stage's trainable part."""

from __future__ import annotations

import pytest
import torch

from mobiletune.config.load import load_config
from mobiletune.model.backbone import build_model, configure_stage
from mobiletune.training import run as pipeline
from tests.conftest import tiny_config


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _running(keys) -> set[str]:
    return {k for k in keys if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _steps(model, params, n=3):
    opt = torch.optim.AdamW(params, lr=1e-2)
    for i in range(n):
        model.train()  # what Lightning issue 15062 was about: this must not unfreeze BN
        x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(i)) * 3 + 1
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_head_stage_changes_only_the_head(arch):
    torch.manual_seed(0)
    model = build_model(arch, "none", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _steps(model, configure_stage(model, 0))
    n = len(model.classifier) - 1
    assert _changed(before, model.state_dict()) == {f"classifier.{n}.weight", f"classifier.{n}.bias"}


@pytest.mark.parametrize("train_bn", [False, True])
def test_finetune_stage_changes_only_last_blocks(train_bn):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", "none", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _steps(model, configure_stage(model, 3, train_bn=train_bn))
    changed = _changed(before, model.state_dict())
    allowed = ("features.16.", "features.17.", "features.18.", "classifier.")
    assert changed and all(k.startswith(allowed) for k in changed)
    assert any(k.startswith("features.16.") for k in changed)
    moved_stats = _running(changed)
    if train_bn:
        assert moved_stats and all(k.startswith(allowed) for k in moved_stats)
    else:
        assert not moved_stats


def test_training_run_keeps_bn_statistics(tmp_path, tiny_data):
    """Through the real pipeline: head stage then finetune stage, from a weights file."""
    torch.manual_seed(1)
    ref = build_model("mobilenet_v3_small", "none", 1000).state_dict()
    torch.save(ref, tmp_path / "w.pth")
    cfg_path = tiny_config(tmp_path, tiny_data, model={"weights": str(tmp_path / "w.pth")},
                           finetune={"unfreeze": 2, "epochs": 1, "lr": 1e-3},
                           data={"cache": False})
    run = pipeline.train(load_config(cfg_path))
    for name in ("last.pt", "best.pt"):
        got = torch.load(run / name, weights_only=True)["model"]
        shared = {k for k in ref if not k.startswith("classifier.3")}
        changed = {k for k in shared if not torch.equal(ref[k], got[k])}
        assert not _running(changed), f"{name}: BatchNorm statistics moved: {_running(changed)}"
        if name == "last.pt":  # after the finetune stage: the last 2 blocks and classifier
            assert changed and all(k.startswith(("features.11.", "features.12.", "classifier."))
                                   for k in changed)
