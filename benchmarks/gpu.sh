#!/usr/bin/env bash
# The one prepared GPU run of issue 6 (Triton kernels): versions, CUDA tests, ceilings,
# and the fused linear cross-entropy benchmark against PyTorch, Liger-Kernel and CCE.
#
# Before the GPU session, here (the GPU machine reaches no package index):
#   echo .gpu_wheels/ >> .git/info/exclude
#   pip download liger-kernel cut-cross-entropy array-api-compat --no-deps -d .gpu_wheels
# (all three are pure-Python wheels; array-api-compat is crossentropy's own dependency,
# missing from the GPU image).  Then, through the device tool, with .gpu_wheels carried:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu_wheels"], timeout_s=540)
# Everything lands in $OUT (results.md, results.json, tests.log, bench.log).
# The whole script is budgeted to stay under 8 minutes so that a rerun fits the lease.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 CCE_AUTOTUNE=0
start=$(date +%s)

echo "== versions"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
if ls .gpu_wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_site .gpu_wheels/*.whl || echo "wheel install failed"
  export PYTHONPATH="/tmp/gpu_site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "no .gpu_wheels/: Liger-Kernel and CCE rows will fail (see the header of this script)"
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PYEOF'
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
for name in ("triton", "liger-kernel", "cut-cross-entropy", "array-api-compat", "numpy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "| SMs", p.multi_processor_count, "| memory GiB",
          round(p.total_memory / 2**30, 1))
PYEOF

echo "== CUDA tests (tests/torch_triton -k cuda), at most 150 s"
timeout 150 "$PY" -m pytest tests/torch_triton -k "cuda or compile" -q -p no:cacheprovider \
  -o addopts="" 2>&1 | tee "$OUT/tests.log" | tail -25

echo "== benchmark, budget $((420 - ($(date +%s) - start))) s"
budget=$((400 - ($(date +%s) - start)))
timeout $((budget + 60)) "$PY" benchmarks/bench_gpu.py --out "$OUT" --budget-s "$budget" \
  2>"$OUT/bench.log"
echo "bench exit $?; stderr in bench.log; last lines:"
tail -5 "$OUT/bench.log"
echo "== gpu.sh done in $(($(date +%s) - start)) s"
