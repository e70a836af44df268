"""AdamW and its per-epoch learning-rate schedule, without torch.optim.

torch.optim's optimizers import torch._dynamo on first use (their constructor and step are
wrapped to keep dynamo out of them, and that wrapper imports it): 1.0 s of every `train` and
`finetune` on the 2-core machine, a fifth of a finetune of hymenoptera that keeps its
parent. The update here is torch.optim.AdamW's (decoupled weight decay, bias-corrected
moments; no amsgrad, maximize or fused kernels, which mobiletune never asks for), checked step
for step against it in tests/training/test_optim.py. Both state dicts have torch.optim's
layout, so a last.pt written before this module existed resumes here.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch


class AdamW:
    """torch.optim.AdamW's update over parameter groups (dicts with "params" and any of
    "lr", "betas", "eps", "weight_decay", plus names of their own)."""

    def __init__(self, groups: Iterable[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, lr, beta1, beta2, group["eps"],
                                 group["weight_decay"])

    def _update(self, p, grad, lr, beta1, beta2, eps, weight_decay) -> None:
        state = self.state.get(p)
        if state is None:
            state = self.state[p] = {
                "step": torch.tensor(0.0),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        state["step"] += 1
        step = float(state["step"])
        p.mul_(1 - lr * weight_decay)  # decoupled: the decay never enters the moments
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** step)).add_(eps)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** step))

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state by parameter index, groups with "params" as indices."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for g in self.param_groups:
            groups.append({**{k: v for k, v in g.items() if k != "params"},
                           "params": list(range(start, start + len(g["params"])))})
            start += len(g["params"])
        state = {index[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """A state dict of this class or of torch.optim.AdamW over the same groups."""
        if [len(g["params"]) for g in saved["param_groups"]] != \
                [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the saved optimizer state has other parameter groups")
        params = self._params()
        for group, old in zip(self.param_groups, saved["param_groups"]):
            group.update({k: old[k] for k in ("lr", "betas", "eps", "weight_decay") if k in old})
            group["betas"] = tuple(group["betas"])
        self.state = {}
        for i, s in saved["state"].items():
            p = params[int(i)]
            self.state[p] = {"step": torch.as_tensor(s["step"], dtype=torch.float32).clone(),
                             "exp_avg": s["exp_avg"].to(p.device, p.dtype).clone(),
                             "exp_avg_sq": s["exp_avg_sq"].to(p.device, p.dtype).clone()}


class EpochSchedule:
    """The learning rate of each epoch, stepped once per epoch: "constant", or "cosine"
    (epoch e of E trains at lr * (1 + cos(pi e / E)) / 2, as torch.optim's
    CosineAnnealingLR(T_max=E) gives it). Its state dict keeps torch's `base_lrs` and
    `last_epoch`, so a scheduler state saved by torch.optim loads here."""

    def __init__(self, optimizer: AdamW, kind: str, epochs: int) -> None:
        self.optimizer, self.kind, self.epochs = optimizer, kind, max(1, epochs)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        factor = 1.0 if self.kind == "constant" else \
            (1 + math.cos(math.pi * self.last_epoch / self.epochs)) / 2
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "T_max": self.epochs, "base_lrs": list(self.base_lrs),
                "last_epoch": self.last_epoch}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.base_lrs, self.last_epoch = list(saved["base_lrs"]), int(saved["last_epoch"])
        self._apply()
