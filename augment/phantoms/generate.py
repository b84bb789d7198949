"""One phantom patient in memory: anatomy, lesions, intensities, blur and noise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from augment.config import PhantomsConfig
from augment.phantoms.anatomy import (
    _anatomy,
)
from augment.phantoms.shapes import (
    _align,
    _ellipsoid,
    _Grid,
)
from augment.phantoms.tissue import (
    _HU,
    _LESION_DRAW,
    _LESION_ORGANS,
    HU_MAX,
    HU_MIN,
    Tissue,
)


@dataclass
class Phantom:
    """One generated patient, in memory.

    Attributes:
        patient: the patient id, ``PHANTOM-%04d``.
        index: the patient index (0-based).
        image: float32 (Z, Y, X) HU, already clipped to what the DICOM files can store.
        mask: uint8 (Z, Y, X), 1 on lesions, 0 elsewhere.
        tissue: uint8 (Z, Y, X) :class:`Tissue` ids the image was made from.
        spacing: voxel size (z, y, x) in mm.
        origin: LPS position (x, y, z) in mm of the centre of voxel (0, 0, 0).
        lesion: whether the patient was drawn as a lesion patient.
        lesions: the drawn lesions (organ, centre, radius, contrast), for inspection.
    """

    patient: str
    index: int
    image: np.ndarray
    mask: np.ndarray
    tissue: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    lesion: bool
    lesions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The class written to labels.csv: ``lesion`` or ``normal``."""
        return "lesion" if self.lesion else "normal"


def patient_id(index: int) -> str:
    """The DICOM PatientID (also the CSV patient and the NIfTI case name) of a patient index."""
    return f"PHANTOM-{index:04d}"


def lesion_patients(cfg: PhantomsConfig) -> set[int]:
    """The indices of the patients drawn with lesions.

    ``round(prevalence * patients)`` of them, but at least one and at most ``patients - 1``
    when there are two patients or more, so that both classes are always present.
    """
    n = round(cfg.prevalence * cfg.patients)
    if cfg.patients >= 2:
        n = min(max(n, 1), cfg.patients - 1)
    rng = np.random.default_rng([cfg.seed, _LESION_DRAW, cfg.patients])
    return {int(i) for i in rng.permutation(cfg.patients)[:n]}


# --------------------------------------------------------------------------------------------
# Geometry helpers: every shape is painted inside its bounding box only.
# --------------------------------------------------------------------------------------------


def _draw_lesions(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, spacing: tuple[float, float, float]
) -> list[dict[str, Any]]:
    """Draw 1-5 lesions: organ, centre voxel, radius, shape and contrast.

    Sizes run from ~24 to ~50 mm across and contrasts from 45 HU below to 80 HU above the organ
    (nine in ten hypodense), like the liver metastases a radiologist reports on portal-venous CT.
    Smaller and fainter lesions (down to ~15 mm, 35 HU; or down to ~21 mm) left a 64 x 64 slice
    classifier unable to beat a "how much liver is in the slice" shortcut by a clear margin on
    every seed with 64 training patients (measured on val: docs/results.md), so the demo could
    not tell whether anything helps.
    """
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.25, 0.25, 0.2, 0.15]))
    lesions = []
    for _ in range(n):
        organ = Tissue(rng.choice([Tissue.LIVER, Tissue.SPLEEN, Tissue.KIDNEY_CORTEX],
                                  p=[0.8, 0.1, 0.1]))  # fmt: skip
        if not np.isin(labels, _LESION_ORGANS[organ]).any():
            organ = Tissue.LIVER
        min_r = 1.6 * spacing[2] / g.mm_per_u  # at least ~3 pixels across
        r = max(float(np.exp(rng.uniform(np.log(0.08), np.log(0.17)))), min_r)
        lesion = _place(labels, g, rng, organ, r, spacing)
        if lesion is not None:
            lesions.append(lesion)
    return lesions


def _place(
    labels: np.ndarray,
    g: _Grid,
    rng: np.random.Generator,
    organ: Tissue,
    r: float,
    spacing: tuple[float, float, float],
) -> dict[str, Any] | None:
    """Pick a centre inside the organ, at least ~half a radius from its edge."""
    inside = np.isin(labels, _LESION_ORGANS[organ])
    if not inside.any():
        return None
    dist_mm = ndimage.distance_transform_edt(inside, sampling=spacing)
    for need in (0.6 * r * g.mm_per_u, 0.0):
        cand = np.flatnonzero(dist_mm > need)
        if cand.size:
            break
    k, j, i = np.unravel_index(int(rng.choice(cand)), labels.shape)
    hypo = rng.random() < 0.9
    mean = _HU[organ][0]
    return {
        "organ": organ.name.lower(),
        "centre": (float(g.u[i]), float(g.v[j]), float(g.t[k])),
        "radius_mm": r * g.mm_per_u,
        "r": r,
        "elong": (float(rng.uniform(0.75, 1.25)), float(rng.uniform(0.8, 1.2))),
        "angle": float(rng.uniform(0, np.pi)),
        "lobes": [
            (float(rng.normal(0, 0.5)), float(rng.normal(0, 0.5)))
            for _ in range(int(rng.integers(0, 4)))
        ],  # fmt: skip
        "delta": float(-rng.uniform(45, min(85, mean - 5)) if hypo else rng.uniform(60, 80)),
        "tissues": _LESION_ORGANS[organ],
    }


