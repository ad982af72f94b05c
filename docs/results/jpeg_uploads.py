"""Session 33 (a measurement of the product as it is; it chooses `models.compression`'s rule):
what JPEG compression does to the verdicts of a bundle trained on lossless photographs. Each
test photo of a category is encoded as PNG and as JPEG at several qualities and chroma
subsamplings, decoded as the service decodes an upload, and inspected in the default mode. With
SEED and SIZE (a `rpe-pad synth` category), the good test views are ray-cast again at SIZE px
first, to see the same views sent larger than the bundle. Reports, per encoding, the good views
over the bundle's calibrated threshold (false alarms) and the defects over it (found).

    python docs/results/jpeg_uploads.py BUNDLE_DIR CATEGORY_DIR OUT.json [SEED SIZE]
"""
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from models.data import load_category
from models.images import decode_rgb
from models.inspector import Inspector

ENCODINGS = {"png": dict(format="PNG"),
             "jpeg q100 4:4:4": dict(format="JPEG", quality=100, subsampling=0),
             "jpeg q95 4:4:4": dict(format="JPEG", quality=95, subsampling=0),
             "jpeg q90 4:4:4": dict(format="JPEG", quality=90, subsampling=0),
             "jpeg q95 4:2:0": dict(format="JPEG", quality=95, subsampling=2),
             "jpeg q85 4:2:0": dict(format="JPEG", quality=85, subsampling=2),
             "jpeg q75 4:2:0": dict(format="JPEG", quality=75, subsampling=2)}


def photos(cat: Path, seed: int | None, size: int | None) -> list[tuple[bool, Image.Image]]:
    """(defective, photo) for the test split; with ``seed``, the good views ray-cast at ``size``."""
    if seed is None:
        return [(p.parent.name != "good", Image.open(p).convert("RGB")) for p in sorted((cat / "test").glob("*/*.png"))]
    import torch  # noqa: F401 - the ray caster's tensors

    from training.synth.generate import build_object, render
    c = load_category(cat)
    obj = build_object(np.random.default_rng(seed))
    out = []
    for q in c.test:
        if q.label == "good":
            K = q.K.clone().float()
            K[:2] *= size / c.width
            image, _, _ = render(obj.scene, q.w2c.float(), K, size, 2)
            out.append((False, Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))))
    return out


def main() -> None:
    bundle, cat, out_path = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    seed, size = (int(sys.argv[4]), int(sys.argv[5])) if len(sys.argv) > 5 else (None, None)
    ins = Inspector.load(bundle, device="cpu")
    threshold = float(ins.calibration.threshold)
    shots = photos(cat, seed, size)
    report = {"bundle": str(bundle), "category": str(cat), "seed": seed, "size": size or shots[0][1].width,
              "bundle_width": ins.width, "threshold": threshold, "encodings": {}}
    for name, kw in ENCODINGS.items():
        good, bad = [], []
        for defective, image in shots:
            buf = io.BytesIO()
            image.save(buf, **kw)
            x = ins.prepare(decode_rgb(buf.getvalue(), ins.scene.background))
            (bad if defective else good).append(float(ins.inspect(x[None])[0].score))
        good, bad = np.array(good), np.array(bad)
        entry = {"good_rejected": f"{int((good > threshold).sum())} of {len(good)}",
                 "good_median_max": [round(float(np.median(good)), 3), round(float(good.max()), 3)]}
        if len(bad):
            entry["defects_found"] = f"{int((bad > threshold).sum())} of {len(bad)}"
        report["encodings"][name] = entry
        print(f"{name:16s} {json.dumps(entry)}", flush=True)
    out_path.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
