"""torchvision, imported without torch._dynamo.

`import torchvision` imports every model and op it has, and torchvision.ops.roi_align does
`from torch._dynamo.utils import is_compile_supported` for a function it calls only inside
roi_align, which mobiletune never runs. That one line imports dynamo, sympy and triton:
1.5 s of a 3.7 s cold start here (`python -X importtime`, benchmarks/phases.py), paid by
every command, `predict` on one image included.

So while torchvision imports, `torch._dynamo.utils` is a stand-in whose one function loads
the real module when it is first called. Right after, the stand-ins leave sys.modules, and
anything that imports torch._dynamo later (torch.compile, a user's code) gets the real one.
Should a torchvision version need more of dynamo at import, the stand-in import fails and
torchvision is imported again the plain way: slower, never wrong.
"""

from __future__ import annotations

import importlib
import sys
import types

_STAND_INS = ("torch._dynamo", "torch._dynamo.utils")


def _is_compile_supported(device_type):
    return importlib.import_module("torch._dynamo.utils").is_compile_supported(device_type)


def _stand_ins() -> dict[str, types.ModuleType]:
    pkg = types.ModuleType("torch._dynamo")
    pkg.__path__ = []  # a package, as far as the import system cares
    utils = types.ModuleType("torch._dynamo.utils")
    utils.is_compile_supported = _is_compile_supported
    pkg.utils = utils
    return {"torch._dynamo": pkg, "torch._dynamo.utils": utils}


def _drop(stand_ins: dict[str, types.ModuleType]) -> None:
    import torch

    for name, module in stand_ins.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
    if torch.__dict__.get("_dynamo") is stand_ins["torch._dynamo"]:
        del torch._dynamo


def import_torchvision() -> types.ModuleType:
    """The torchvision module, imported without torch._dynamo when it is not loaded yet."""
    if "torchvision" in sys.modules or any(n in sys.modules for n in _STAND_INS):
        return importlib.import_module("torchvision")
    import torch  # noqa: F401 - torch itself first, with nothing standing in

    stand_ins = _stand_ins()
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - a torchvision that needs more of dynamo: the plain way
        _drop(stand_ins)
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        return importlib.import_module("torchvision")
    finally:
        _drop(stand_ins)


torchvision = import_torchvision()
models = torchvision.models
transforms = torchvision.transforms
functional = torchvision.transforms.functional
ops = torchvision.ops
