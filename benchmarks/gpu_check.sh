#!/usr/bin/env bash
# One short GPU check, from the repo root of a fresh machine that has torch + CUDA (maybe
# not our other dependencies, and no network). Logs go to $OUT (default ./gpu-check-out).
# Total under ~8 minutes: each step has its own timeout, and a step whose dependencies are
# missing is skipped with a line saying so.
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#
# (DEVICE=cpu SIZES=200 SKIP_TESTS=1 rehearses the script on a machine without a GPU.)
#
# Steps: 1. environment (GPU, versions, which optional packages import);
#        2. bench_fill.py on CUDA: fill rate by worker count, threads vs decoder processes,
#           5k photo-size images (needs ../shared or ./shared for the photos and weights);
#           bench_scale.py on CUDA, 1k and 5k images (needs torch, torchvision, numpy, PIL);
#        3. `mobiletune train` (head + finetune) on CUDA under torchrun, then predict
#           (needs typer, rich, yaml; hymenoptera from ../shared or ./shared if present,
#           else a small synthetic folder);
#        4. the test suite (needs pytest, typer, rich, yaml, onnxruntime; tests never need
#           a GPU, this checks that nothing breaks where one is present).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD MOBILETUNE_CACHE=$OUT/cache
PY=${PYTHON:-$(command -v python || command -v python3)}
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-1000 5000}
say() { echo "== $*" | tee -a "$OUT/summary.txt"; }
has() { $PY -c "import $1" 2>/dev/null; }

say "environment $(date -u +%T)"
$PY - <<'EOF' 2>&1 | tee -a "$OUT/summary.txt"
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.device_count(), "device(s)")
for m in ("torchvision", "numpy", "PIL", "typer", "rich", "yaml", "onnxruntime", "pytest", "matplotlib"):
    try:
        mod = importlib.import_module(m)
        print(f"{m}: {getattr(mod, '__version__', 'ok')}")
    except Exception as e:
        print(f"{m}: MISSING ({type(e).__name__})")
EOF
CLI_OK=1
for m in typer rich yaml; do has $m || { CLI_OK=0; say "missing $m: the CLI steps are skipped"; }; done

say "bench_fill on $DEVICE $(date -u +%T)"
timeout 240 $PY benchmarks/bench_fill.py --device $DEVICE --images ${FILL_IMAGES:-5000} \
    --workers ${FILL_WORKERS:-4 16} > "$OUT/bench_fill.log" 2>&1
say "bench_fill exit $?"
tail -n 12 "$OUT/bench_fill.log" >> "$OUT/summary.txt"

say "bench_scale on $DEVICE, sizes $SIZES $(date -u +%T)"
timeout 120 $PY benchmarks/bench_scale.py --device $DEVICE --sizes $SIZES --epochs 3 \
    --skip-torchrun --work "$OUT/scale" > "$OUT/bench_scale.log" 2>&1
say "bench_scale exit $? (table in bench_scale.log)"
tail -n 12 "$OUT/bench_scale.log" >> "$OUT/summary.txt"

if [ "$CLI_OK" = 1 ]; then
    say "torchrun train (head 3 + finetune 2) on $DEVICE $(date -u +%T)"
    DATA=""
    for d in ../shared/datasets/hymenoptera shared/datasets/hymenoptera; do [ -d "$d" ] && DATA=$d && break; done
    WEIGHTS=none
    for w in ../shared/weights/mobilenet_v2_imagenet_offline.pth shared/weights/mobilenet_v2_imagenet_offline.pth; do [ -f "$w" ] && WEIGHTS=$w && break; done
    [ -z "$DATA" ] && DATA=$(ls -d "$OUT"/scale/n* | head -n 1) && say "no hymenoptera: using $DATA"
    timeout 75 $PY -m torch.distributed.run --nproc-per-node 1 --master-addr 127.0.0.1 \
        --master-port 29555 -m mobiletune train --data "$DATA" --arch mobilenet_v2 \
        --weights "$WEIGHTS" --device $DEVICE --epochs 3 --set finetune.unfreeze=3 \
        --set finetune.epochs=2 --out "$OUT/runs" --name gpu -q > "$OUT/train.log" 2>&1
    say "train exit $?"
    tail -n 4 "$OUT/train.log" >> "$OUT/summary.txt"
    cat "$OUT/runs/gpu/metrics.csv" >> "$OUT/summary.txt" 2>/dev/null
    IMG=$(find "$DATA" -name '*.jpg' | head -n 2)
    timeout 30 $PY -m mobiletune predict $IMG --checkpoint "$OUT/runs/gpu" \
        > "$OUT/predict.log" 2>&1
    say "predict exit $?"
    cat "$OUT/predict.log" >> "$OUT/summary.txt"
fi

if [ -n "${SKIP_TESTS:-}" ]; then
    say "test suite skipped (SKIP_TESTS)"
elif has pytest && [ "$CLI_OK" = 1 ] && has onnxruntime; then
    LEFT=$(( 465 - SECONDS )); [ $LEFT -lt 60 ] && LEFT=60  # the whole script: under 8 min
    say "test suite, ${LEFT}s left $(date -u +%T)"
    timeout $LEFT $PY -m pytest -q -x -p no:cacheprovider > "$OUT/pytest.log" 2>&1
    say "pytest exit $? (124 = ran out of its ${LEFT}s; pytest.log shows how far it got)"
    tail -n 5 "$OUT/pytest.log" >> "$OUT/summary.txt"
else
    say "test suite skipped: needs pytest, typer, rich, yaml and onnxruntime"
fi
rm -rf "$OUT/cache" "$OUT/scale"  # big and regenerable; the logs stay
say "done $(date -u +%T)"
