"""What every fidelity metric provides to :func:`augment.evaluation.fidelity.measure.fidelity`."""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
from torch import Tensor, nn


class FidelityMetric(Protocol):
    """Compares candidate features with reference features.

    Attributes:
        rows: ``(value name, label, how to read it)`` of each value, for the report.
    """

    rows: ClassVar[tuple[tuple[str, str, str], ...]]

    def compute(self, real: np.ndarray, fake: np.ndarray, k: int, seed: int) -> dict[str, float]:
        """Values for features ``real`` (N, D) as the reference and ``fake`` (M, D)."""
        ...


class _Precomputed(nn.Module):
    """Hands precomputed features to torchmetrics, which otherwise runs its network itself."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x
