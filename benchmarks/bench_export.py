"""Issue 6 acceptance figures: export parity and int8 on hymenoptera, profile totals.

    .venv/bin/python benchmarks/bench_export.py [RUN_DIR_OR_CKPT]

Without an argument it first trains a head-only run on ../shared/datasets/hymenoptera with
the offline MobileNetV2 weights (configs/hymenoptera.yaml, 2 epochs) in a temporary folder.
Exits 1 when a target is missed: ONNX top-1 agreement >= 97% of val images, int8 accuracy
within 3 points of float, profile totals within 3% (params) / 6% (MACs) of the published.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _train(out: Path) -> Path:
    from mobiletune.config.load import load_config
    from mobiletune.training import run as pipeline

    os.chdir(ROOT)  # the config's relative paths (../shared/...) are from the repo root
    overrides = [("train.epochs", 2), ("finetune.unfreeze", 0), ("output", str(out))]
    return pipeline.train(load_config(ROOT / "configs" / "hymenoptera.yaml", overrides))


def _export(source: str | Path, out: Path) -> bool:
    from mobiletune.deploy.export import export_checkpoint
    from mobiletune.errors import MobiletuneError
    from mobiletune.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(source)
    try:  # the CLI's default --max-drop 0.03: refusal is a missed target
        r = export_checkpoint(ckpt, "onnx", out / "model.onnx", int8=True, max_drop=0.03,
                              progress=lambda m: print(f"  .. {m}", file=sys.stderr))
    except MobiletuneError as e:
        print(f"int8 refused: {e}")
        return False
    print(f"checkpoint {ckpt['path']} ({ckpt['arch']}, {r.images} val images)")
    print(f"ONNX top-1 agreement {r.agreement:.4f}, max prob diff {r.max_prob_diff:.2e}")
    for name in r.latency_ms:
        print(f"  {name:8s} acc {r.accuracy[name]:.4f}  batch-1 {r.latency_ms[name]:7.1f} ms  "
              f"size {r.size_bytes[name] / 2**20:5.1f} MiB")
    drop = r.int8_drop
    print(f"int8 keeps the last {r.int8_float_blocks} block(s) of features and the head float")
    print(f"int8 drop {drop:+.4f} (float {r.accuracy['onnx']:.4f}, int8 {r.accuracy['int8']:.4f}),"
          f" int8 speed-up over float ONNX {r.latency_ms['onnx'] / r.latency_ms['int8']:.2f}x")
    return r.agreement >= 0.97 and drop <= 0.03


def _profiles() -> bool:
    from mobiletune.config.schema import ARCHS
    from mobiletune.model.profile import PUBLISHED, profile_arch

    ok = True
    for arch in ARCHS:
        p, (params, macs) = profile_arch(arch, 224), PUBLISHED[arch]
        dp, dm = p["params"] / params - 1, p["macs"] / macs - 1
        ok &= abs(dp) <= 0.03 and abs(dm) <= 0.06
        print(f"{arch:20s} params {p['params']:>9,} ({dp:+.2%} vs {params / 1e6:.2f}M)  "
              f"MACs {p['macs']:>11,} ({dm:+.2%} vs {macs / 1e6:.0f}M)  "
              f"separable/standard {p['separable_totals']['ratio']:.3f}")
    return ok


def main() -> int:
    import torch

    torch.set_flush_denormal(True)
    with tempfile.TemporaryDirectory() as tmp:
        if len(sys.argv) > 1:
            source = sys.argv[1]
        elif (SHARED / "weights").is_dir():
            source = _train(Path(tmp) / "runs")
        else:
            print(f"no run given and {SHARED} is absent", file=sys.stderr)
            return 2
        ok = _export(source, Path(tmp) / "export")
    ok &= _profiles()
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
