#!/usr/bin/env bash
# Issue 18's GPU verification in one run, for a lent GPU machine whose python3 already holds PyTorch
# with CUDA (plus numpy, Pillow, onnx, onnxruntime, scikit-image...) but that has no network:
#
#   here, once:  bash scripts/gpu_check.sh --fetch-wheels   # the wheels that image lacks -> .whl/ (25 MB)
#   there:       bash scripts/gpu_check.sh                  # results -> $OUT (else ./gpu-check)
#                carry .whl data/samples/train data/samples/eval (about 58 MB with the repo; the tool takes 64 MiB)
#
# Steps: the machine and its versions; the CUDA tests (tests/train/test_device.py: placement, CPU =
# GPU fake-quant bit for bit, a CUDA training whose export is 0 LSB on the CPU); the training-speed
# benchmark on the GPU (benchmarks/train_speed.py, the full recipe's stages); the quick preset end to
# end on CUDA; DDP over NCCL through torchrun. Exports are ONNX only: the TFLite converter's wheel
# (litert-converter, 70 MB) cannot travel. The GPU image's torch need not be the pinned 2.13: env.txt
# says which one ran. Each step has its own time limit and a failure does not stop the next one;
# summary.txt gives every step's exit code and time, and the tail of its log.
set -u
WHL=${WHL:-.whl}
WHEELS=(torchao==0.18.0 isal==1.9.1 ai-edge-litert==2.3.0 backports.strenum==1.2.8)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$WHL" "${WHEELS[@]}"
fi

OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
PY=${PY:-python3}  # the interpreter that holds torch (the GPU image: python3)
export PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log it, note rc and time
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    { echo "== $name: rc=$rc, $((SECONDS - t0)) s (limit $limit s)"; tail -n 15 "$LOGS/$name.log"; echo; } >> "$OUT/summary.txt"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
    'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  nproc; } > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt" >> "$OUT/summary.txt"

step install 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
export PYTHONPATH=/tmp/site:$PWD/src:$PWD

step cuda_tests 240 $PY -m pytest -rs -p no:cacheprovider tests/train/test_device.py
step train_speed 180 $PY benchmarks/train_speed.py --config configs/sr_x3_mobileone.yaml --devices cuda \
    --steps 50 --warmup 10 --json "$OUT/train_speed.json"
step quick_cuda 300 $PY -m quantir train configs/sr_x3_mobileone_quick.yaml --device cuda \
    --set "export.formats=[onnx]" --out /tmp/quick_cuda --quiet
cp /tmp/quick_cuda/report.md "$OUT/quick_cuda_report.md" 2>/dev/null
mkdir -p /tmp/ddp
$PY -c "from pathlib import Path; from tests.train.conftest import tiny_config; tiny_config(Path('/tmp/ddp'))"
step ddp_nccl 180 $PY -m torch.distributed.run --nproc_per_node 1 -m quantir train /tmp/ddp/cfg.yaml \
    --out /tmp/ddp/run --device cuda

for f in /tmp/quick_cuda/results.json /tmp/quick_cuda/export/parity.json /tmp/quick_cuda/state.json \
         /tmp/quick_cuda/config.yaml /tmp/ddp/run/report.md; do
    [[ -f $f ]] && cp "$f" "$LOGS/$(basename "$(dirname "$f")")_$(basename "$f")"
done
tar -czf "$OUT/logs.tgz" -C "$LOGS" .
cat "$OUT/summary.txt"
