"""What a loaded category holds: a summary dict and a contact sheet (`rpe-pad show`)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from PIL import Image

from models import camera
from models.data import GOOD, Category
from models.viz import Cell, contact_sheet, mask_overlay
from training.prepare.report import elevation_gap


def describe(category: Category) -> dict:
    """Counts, image size, field of view and the spread of the training cameras."""
    centres = camera.camera_center(category.train_poses())
    radius = centres.norm(dim=-1)
    elevation = torch.rad2deg(torch.asin(centres[:, 2] / radius))
    labels = Counter(q.label for q in category.test)
    return {
        "category": category.name,
        "image_size": [category.width, category.height],
        "camera_angle_x_deg": round(math.degrees(category.camera_angle_x), 3),
        "focal_px": round(float(category.K[0, 0]), 3),
        "train_views": len(category.train),
        "camera_radius": [round(float(radius.min()), 3), round(float(radius.max()), 3)],
        "camera_elevation_deg": [round(float(elevation.min()), 1), round(float(elevation.max()), 1)],
        # The widest band of elevation with no camera: prepare's `elevation_gap` warning, for any category.
        "camera_elevation_gap_deg": [round(v, 1) for v in elevation_gap(elevation.numpy())],
        "test_views": dict(sorted(labels.items())),
        "test_with_true_pose": sum(q.w2c is not None for q in category.test),
        "defect_pixels_mean": (
            round(float(np.mean([q.mask.sum().item() for q in category.test if q.label != GOOD])), 1)
            if any(q.label != GOOD for q in category.test)
            else 0.0
        ),
    }


def category_sheet(category: Category, per_row: int = 6, cell: int = 160) -> Image.Image:
    """Training views, good queries, and for each defect type its queries with the mask
    overlaid in red next to the plain view."""
    step = max(1, len(category.train) // per_row)
    rows: list[tuple[str, list[Cell]]] = [
        ("train", [Cell(v.image.numpy(), v.name.split("/")[-1]) for v in category.train[::step][:per_row]])
    ]
    good = [q for q in category.test if q.label == GOOD][:per_row]
    if good:
        rows.append(("test / good", [Cell(q.image.numpy(), q.name.split("/")[-1]) for q in good]))
    for defect in category.defect_types:
        cells: list[Cell] = []
        for q in [q for q in category.test if q.label == defect][: per_row // 2]:
            stem = q.name.split("/")[-1]
            cells.append(Cell(q.image.numpy(), f"{stem}"))
            cells.append(Cell(mask_overlay(q.image.numpy(), q.mask.numpy()), f"{stem} mask ({int(q.mask.sum())} px)"))
        rows.append((f"test / {defect}", cells))
    return contact_sheet(rows, cell=cell, title=f"{category.name}: {category.width}x{category.height} px")
