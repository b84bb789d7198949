"""Evaluation tasks: the registry (light: names and help only; tasks load on use).

A task is a :class:`augment.evaluation.tasks.base.Task`: the downstream model that the gain
experiment (:mod:`augment.evaluation.experiment`) trains in every arm and seed, and how its test
predictions are scored. ``evaluate.tasks`` names them; adding one is one new file in this
package plus one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augment.registry import Entry, Registry

if TYPE_CHECKING:
    from augment.evaluation.tasks.base import Task

TASKS: Registry[type[Task]] = Registry(
    "evaluation task",
    {
        "classification": Entry(
            "augment.evaluation.tasks.classification:ClassificationTask",
            "slice classes (normal / lesion): AUC, balanced accuracy, sensitivity, specificity",
        ),
        "segmentation": Entry(
            "augment.evaluation.tasks.segmentation:SegmentationTask",
            "lesion masks (MONAI 2D UNet): per-patient Dice, lesion-wise sensitivity",
        ),
    },
)
