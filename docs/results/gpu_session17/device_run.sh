#!/bin/bash
# Device run, session 17: carried wheels installed, gsplat's CUDA kernels JIT-built, then drive17.py.
set -u
T0=$(date +%s); export BUDGET_ALL=${BUDGET_ALL:-560}
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/main.log"; }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || { log "pip install failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
log "wheels installed"
nvidia-smi -L | tee -a "$OUT/main.log"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ort', o.__version__, o.get_available_providers())" 2>&1 | tee -a "$OUT/main.log"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
s=$(date +%s); python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat has no CUDA extension'; print('gsplat CUDA extension loaded')" >"$OUT/gsplat_build.log" 2>&1; log "gsplat JIT build rc=$? $(( $(date +%s) - s )) s"
export PYTEST_ADDOPTS="--ignore=tests/training/test_prepare.py --ignore=tests/test_k8s.py"
export BUDGET=$(( BUDGET_ALL - ( $(date +%s) - T0 ) ))
log "driver with ${BUDGET} s left"
timeout "$BUDGET" python3 .whl/drive17.py >"$OUT/drive17_stdout.log" 2>&1; log "driver rc=$?"
cp /tmp/gc/gpu_check.md "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" --exclude=bundles --exclude=data --exclude=records --exclude=B -C /tmp gc lego17 2>/dev/null
cp /tmp/lego17/evaluate/metrics.json "$OUT/lego_metrics.json" 2>/dev/null
ls -la "$OUT"; tail -40 "$OUT/drive17_stdout.log"; cat /tmp/gc/gpu_check.md 2>/dev/null
