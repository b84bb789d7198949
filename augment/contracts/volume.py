"""The in-memory Volume that every reader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from augment.errors import InputError

__all__ = ["InputError", "Volume"]


@dataclass
class Volume:
    """One scan in physical units, in (C, Z, Y, X) order: C co-registered channels (MR
    sequences such as T1 and FLAIR; one for CT).

    Attributes:
        image: float32 (C, Z, Y, X), physical units (HU for CT); a (Z, Y, X) array is taken as
            one channel.
        spacing: voxel size (z, y, x) in mm.
        patient: pseudonymised patient id (never the id found in the input).
        source: ``<pseudonym>/series-<n>`` (never a path: folders carry names).
        modality: "CT", "MR", ... ("OT" when unknown).
        mask: optional uint8 label ids, (Z, Y, X) like one channel of ``image``.
        channels: a name per channel ("CT", "T1", "FLAIR"...); default: the modality, or the
            channel numbers.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    patient: str
    source: str
    modality: str = "OT"
    mask: np.ndarray | None = None
    channels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.image.ndim == 3:
            self.image = self.image[None]
        if self.image.ndim != 4 or self.image.shape[0] < 1:
            raise InputError(f"{self.source}: expected a 3D volume, got shape {self.image.shape}")
        n = self.image.shape[0]
        if not self.channels:
            self.channels = (self.modality,) if n == 1 else tuple(str(c) for c in range(n))
        if len(self.channels) != n:
            raise InputError(f"{self.source}: expected {n} channel names, got {self.channels}")
        if self.mask is not None and self.mask.shape != self.image.shape[1:]:
            raise InputError(
                f"{self.source}: mask shape {self.mask.shape} differs from image "
                f"{self.image.shape[1:]}"
            )
