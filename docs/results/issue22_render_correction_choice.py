"""Issue 22, session 26: the rule's choice between the product's references (``sel{SEED}_*``)
and the corrected ones (``rc{SEED}_*``, `issue22_render_correction_cache.py`) on a cached painted
set, each scored as the product scores (the five maps over their 0.98 quantile levels, joined by
their maximum, the threshold at the 98th percentile of the clean image scores).

    python docs/results/issue22_render_correction_choice.py CACHE_DIR SEED OUT.json
"""
import json
import sys
from pathlib import Path

from issue22_blur_explore import cached_sets, run
from issue22_interior_explore import maps

if __name__ == "__main__":
    cache, seed = Path(sys.argv[1]), int(sys.argv[2])
    out = {}
    for prefix, name in (("sel", "product"), ("rc", "corrected")):
        rows = {}
        for c, d in cached_sets(cache, seed, prefix):
            r = run(d, maps(d, "product"), float(d["sigma"]))
            rows[c] = {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro", "recall", "false_alarm_rate", "found",
                                         "of", "by_kind", "clean_top5", "clean_median")}
            print(name, c, json.dumps(rows[c]), flush=True)
        out[name] = {"categories": rows, "found": sum(r["found"] for r in rows.values()),
                     "of": sum(r["of"] for r in rows.values())}
        print(name, "summed found", out[name]["found"], "of", out[name]["of"], flush=True)
    Path(sys.argv[3]).write_text(json.dumps(out, indent=1) + "\n")
