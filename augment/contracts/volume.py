"""The in-memory Volume that every reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment.errors import InputError

__all__ = ["InputError", "Volume"]


@dataclass
class Volume:
    """One scan in physical units, in (Z, Y, X) order.

    Attributes:
        image: float32 (Z, Y, X), physical units (HU for CT).
        spacing: voxel size (z, y, x) in mm.
        patient: pseudonymised patient id (never the id found in the input).
        source: ``<pseudonym>/series-<n>`` (never a path: folders carry names).
        modality: "CT", "MR", ... ("OT" when unknown).
        mask: optional uint8 label ids, same shape as ``image``.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    patient: str
    source: str
    modality: str = "OT"
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise InputError(f"{self.source}: expected a 3D volume, got shape {self.image.shape}")
        if self.mask is not None and self.mask.shape != self.image.shape:
            raise InputError(
                f"{self.source}: mask shape {self.mask.shape} differs from image {self.image.shape}"
            )
