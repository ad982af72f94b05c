"""Issue 22, session 32 (a diagnosis; it chooses nothing): more Gaussians, the same steps.

The `cpu` preset's fit with the densification's gradient threshold GROW (the preset's is 2e-4;
lower grows more Gaussians), no view held out, scored as `issue22_fit_variant.py` scores (which
this now calls; its JSON calls the new model `variant_model`).

    PYTHONPATH=.:docs/results python docs/results/issue22_denser_fit.py BUNDLE_DIR CATEGORY_DIR GROW WORK_DIR OUT.json
"""
import sys
from pathlib import Path

from issue22_fit_variant import run

run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[4]), Path(sys.argv[5]), {"grow_grad2d": float(sys.argv[3])})
