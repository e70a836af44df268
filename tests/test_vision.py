"""mobiletune.vision: torchvision without torch._dynamo at start-up, and nothing lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=REPO, timeout=240)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_models_import_without_dynamo_and_dynamo_stays_usable():
    out = _python("""
        import sys
        import mobiletune.model.backbone
        from mobiletune.model.backbone import build_model
        assert build_model("mobilenet_v3_small", "none", 3).classifier[-1].out_features == 3
        print("dynamo", "torch._dynamo" in sys.modules, "sympy" in sys.modules)
        import torch, torch._dynamo, torchvision
        assert hasattr(torch._dynamo, "optimize") and hasattr(torch._dynamo, "reset")  # the real one
        rois = torchvision.ops.roi_align(torch.rand(1, 3, 16, 16),
                                         torch.tensor([[0, 0.0, 0.0, 8.0, 8.0]]), 4)
        assert rois.shape == (1, 3, 4, 4)
        print("ok")
    """)
    assert out.split() == ["dynamo", "False", "False", "ok"]


def test_a_torchvision_that_needs_dynamo_at_import_is_imported_the_plain_way():
    """A finder makes roi_align fail to import under the stand-in, as a future torchvision
    needing more of dynamo would: the plain import follows, with the real dynamo."""
    out = _python("""
        import sys
        class NeedsDynamo:
            def find_spec(self, name, path=None, target=None):
                dyn = sys.modules.get("torch._dynamo")
                if name == "torchvision.ops.roi_align" and dyn and not getattr(dyn, "__file__", 0):
                    raise ImportError("needs the real dynamo")
        sys.meta_path.insert(0, NeedsDynamo())
        from mobiletune.vision import models, torchvision
        import torch
        assert models.mobilenet_v2 and torchvision.ops.roi_align
        print("dynamo", getattr(sys.modules["torch._dynamo"], "__file__", None) is not None)
    """)
    assert out.split() == ["dynamo", "True"]
