"""Am I distributed? The launcher (torchrun) decides; this module reads its environment.

`RANK`, `WORLD_SIZE` and `LOCAL_RANK` come from torchrun (or `SLURM_PROCID` /
`SLURM_NTASKS` / `SLURM_LOCALID`). Without them the world is one process and every helper
here is a no-op, so single-process runs take exactly the same code path. The backend is
NCCL when the run's device is CUDA (one GPU per local rank) and gloo on CPU; collective
tensors live on the backend's device.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as td

from mobiletune.errors import MobiletuneError

T = TypeVar("T")


def _env(name: str, slurm: str, default: int) -> int:
    value = os.environ.get(name, os.environ.get(slurm))
    return int(value) if value not in (None, "") else default


def world_size() -> int:
    """Processes in the run (1 without a launcher)."""
    if td.is_available() and td.is_initialized():
        return td.get_world_size()
    return _env("WORLD_SIZE", "SLURM_NTASKS", 1)


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    if td.is_available() and td.is_initialized():
        return td.get_rank()
    return _env("RANK", "SLURM_PROCID", 0)


def local_rank() -> int:
    return _env("LOCAL_RANK", "SLURM_LOCALID", 0)


def is_main() -> bool:
    """The one process that writes files and prints."""
    return rank() == 0


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def init(device: torch.device) -> torch.device:
    """Join the process group when launched with WORLD_SIZE > 1 (idempotent) and return this
    rank's device: `cuda:LOCAL_RANK` on CUDA, the given device otherwise."""
    if device.type == "cuda" and world_size() > 1:
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if world_size() > 1 and not td.is_initialized():
        minutes = float(os.environ.get("MOBILETUNE_DIST_TIMEOUT_MIN", "30"))
        td.init_process_group("nccl" if device.type == "cuda" else "gloo",
                              timeout=dt.timedelta(minutes=minutes))
    return device


def close() -> None:
    """Leave the process group (end of a command)."""
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def _tensor_device() -> torch.device:
    # the backend's device: NCCL reduces CUDA tensors, gloo CPU ones
    if td.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum over ranks of (count, total, ...) pairs; the values on one process."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=_tensor_device())
    td.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if active():
        td.barrier()


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's share of `items` (rank, rank + world, ...): every item on exactly one rank."""
    return items[rank()::world_size()] if active() else items


def _raise_agreed(errors: list[Any], mine: MobiletuneError | None) -> None:
    """If any rank failed, raise on every rank: a rank's own error, else the first one's
    message. `all_ranks` tells the CLI that rank 0 prints it, so it is printed once."""
    first = next((e for e in errors if e is not None), None)
    if first is None:
        return
    error = mine if mine is not None else MobiletuneError(first)
    error.all_ranks = True
    raise error


def agree(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank (e.g. its share of the cache fill); a user error on any rank
    becomes the same error on all ranks, so every rank exits 2 and none hangs waiting."""
    mine, result = None, None
    try:
        result = fn()
    except MobiletuneError as e:
        mine = e
    if active():
        errors: list[Any] = [None] * world_size()
        td.all_gather_object(errors, None if mine is None else str(mine))
        _raise_agreed(errors, mine)
    elif mine is not None:
        raise mine
    return result


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result (or its user error) to every rank."""
    if not active():
        return fn()
    box: list[Any] = [None]
    mine = None
    if is_main():
        try:
            box[0] = ("ok", fn())
        except MobiletuneError as e:
            mine, box[0] = e, ("error", str(e))
    td.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        _raise_agreed([value], mine)
    return value


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the trainable part when distributed (gradients are
    averaged, so every rank's weights stay identical); the module itself otherwise."""
    if not active():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, output_device=device.index if ids else None)