def _paint_lesion(
    lesion: dict[str, Any], labels: np.ndarray, g: _Grid, mask: np.ndarray, delta: np.ndarray
) -> None:
    """Rasterise one lesion (ellipsoid plus optional lobes) into the mask and the HU offset."""
    cu, cv, ct = lesion["centre"]
    r = lesion["r"]
    rt = max(r * lesion["elong"][1] * g.upt, 0.45 * _slice_t(g))
    radii = (r, r * lesion["elong"][0], rt)
    box, q = _ellipsoid(g, (cu, cv, ct), radii, angle=lesion["angle"])
    for du, dv in lesion["lobes"]:  # lobulated: smaller ellipsoids on the rim
        b2, q2 = _ellipsoid(g, (cu + du * r, cv + dv * r, ct), (0.7 * r, 0.7 * r, rt))
        q = np.minimum(q, _align(box, b2, q2))
    inside = (q < 1) & np.isin(labels[box], lesion["tissues"])
    mask[box][inside] = 1
    # contrast strongest in the centre, fading to the rim (a soft, heterogeneous lesion)
    profile = 0.75 + 0.5 * np.clip(1 - q, 0, 1)
    view = delta[box]
    view[inside] = (lesion["delta"] * profile)[inside]


def _slice_t(g: _Grid) -> float:
    return 1.0 / max(g.t.size - 1, 1)


def _intensities(labels: np.ndarray, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean HU per tissue (jittered per patient) plus texture, as float32 (Z, Y, X)."""
    n = max(_HU) + 1
    mean, amp = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for tissue, (m, jitter, a) in _HU.items():
        mean[tissue], amp[tissue] = m + rng.normal(0, jitter / 2), a
    return mean[labels] + amp[labels] * texture


# --------------------------------------------------------------------------------------------
# One patient
# --------------------------------------------------------------------------------------------


def generate_phantom(cfg: PhantomsConfig, index: int, lesion: bool | None = None) -> Phantom:
    """Generate one patient's HU volume, lesion mask and tissue labels (no I/O).

    Args:
        cfg: the phantom parameters (size, slices, spacing, noise, seed, ...).
        index: the patient index; with ``cfg.seed`` it seeds the patient's Generator.
        lesion: force a lesion (True) or normal (False) patient; ``None`` uses
            :func:`lesion_patients`.

    Returns:
        The :class:`Phantom`; the same ``cfg`` and ``index`` give identical arrays.
    """
    if lesion is None:
        lesion = index in lesion_patients(cfg)
    rng = np.random.default_rng([cfg.seed, index])
    g = _grid(cfg, rng)
    spacing = (cfg.slice_thickness, cfg.pixel_spacing, cfg.pixel_spacing)
    labels, texture = _anatomy(g, rng)
    mask = np.zeros(g.shape, np.uint8)
    delta = np.zeros(g.shape, np.float32)
    lesions = _draw_lesions(labels, g, rng, spacing) if lesion else []
    for les in lesions:
        _paint_lesion(les, labels, g, mask, delta)
    hu = _intensities(labels, texture, rng) + delta
    # partial volume: thick slices average more along z than in-plane
    hu = ndimage.gaussian_filter(hu, sigma=(0.35, 0.6, 0.6), mode="nearest")
    hu += rng.normal(0.0, cfg.noise_hu, size=hu.shape).astype(np.float32)
    np.clip(hu, HU_MIN, HU_MAX, out=hu)
    z0 = round(float(rng.uniform(-420, -300)), 1)  # table position varies between scans
    half = (cfg.size - 1) / 2 * cfg.pixel_spacing
    for les in lesions:
        les.pop("tissues")
    return Phantom(
        patient=patient_id(index),
        index=index,
        image=hu.astype(np.float32),
        mask=mask,
        tissue=labels,
        spacing=spacing,
        origin=(round(-half, 4), round(-half, 4), z0),
        lesion=bool(lesions),
        lesions=lesions,
    )


def _grid(cfg: PhantomsConfig, rng: np.random.Generator) -> _Grid:
    """Voxel coordinates in body units: the body fills 74-90% of the field of view."""
    half_width = rng.uniform(0.74, 0.9)  # of the half field of view
    cx, cy = rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.06)
    n = cfg.size
    x = (np.arange(n) - (n - 1) / 2) / (n / 2)
    fov_half_mm = n / 2 * cfg.pixel_spacing
    mm_per_u = half_width * fov_half_mm
    z_mm = max(cfg.slices - 1, 1) * cfg.slice_thickness
    return _Grid(
        u=((x - cx) / half_width).astype(np.float32),
        v=((x - cy) / half_width).astype(np.float32),
        t=np.linspace(0.0, 1.0, cfg.slices, dtype=np.float32),
        upt=mm_per_u / z_mm,
        mm_per_u=mm_per_u,
    )


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------
