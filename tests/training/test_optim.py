"""training/optim.py: torch.optim.AdamW's update and CosineAnnealingLR's rates, step for step,
state dicts that load both ways, and a train and a finetune that never import torch._dynamo
(what torch.optim costs: 1.0 s a command)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from mobiletune.training.optim import AdamW, EpochSchedule
from tests.conftest import make_folder, tiny_config


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 4, generator=g, requires_grad=True),
            torch.randn(6, 4, 3, 3, generator=g, requires_grad=True),
            torch.randn(6, generator=g, requires_grad=True)]


def _groups(params, weight_decay: float = 0.05) -> list[dict]:
    return [{"name": "decay", "params": params[:2], "weight_decay": weight_decay},
            {"name": "no_decay", "params": params[2:], "weight_decay": 0.0}]


def _grads(step: int, params) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def _train(opt, sched, params, steps, start: int = 0) -> None:
    for s in range(start, start + steps):
        _grads(s, params)
        opt.step()
        if s % 3 == 2:  # an epoch of three steps
            sched.step()


def _twins(lr: float = 3e-3, epochs: int = 4):
    ours, ref = _params(), _params()
    opt = AdamW(_groups(ours), lr=lr)
    torch_opt = torch.optim.AdamW(_groups(ref), lr=lr)
    return (ours, opt, EpochSchedule(opt, "cosine", epochs)), \
        (ref, torch_opt, torch.optim.lr_scheduler.CosineAnnealingLR(torch_opt, T_max=epochs))


def _assert_same(a, b) -> None:
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-7)


def test_adamw_and_cosine_follow_torch_optim_step_for_step():
    (ours, opt, sched), (ref, torch_opt, torch_sched) = _twins()
    start = [p.detach().clone() for p in ours]
    _train(opt, sched, ours, 12)
    _train(torch_opt, torch_sched, ref, 12)
    assert not torch.allclose(ours[0], start[0])  # the steps moved the weights
    _assert_same(ours, ref)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(
        [g["lr"] for g in torch_opt.param_groups], rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # the end of the cosine


@pytest.mark.parametrize("direction", ["from torch", "to torch"])
def test_state_dicts_load_both_ways(direction):
    """A last.pt written with torch.optim (before training/optim.py) resumes here, and the
    other way round, to the same weights as an uninterrupted run."""
    (ours, opt, sched), (ref, torch_opt, torch_sched) = _twins()
    whole = _params()
    whole_opt = AdamW(_groups(whole), lr=3e-3)
    _train(whole_opt, EpochSchedule(whole_opt, "cosine", 4), whole, 12)
    if direction == "from torch":
        _train(torch_opt, torch_sched, ref, 6)
        with torch.no_grad():
            for p, q in zip(ours, ref):
                p.copy_(q)
        opt.load_state_dict(torch_opt.state_dict())
        sched.load_state_dict(torch_sched.state_dict())
        _train(opt, sched, ours, 6, start=6)
        _assert_same(ours, whole)
    else:
        _train(opt, sched, ours, 6)
        with torch.no_grad():
            for p, q in zip(ref, ours):
                p.copy_(q)
        torch_opt.load_state_dict(opt.state_dict())
        torch_sched.last_epoch = sched.state_dict()["last_epoch"]
        _train(torch_opt, torch_sched, ref, 6, start=6)
        _assert_same(ref, whole)


def test_a_state_dict_for_other_groups_is_refused():
    opt = AdamW(_groups(_params()), lr=1e-3)
    other = AdamW([{"params": _params()}], lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="other parameter groups"):
        opt.load_state_dict(other)


def test_constant_schedule_keeps_the_rate():
    opt = AdamW(_groups(_params()), lr=1e-3)
    sched = EpochSchedule(opt, "constant", 5)
    for _ in range(5):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]


def test_train_and_finetune_never_import_dynamo(tmp_path):
    """torch.optim would import torch._dynamo (1.0 s of each command); nothing else in a run
    does, so a run in a fresh process ends without it."""
    data = make_folder(tmp_path / "data", per_class=4)
    cfg = tiny_config(tmp_path, data, finetune={"unfreeze": 1, "epochs": 1, "lr": 1e-4})
    code = textwrap.dedent(f"""
        import sys
        from mobiletune.config.load import load_config
        from mobiletune.training import run
        parent = run.train(load_config({str(cfg)!r}))
        run.finetune(str(parent), {{"finetune.unfreeze": 2}})
        print("torch._dynamo" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_grad_scaler_drives_it_as_it_drives_torch_optim():
    """CUDA's float16 steps go through torch.amp.GradScaler (stage._train_epoch): it unscales
    the gradients before the step and skips a step whose gradients overflowed. Shown on the
    CPU scaler, the same code path."""
    ours, twin = _params(), _params()
    opt, plain = AdamW(_groups(ours), lr=1e-2), torch.optim.AdamW(_groups(twin), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    start = [p.detach().clone() for p in ours]
    scaler.scale(sum((p ** 2).sum() for p in ours)).backward()
    scaler.step(opt)
    scaler.update()
    sum((p ** 2).sum() for p in twin).backward()  # unscaled, torch.optim's step
    plain.step()
    assert not torch.allclose(ours[0], start[0])  # a step was taken
    _assert_same(ours, twin)  # the scale was taken off before the update
    before = [p.detach().clone() for p in ours]
    opt.zero_grad()
    scaler.scale(ours[0].sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(ours, before))  # an overflow: no step
    assert scaler.get_scale() == 512.0
