"""Fidelity metrics: the registry (light: names and help only; metrics load on use).

A metric is a :class:`augment.evaluation.fidelity.base.FidelityMetric`: it compares two sets of
fixed-network features (:mod:`augment.nets.features`) and returns named values, each with the
row the report shows. ``evaluate.fidelity`` names the metrics to compute; adding one is one new
file in this package plus one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augment.registry import Entry, Registry

if TYPE_CHECKING:
    from augment.evaluation.fidelity.base import FidelityMetric

FIDELITY: Registry[type[FidelityMetric]] = Registry(
    "fidelity metric",
    {
        "fid": Entry("augment.evaluation.fidelity.fid:FID", "Frechet distance (torchmetrics)"),
        "kid": Entry(
            "augment.evaluation.fidelity.kid:KID", "kernel distance, unbiased (torchmetrics)"
        ),
        "prdc": Entry(
            "augment.evaluation.fidelity.prdc:PRDC",
            "precision, recall, density, coverage (Naeem et al. 2020, prdc)",
        ),
    },
)
