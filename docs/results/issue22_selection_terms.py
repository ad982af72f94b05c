"""Issue 22, session 17: the scorer's unblurred terms, silhouette evidence and edge strength of the
self-check's painted and clean held-out queries (the scorer study's selection data), saved for
offline comparisons of how the terms are combined.

    python docs/results/issue22_selection_terms.py BUNDLES_DIR CATEGORY_DIR OUT.pt
"""
import sys, numpy as np, torch
from pathlib import Path
from lab.scorer_study import *
from lab.scorer_study import _masks224
from training.selfcheck import SelfCheckConfig, heldout_views, painted_queries
from models.scoring import blur_maps, fit_normal_stats
bundles, cat = Path(sys.argv[1]), Path(sys.argv[2])
bundle, category, cal_scene, held = heldout_views(bundles, cat)
calib = Calibration.model_validate_json((bundle / FILES["calibration"]).read_text())
s0 = AnomalyScorer.from_config(calib.scorer)
q = painted_queries(held, category.background, SelfCheckConfig())
images = torch.from_numpy(np.stack(q.images))
refs = render_references(cal_scene, q.poses, q.K[None].expand(len(images), 3, 3), category.width, category.height)
refs = align_references(images, refs.cpu(), RefineConfig())
scorer = AnomalyScorer(s0.extractor, s0.size, s0.sigma, s0.tolerance, background=tuple(category.background))
f = Features(scorer, images, refs.cpu())
torch.save({"terms": f.terms.half(), "sil": f.silhouette.half(), "edges": f.edges.half(), "chroma": f.chroma.half(),
            "labels": torch.from_numpy(np.asarray(q.labels)), "kinds": list(q.kinds), "masks": torch.from_numpy(_masks224(q.masks))},
           sys.argv[3])
print("saved", f.terms.shape)
