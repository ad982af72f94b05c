"""The evaluation-only pose modes, plugged into the Inspector's registry (``models.registry``).

- ``oracle``: the true pose of each query (``Batch.given_poses``): the upper bound, what the
  Gaussian model and the scorer can do;
- ``retrieval``: the best-matching gallery view's pose (the pose a retrieval-only pipeline
  would score at);
- ``iterative``: the peers' per-query render-and-compare from the retrieval pose
  (``lab.iterative``; options: ``IterativeConfig``'s fields, e.g. ``steps``).

``lab/__init__.py`` registers them (by name, importing nothing heavy); the product never does, so neither the service nor
``rpe-pad inspect`` can be given one.
"""

from __future__ import annotations

import time

from lab.iterative import IterativeConfig, iterative_refine
from models.inspector import Batch, Inspector, Match


class OraclePose:
    """The queries' true poses, handed in by the caller (``Batch.given_poses``)."""

    def __init__(self, inspector: Inspector):
        pass

    def __call__(self, batch: Batch) -> None:
        if batch.given_poses is None or batch.given_poses.shape != (len(batch.images), 4, 4):
            raise ValueError("pose mode 'oracle' needs the true poses of the queries [B, 4, 4]")
        batch.poses = batch.given_poses.double().cpu()


class RetrievalPose:
    """The best-matching gallery view's pose."""

    def __init__(self, inspector: Inspector):
        if inspector.estimator is None:
            raise ValueError("pose mode 'retrieval' needs the gallery")
        self.match, self.gallery = Match(inspector.estimator), inspector.estimator.gallery

    def __call__(self, batch: Batch) -> None:
        self.match(batch)
        batch.poses = self.gallery.poses[batch.matched.gallery_ids[:, 0]].double().clone()


class IterativePose(RetrievalPose):
    """From the retrieval pose, the peers' Adam optimisation through the renderer."""

    def __init__(self, inspector: Inspector, **options):
        super().__init__(inspector)
        self.scene, self.cfg = inspector.scene, IterativeConfig(**options)

    def __call__(self, batch: Batch) -> None:
        super().__call__(batch)
        t0 = time.perf_counter()
        batch.poses = iterative_refine(self.scene, batch.images_cpu, batch.poses, batch.Ks, self.cfg)
        batch.timed("optimise", t0)
