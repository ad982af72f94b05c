#!/bin/bash
# Issue 22's next measurement, on a lent GPU (this workplace's device tool): the `paper` preset's
# Gaussian model of a synthetic seed against the `cpu` preset's, each fitted, calibrated and
# measured as `rpe-pad lab fidelity-study` does (measure.py beside this file: the self-check,
# and the test split at true poses at each model's own threshold: image AUROC, recall and
# false-alarm rate). Every stage renders on
# CUDA there. The device image (Python 3.12, torch 2.11, no registry) lacks some of the
# product's packages: fetch them first, here, with fetch_wheels.sh beside this file. Then:
#   run(command="bash docs/results/gpu_issue22/device_fidelity.sh", carry=[".whl"], timeout_s=600)
# SEED (default 1), BUDGET seconds for the whole script (default 560). What comes back in $OUT:
# main.log, fidelity_<variant>.json for each variant (each written as soon as it is measured,
# in the order of VARIANTS), and the logs. The seed's `cpu` model on this CPU is in
# docs/RESULTS.md (session 22), should the GPU's time run out before its own `cpu` variant.
# Since session 36 the presets calibrate on five folds, so each variant also fits four fold models
# (each 80 % of its fit): about 4.2 fits per variant where there was one. The paper's own fit
# (30 000 steps, up to a million Gaussians) with four more folds cannot fit a lent GPU's
# 15 minutes (gsplat's kernels alone take about 2 of them), so by default (session 51) the call
# measures `paper7k` (the paper's settings, its schedule scaled to 7000 steps) and then `cpu`,
# both calibrated on one fold (FOLDS=1: the fit's own snapshot): VARIANTS and FOLDS override.
set -u
T0=$(date +%s); BUDGET=${BUDGET:-560}; SEED=${SEED:-1}; VARIANTS=${VARIANTS:-paper7k,cpu}
export FOLDS=${FOLDS-1}
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/main.log"; }
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  >"$OUT/pip.log" 2>&1 || { log "pip install failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L | tee -a "$OUT/main.log"
export TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
python3 -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat has no CUDA extension'" \
  >"$OUT/gsplat_build.log" 2>&1 || { log "gsplat build failed"; tail -20 "$OUT/gsplat_build.log"; exit 1; }
log "gsplat's CUDA kernels built"
W=/tmp/f; mkdir -p $W
[ -f "$W/synth_$SEED/synth.json" ] || python3 -m rpe_pad.cli synth "$W/synth_$SEED" --seed "$SEED" >"$OUT/synth.log" 2>&1 \
  || { log "synth failed"; tail "$OUT/synth.log"; exit 1; }
log "synthetic seed $SEED generated"
LEFT=$(( BUDGET - ( $(date +%s) - T0 ) - 10 ))
[ "$LEFT" -gt 60 ] || { log "only $LEFT s left after the set-up: nothing measured"; exit 1; }
log "$VARIANTS (calibration folds: ${FOLDS:-5}), with $LEFT s left"
export TQDM_MININTERVAL=15  # the fits' progress in the log, a line every 15 s
timeout "$LEFT" python3 docs/results/gpu_issue22/measure.py "$W/synth_$SEED" "$W/s$SEED" "$OUT" "$VARIANTS" >"$OUT/measure.log" 2>&1
log "measure rc=$?"
tail -4 "$OUT/measure.log"
