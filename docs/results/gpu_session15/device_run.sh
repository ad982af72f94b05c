#!/bin/bash
# Device run (this workplace's GPU tool): the product's wheels that the device image lacks are
# carried in .whl; gsplat's CUDA kernels are JIT-built there; then `rpe-pad lab gpu-check`.
set -u
T0=$(date +%s); BUDGET=${BUDGET:-540}
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/main.log"; }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || { log "pip install failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
log "wheels installed"
nvidia-smi -L | tee -a "$OUT/main.log"; nproc | tee -a "$OUT/main.log"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'ort', o.__version__, o.get_available_providers())" 2>&1 | tee -a "$OUT/main.log"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
( s=$(date +%s); python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat has no CUDA extension'; print('gsplat CUDA extension loaded')"; echo "rc=$? seconds=$(( $(date +%s) - s ))" ) >"$OUT/gsplat_build.log" 2>&1 &
BUILD=$!
mkdir -p /tmp/gc
( s=$(date +%s); python3 -c "
from pathlib import Path
from lab.gpu_check import SYNTH
from training.synth import SynthConfig, generate
generate(Path('/tmp/gc/data/gpucheck'), SynthConfig(seed=0, **SYNTH), progress=False)"; echo "synth rc=$? seconds=$(( $(date +%s) - s ))" ) >"/tmp/gc/synth.log" 2>&1
log "$(tail -1 /tmp/gc/synth.log)"
wait $BUILD; log "gsplat: $(tail -2 "$OUT/gsplat_build.log" | tr '\n' ' ')"
export PYTEST_ADDOPTS="--ignore=tests/training/test_prepare.py --ignore=tests/test_k8s.py"  # pycolmap, kubernetes-validate: not carried
LEFT=$(( BUDGET - ( $(date +%s) - T0 ) ))
log "gpu-check with ${LEFT} s left"
timeout "$LEFT" python3 .whl/drive.py >"$OUT/gpu_check_stdout.log" 2>&1; log "gpu-check rc=$?"
cp /tmp/gc/gpu_check.json /tmp/gc/gpu_check.md "$OUT/" 2>/dev/null
tar czf "$OUT/gc_logs.tgz" --exclude=bundles --exclude=data --exclude=records -C /tmp gc 2>/dev/null
ls -la "$OUT"; cat /tmp/gc/gpu_check.md 2>/dev/null
