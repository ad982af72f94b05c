"""The lab: research drivers beside the product, never imported by it.

Evaluation in every pose mode (``evaluate``: the product's, and the evaluation-only ones
this package registers, ``modes``), the baselines (``iterative``, ``patchcore``), the
benchmarks (``benchmarks``), the paper's ablation (``ablation``), the pose sweeps
(``pose_sweep``), the scorer's sensitivity (``sensitivity``) and the service load test
(``loadtest``). ``rpe-pad lab ...`` (``lab/cli.py``) runs them. ``models``, ``training`` and
``service`` never import this package (tests/test_layers.py).
"""

from models.registry import register_pose_mode

register_pose_mode("oracle", "the true pose (evaluation upper bound; needs test/transforms.json)",
                   "lab.modes:OraclePose", lab=True)
register_pose_mode("retrieval", "the best-matching gallery view's pose (baseline)", "lab.modes:RetrievalPose", lab=True)
register_pose_mode("iterative", "the peers' per-query render-and-compare from the retrieval pose (slow baseline)",
                   "lab.modes:IterativePose", lab=True)
