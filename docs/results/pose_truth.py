"""Shared by the issue-22 pose studies in this folder (``issue22_pose_heldout.py``,
``issue22_unseen_views.py``): a bundle's Inspector, a category's training photographs at the
bundle's size, and each estimated pose's true alignment error at 224 px."""
from pathlib import Path

import torch

from models.camera import reprojection_error_px, scale_intrinsics
from models.data import Category, load_category
from models.inspector import Inspector
from training.evaluate import object_points


def open_with_truth(bundle_dir: str, category_dir: str, **overrides) -> tuple[Inspector, Category, callable]:
    """The Inspector (``overrides``: InspectorConfig fields), the category's training views, and
    ``error(pose [1, 4, 4], view) -> float``: the mean distance in pixels at 224 between the
    object's points projected with the estimate and with the view's true pose."""
    insp = Inspector.load(Path(bundle_dir), device="cpu", **overrides)
    cat = load_category(category_dir, size=insp.width, load_test=False)
    points = object_points(insp.scene)
    K224 = scale_intrinsics(insp.K.double(), 224 / insp.width, 224 / insp.height)

    def error(pose: torch.Tensor, view) -> float:
        return float(reprojection_error_px(pose.double().cpu(), view.w2c[None].double(), K224, points)[0])

    return insp, cat, error
