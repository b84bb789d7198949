"""Conditional consistency: do the generator's samples carry the class they were asked for?

A lesion-class sample whose generated mask holds no lesion, or a lesion mask over unchanged
tissue, teaches a downstream model the wrong thing. Measured per class, on arrays:

- ``match``: the share of samples whose mask agrees with the class: the first class (normal)
  has no lesion pixel, every other class at least ``min_lesion_pixels`` (the store's rule for a
  lesion slice);
- ``contrast``: the median absolute difference between the image under a lesion mask and a
  two-pixel ring around it, over samples that carry a lesion, next to the same for real slices.

Used while training (logged, in ``config.json``), by ``augment sample`` (its summary and the
optional acceptance filter) and by ``augment evaluate`` (the report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def lesion_pixels(masks: np.ndarray, lesion_ids: list[int] | None) -> np.ndarray:
    """Lesion pixels per slice of (n, S, S) label-id masks: (n,) (None: any non-zero id)."""
    hit = masks > 0 if lesion_ids is None else np.isin(masks, lesion_ids)
    return hit.reshape(len(masks), -1).sum(axis=1)


def matches_class(
    masks: np.ndarray, classes: np.ndarray, lesion_ids: list[int] | None, min_pixels: int
) -> np.ndarray:
    """(n,) bool: class 0 with no lesion pixel, or another class with at least ``min_pixels``."""
    n = lesion_pixels(masks, lesion_ids)
    return np.where(np.asarray(classes) == 0, n == 0, n >= min_pixels)


def lesion_contrast(
    images: np.ndarray, masks: np.ndarray, lesion_ids: list[int] | None, min_pixels: int
) -> float:
    """Median |mean under the lesion - mean of a 2-pixel ring| over slices with a lesion.

    Args:
        images: (n, C, S, S) or (n, S, S) in [-1, 1] (channel 0 is used).
        masks: (n, S, S) label ids.
        lesion_ids: the lesion label ids (None: any non-zero).
        min_pixels: slices with fewer lesion pixels are left out.

    Returns:
        The median contrast in [-1, 1] units; NaN when no slice has a lesion.
    """
    from scipy import ndimage

    img = np.asarray(images, np.float32)
    img = img[:, 0] if img.ndim == 4 else img
    lesion = masks > 0 if lesion_ids is None else np.isin(masks, lesion_ids)
    values = []
    for i in np.flatnonzero(lesion.reshape(len(lesion), -1).sum(axis=1) >= min_pixels):
        ring = ndimage.binary_dilation(lesion[i], iterations=2) & ~lesion[i]
        if ring.any():
            values.append(abs(float(img[i][lesion[i]].mean() - img[i][ring].mean())))
    return float(np.median(values)) if values else float("nan")


@dataclass
class Consistency:
    """Conditional consistency of a set of samples.

    Attributes:
        match: class name -> share of its samples whose mask agrees with it.
        contrast: lesion contrast of the samples; ``real_contrast`` that of real slices.
    """

    match: dict[str, float]
    contrast: float
    real_contrast: float

    @property
    def contrast_ratio(self) -> float:
        """Sample contrast relative to real (1: as conspicuous as real lesions)."""
        if not np.isfinite(self.real_contrast) or self.real_contrast <= 0:
            return float("nan")
        return self.contrast / self.real_contrast

    def to_dict(self) -> dict[str, object]:
        """Rounded values for config.json, metrics and summaries."""
        return {
            "match": {k: round(v, 4) for k, v in self.match.items()},
            "contrast": round(self.contrast, 4),
            "real_contrast": round(self.real_contrast, 4),
            "contrast_ratio": round(self.contrast_ratio, 4),
        }


def measure(
    images: np.ndarray,
    masks: np.ndarray,
    classes: np.ndarray,
    class_names: list[str],
    lesion_ids: list[int] | None,
    min_pixels: int,
    real_contrast: float,
) -> Consistency:
    """Conditional consistency of samples drawn with known classes (see the module docstring).

    Args:
        images: (n, C, S, S) samples in [-1, 1].
        masks: (n, S, S) their generated label-id masks.
        classes: (n,) the class each sample was drawn for.
        class_names: names of the class ids.
        lesion_ids: the lesion label ids (None: any non-zero).
        min_pixels: the store's ``min_lesion_pixels``.
        real_contrast: :func:`lesion_contrast` of the real training slices.
    """
    ok = matches_class(masks, classes, lesion_ids, min_pixels)
    classes = np.asarray(classes)
    match = {
        name: float(ok[classes == c].mean())
        for c, name in enumerate(class_names)
        if (classes == c).any()
    }
    contrast = lesion_contrast(images, masks, lesion_ids, min_pixels)
    return Consistency(match, contrast, real_contrast)
