"""The embedded demo data set: CT-like abdominal phantoms with lesion masks.

Each patient is drawn from a numpy Generator seeded by ``(cfg.seed, patient index)``: a body
outline with skin, subcutaneous fat and the abdominal wall; liver (with portal and hepatic
veins), spleen, stomach (gas-fluid level), pancreas, kidneys, gallbladder, bowel loops and
colon (gas, fluid, stool), aorta, IVC and mesenteric vessels, psoas and paraspinal muscles,
vertebrae (cortical rim, cancellous body, discs, posterior elements), ribs with costal
cartilage, and lung bases with the diaphragm in the upper slices. Lesion patients get one to
four lesions (ellipsoids or lobulated, hypo- or hyperdense), mostly in the liver.

Painting works on a tissue label volume; the HU volume is then the tissue's mean HU plus a
smooth texture, blurred (partial volume) and noised. Array order is (Z, Y, X): z from inferior
(index 0) to superior, y from anterior to posterior, x from the patient's right to left, which
is DICOM's LPS with ImageOrientationPatient (1, 0, 0, 0, 1, 0).

Outputs (written by :func:`make_phantoms`, atomically): ``dicom/<series>/<sop uid>.dcm``,
``nifti/imagesTr|labelsTr/<case>.nii.gz`` with ``nifti/dataset.json`` (Medical Segmentation
Decathlon layout) and ``labels.csv`` (patient, class).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat
from rich.progress import Progress
from rich.table import Table
from scipy import ndimage
from scipy.spatial import cKDTree

from augment.config import PhantomsConfig
from augment.io.atomic import atomic_dir

__all__ = [
    "Phantom",
    "Tissue",
    "generate_phantom",
    "lesion_patients",
    "make_phantoms",
    "nifti_affine",
    "patient_id",
    "summary_table",
    "write_dicom_series",
    "write_nifti",
]

HU_MIN, HU_MAX = -1024.0, 3071.0  # what a 12-bit CT with intercept -1024 can store
INTERCEPT = -1024.0
INSTITUTION = "Augment Demo Hospital"
_Box = tuple[slice, slice, slice]
_LESION_DRAW = 0x1E51  # tag of the stream that picks the lesion patients


class Tissue(IntEnum):
    """Tissue classes of the label volume that the HU volume is made from."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    LIVER = 5
    SPLEEN = 6
    KIDNEY_CORTEX = 7
    KIDNEY_MEDULLA = 8
    URINE = 9
    AORTA = 10
    VEIN = 11
    PORTAL = 12
    CANCELLOUS = 13
    CORTICAL = 14
    DISC = 15
    CSF = 16
    RIB = 17
    CARTILAGE = 18
    LUNG = 19
    BOWEL_WALL = 20
    FLUID = 21
    GAS = 22
    STOOL = 23
    PANCREAS = 24
    HEART = 25
    BILE = 26


# (mean HU, patient-to-patient jitter, texture amplitude); portal venous phase.
_HU: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000, 0, 0),
    Tissue.SKIN: (40, 5, 4),
    Tissue.FAT: (-100, 8, 8),
    Tissue.MUSCLE: (55, 5, 6),
    Tissue.VISCERAL_FAT: (-95, 8, 12),
    Tissue.LIVER: (100, 10, 5),
    Tissue.SPLEEN: (110, 8, 5),
    Tissue.KIDNEY_CORTEX: (175, 15, 6),
    Tissue.KIDNEY_MEDULLA: (125, 15, 6),
    Tissue.URINE: (12, 4, 3),
    Tissue.AORTA: (175, 20, 4),
    Tissue.VEIN: (135, 15, 4),
    Tissue.PORTAL: (160, 15, 4),
    Tissue.CANCELLOUS: (220, 40, 30),
    Tissue.CORTICAL: (850, 120, 40),
    Tissue.DISC: (85, 8, 6),
    Tissue.CSF: (15, 4, 3),
    Tissue.RIB: (480, 80, 40),
    Tissue.CARTILAGE: (130, 20, 10),
    Tissue.LUNG: (-860, 25, 35),
    Tissue.BOWEL_WALL: (75, 10, 6),
    Tissue.FLUID: (15, 8, 4),
    Tissue.GAS: (-995, 0, 3),
    Tissue.STOOL: (-120, 40, 160),
    Tissue.PANCREAS: (90, 10, 10),
    Tissue.HEART: (140, 15, 5),
    Tissue.BILE: (8, 4, 3),
}
_LESION_ORGANS = {  # organ -> tissues a lesion in it may cover
    Tissue.LIVER: (Tissue.LIVER,),
    Tissue.SPLEEN: (Tissue.SPLEEN,),
    Tissue.KIDNEY_CORTEX: (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA),
}


_LUNG_ONTO = (
    Tissue.VISCERAL_FAT, Tissue.LIVER, Tissue.SPLEEN, Tissue.BOWEL_WALL, Tissue.FLUID,
    Tissue.GAS, Tissue.STOOL, Tissue.PANCREAS, Tissue.PORTAL, Tissue.VEIN, Tissue.BILE,
)  # fmt: skip


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


@dataclass
class _Grid:
    """Coordinates of the voxel centres, body-relative.

    ``u`` (X,) runs from the patient's right to left and ``v`` (Y,) from anterior to posterior,
    both in units of the body's half width, centred on the body; ``t`` (Z,) runs from 0 at the
    lowest slice to 1 at the highest. ``upt`` is how many t units one u unit is in millimetres.
    """

    u: np.ndarray
    v: np.ndarray
    t: np.ndarray
    upt: float
    mm_per_u: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.t.size, self.v.size, self.u.size)

    def box(self, u: tuple[float, float], v: tuple[float, float], t: tuple[float, float]) -> _Box:
        return (_span(self.t, *t), _span(self.v, *v), _span(self.u, *u))

    def coords(self, box: _Box) -> tuple[np.ndarray, ...]:
        """Broadcastable (Z,1,1), (1,Y,1), (1,1,X) coordinates inside ``box``."""
        zs, ys, xs = box
        return self.t[zs, None, None], self.v[None, ys, None], self.u[None, None, xs]


def _span(axis: np.ndarray, lo: float, hi: float) -> slice:
    return slice(int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, side="right")))


def _ellipses(
    g: _Grid,
    cu: np.ndarray,
    cv: np.ndarray,
    ru: np.ndarray,
    rv: np.ndarray,
    angle: float = 0.0,
) -> tuple[_Box, np.ndarray]:
    """A stack of ellipses, one per slice, with per-slice centre and radii (arrays (Z,)).

    Returns the bounding box and q (inside the box): the squared normalised radius, below 1
    inside; ``inf`` on slices where the radius is 0.
    """
    present = (ru > 0) & (rv > 0)
    if not present.any():
        return (slice(0, 0),) * 3, np.full((0, 0, 0), np.inf)
    rmax = np.maximum(ru, rv)[present]
    z = np.flatnonzero(present)
    box = (
        slice(int(z[0]), int(z[-1]) + 1),
        _span(g.v, float((cv[present] - rmax).min()), float((cv[present] + rmax).max())),
        _span(g.u, float((cu[present] - rmax).min()), float((cu[present] + rmax).max())),
    )
    _, vv, uu = g.coords(box)
    zs = box[0]
    du, dv = uu - cu[zs, None, None], vv - cv[zs, None, None]
    c, s = np.cos(angle), np.sin(angle)
    a, b = c * du + s * dv, -s * du + c * dv
    with np.errstate(divide="ignore", invalid="ignore"):
        q = (a / ru[zs, None, None]) ** 2 + (b / rv[zs, None, None]) ** 2
    q[~present[zs]] = np.inf
    return box, q


def _ellipsoid(
    g: _Grid,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    angle: float = 0.0,
    shear: tuple[float, float] = (0.0, 0.0),
) -> tuple[_Box, np.ndarray]:
    """An ellipsoid (u, v, t centre and radii), optionally sheared: its centre moves with t."""
    cu, cv, ct = centre
    ru, rv, rt = radii
    f = np.sqrt(np.clip(1 - ((g.t - ct) / rt) ** 2, 0, None))
    return _ellipses(
        g,
        cu + shear[0] * (g.t - ct),
        cv + shear[1] * (g.t - ct),
        ru * f,
        rv * f,
        angle,
    )


def _tube(
    g: _Grid, p0: tuple[float, float, float], p1: tuple[float, float, float], r: float
) -> tuple[_Box, np.ndarray]:
    """A straight vessel of radius r (u units) between two (u, v, t) points; returns box, d/r."""
    a = np.array([p0[0], p0[1], p0[2] / g.upt])  # t to u units: a metric space
    b = np.array([p1[0], p1[1], p1[2] / g.upt])
    lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
    box = g.box((lo[0], hi[0]), (lo[1], hi[1]), (lo[2] * g.upt, hi[2] * g.upt))
    tt, vv, uu = g.coords(box)
    p = (uu - a[0], vv - a[1], tt / g.upt - a[2])
    d = b - a
    h = np.clip((p[0] * d[0] + p[1] * d[1] + p[2] * d[2]) / max(float(d @ d), 1e-12), 0, 1)
    dist2 = (p[0] - h * d[0]) ** 2 + (p[1] - h * d[1]) ** 2 + (p[2] - h * d[2]) ** 2
    return box, np.sqrt(dist2) / r


def _capsule(
    g: _Grid,
    a: tuple[float, float],
    b: tuple[float, float],
    r: float,
    slices: np.ndarray | None = None,
) -> tuple[_Box, np.ndarray]:
    """A 2D segment of radius r between (u, v) points, on every slice (or where ``slices``)."""
    lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
    box = (slice(0, g.t.size), _span(g.v, lo[1], hi[1]), _span(g.u, lo[0], hi[0]))
    _, vv, uu = g.coords(box)
    du, dv = b[0] - a[0], b[1] - a[1]
    pu, pv = uu - a[0], vv - a[1]
    h = np.clip((pu * du + pv * dv) / max(du * du + dv * dv, 1e-12), 0, 1)
    d = np.hypot(pu - h * du, pv - h * dv) / r  # (1, Y, X)
    d = np.broadcast_to(d, (g.t.size, *d.shape[1:])).copy()
    if slices is not None:
        d[~slices] = np.inf
    return box, d


def _align(box: _Box, b2: _Box, q2: np.ndarray) -> np.ndarray:
    """``q2`` (computed over box ``b2``) re-cut to ``box``; ``inf`` where ``b2`` does not reach."""
    shape = tuple(s.stop - s.start for s in box)
    out = np.full(shape, np.inf, dtype=np.result_type(q2, np.float32))
    lo = [max(a.start, b.start) for a, b in zip(box, b2, strict=True)]
    hi = [min(a.stop, b.stop) for a, b in zip(box, b2, strict=True)]
    if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
        return out
    dst = tuple(slice(lo_ - a.start, h - a.start) for lo_, h, a in zip(lo, hi, box, strict=True))
    src = tuple(slice(lo_ - b.start, h - b.start) for lo_, h, b in zip(lo, hi, b2, strict=True))
    out[dst] = q2[src]
    return out


def _paint(
    labels: np.ndarray,
    box: _Box,
    inside: np.ndarray,
    tissue: Tissue,
    onto: tuple[Tissue, ...] | None = None,
) -> None:
    """Set ``tissue`` where ``inside``; with ``onto``, only over those tissues."""
    view = labels[box]
    if onto is not None:
        inside = inside & np.isin(view, onto)
    view[inside] = tissue


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple) -> np.ndarray:
    """Gaussian-filtered white noise, rescaled to unit standard deviation: organ texture."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return f / max(float(f.std()), 1e-6)


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass
class _Body:
    """The body outline of one patient, with what the organs are placed from."""

    depth: np.ndarray  # (Z, Y, X) distance below the skin (u units; <0 outside)
    fat: np.ndarray  # (1, Y, X) subcutaneous fat thickness
    wall: np.ndarray  # (1, Y, X) fat + abdominal wall muscle thickness
    theta: np.ndarray  # (1, Y, X) polar angle around the body centre
    e: float  # half AP depth / half width


def _body(g: _Grid, rng: np.random.Generator) -> _Body:
    e = rng.uniform(0.64, 0.78)
    tt, vv, uu = g.t[:, None, None], g.v[None, :, None], g.u[None, None, :]
    sx = 1 + 0.04 * (tt - 0.5) + rng.normal(0, 0.01)  # the chest is a little wider, deeper
    sy = e * (1 + 0.08 * (tt - 0.5))
    p = np.where(vv > 0, rng.uniform(2.4, 3.0), 2.0)  # flatter back (lying on the table)
    r = (np.abs(uu / sx) ** p + np.abs(vv / sy) ** p) ** (1 / p)
    theta = np.arctan2(vv, uu)
    wobble = sum(
        rng.normal(0, 0.012) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    dist = np.hypot(uu, vv)
    depth = dist * ((1 + wobble) / np.maximum(r, 1e-6) - 1)  # exact along the ray: r is 1-homog.
    f0 = rng.uniform(0.035, 0.16)
    fat = f0 * (1 + 0.35 * np.sin(theta) ** 2 * (vv < 0) + 0.25 * np.cos(theta) ** 2)
    muscle = rng.uniform(0.03, 0.045) * (1 + 0.8 * np.exp(-((uu / 0.18) ** 2)) * (vv < 0))
    return _Body(depth.astype(np.float32), fat, fat + muscle, theta, e)


def _paint_wall(labels: np.ndarray, body: _Body, g: _Grid) -> None:
    d = body.depth
    labels[d >= 0] = Tissue.SKIN
    labels[d > 0.014] = Tissue.FAT
    labels[(d > body.fat)] = Tissue.MUSCLE
    labels[(d > body.wall)] = Tissue.VISCERAL_FAT
    # the linea alba: a thin fat seam between the recti
    alba = (np.abs(g.u)[None, None, :] < 0.012) & (g.v[None, :, None] < 0) & (d > body.fat)
    labels[alba & (d < body.wall)] = Tissue.FAT


def _paint_liver(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, field: np.ndarray, cavity: np.ndarray
) -> None:
    c = (rng.uniform(-0.48, -0.4), rng.uniform(-0.08, 0.04), rng.uniform(0.86, 0.98))
    r = (rng.uniform(0.42, 0.5), rng.uniform(0.5, 0.6), rng.uniform(0.55, 0.7))
    box, q = _ellipsoid(g, c, r, shear=(0.25, 0.1))  # the tip is lower and more lateral
    q = q + 0.12 * field[box]
    _paint(labels, box, (q < 1) & cavity[box], Tissue.LIVER)
    c2 = (rng.uniform(-0.05, 0.12), rng.uniform(-0.45, -0.35), rng.uniform(0.88, 1.0))
    r2 = (rng.uniform(0.3, 0.42), rng.uniform(0.16, 0.22), rng.uniform(0.25, 0.35))
    box, q = _ellipsoid(g, c2, r2, angle=rng.uniform(-0.3, 0.0))
    q = q + 0.12 * field[box]
    _paint(labels, box, (q < 1) & cavity[box], Tissue.LIVER)
    if rng.random() < 0.7:  # gallbladder at the inferior surface
        cg = (rng.uniform(-0.35, -0.22), rng.uniform(-0.42, -0.3), rng.uniform(0.5, 0.62))
        box, q = _ellipsoid(g, cg, (0.09, 0.07, rng.uniform(0.08, 0.14)), angle=0.6)
        _paint(labels, box, (q < 1) & cavity[box], Tissue.BILE)


def _paint_liver_vessels(labels: np.ndarray, g: _Grid, rng: np.random.Generator) -> None:
    """Portal vein branches and hepatic veins: bright tubes, inside the liver only."""
    hilum = (rng.uniform(-0.2, -0.12), rng.uniform(-0.12, -0.02), rng.uniform(0.55, 0.65))
    ends = [
        (rng.uniform(-0.7, -0.55), rng.uniform(-0.1, 0.15), hilum[2] + rng.uniform(0.0, 0.15)),
        (rng.uniform(-0.6, -0.45), rng.uniform(-0.4, -0.25), hilum[2] + rng.uniform(0.05, 0.2)),
        (rng.uniform(0.0, 0.12), rng.uniform(-0.45, -0.35), hilum[2] + rng.uniform(0.1, 0.3)),
    ]
    for end in ends:
        box, d = _tube(g, hilum, end, rng.uniform(0.025, 0.035))
        _paint(labels, box, d < 1, Tissue.PORTAL, onto=(Tissue.LIVER,))
    top = (rng.uniform(-0.18, -0.1), rng.uniform(-0.02, 0.06), 1.05)
    for du, dv in ((-0.45, -0.25), (-0.2, -0.45), (0.15, -0.4)):
        end = (top[0] + du, top[1] + dv, rng.uniform(0.7, 0.85))
        box, d = _tube(g, top, end, rng.uniform(0.02, 0.03))
        _paint(labels, box, d < 1, Tissue.VEIN, onto=(Tissue.LIVER,))


def _paint_upper_left(
    labels: np.ndarray,
    g: _Grid,
    rng: np.random.Generator,
    field: np.ndarray,
    cavity: np.ndarray,
    e: float,
) -> None:
    """Spleen, stomach (with its gas-fluid level) and pancreas."""
    cs = (rng.uniform(0.55, 0.65), e * rng.uniform(0.15, 0.35), rng.uniform(0.75, 0.9))
    rs = (rng.uniform(0.12, 0.17), rng.uniform(0.22, 0.3), rng.uniform(0.25, 0.35))
    box, q = _ellipsoid(g, cs, rs, angle=rng.uniform(-0.7, -0.4))
    b2, q2 = _ellipsoid(g, (cs[0] - 0.17, cs[1] - 0.02, cs[2]), (0.1, 0.2, rs[2] * 1.2))
    hilum = _align(box, b2, q2) < 1  # the concave medial face
    _paint(labels, box, (q + 0.08 * field[box] < 1) & ~hilum & cavity[box], Tissue.SPLEEN)

    cst = (rng.uniform(0.25, 0.4), rng.uniform(-0.35, -0.2), rng.uniform(0.72, 0.9))
    rst = (rng.uniform(0.18, 0.26), rng.uniform(0.14, 0.2), rng.uniform(0.2, 0.3))
    box, q = _ellipsoid(g, cst, rst, angle=rng.uniform(-0.4, 0.2))
    inside = (q < 1) & cavity[box]
    _paint(labels, box, inside, Tissue.BOWEL_WALL, onto=(Tissue.VISCERAL_FAT,))
    _, vv, _ = g.coords(box)
    level = cst[1] - rst[1] * rng.uniform(0.0, 0.7)  # supine: gas rises anteriorly (low v)
    lumen = inside & (q < 0.75) & (labels[box] == Tissue.BOWEL_WALL)
    labels[box][lumen] = Tissue.FLUID
    labels[box][lumen & (vv < level)] = Tissue.GAS

    p0 = (rng.uniform(-0.15, -0.05), rng.uniform(-0.12, -0.05), rng.uniform(0.5, 0.6))
    p1 = (rng.uniform(0.35, 0.45), rng.uniform(0.05, 0.15), p0[2] + rng.uniform(0.05, 0.15))
    box, d = _tube(g, p0, p1, rng.uniform(0.045, 0.06))
    lobules = d + 0.25 * field[box]
    _paint(labels, box, lobules < 1, Tissue.PANCREAS, onto=(Tissue.VISCERAL_FAT,))
    sv0 = (p0[0], p0[1] + 0.06, p0[2])
    box, d = _tube(g, sv0, (p1[0], p1[1] + 0.05, p1[2]), 0.02)  # splenic vein behind it
    _paint(labels, box, d < 1, Tissue.PORTAL, onto=(Tissue.VISCERAL_FAT, Tissue.PANCREAS))


def _paint_heart(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, cavity: np.ndarray, e: float
) -> None:
    """The inferior heart (myocardium around enhanced blood) in the top slices, if reached."""
    c = (rng.uniform(0.08, 0.2), -e * rng.uniform(0.3, 0.4), rng.uniform(1.15, 1.4))
    box, q = _ellipsoid(g, c, (0.4, 0.3, 0.4), angle=rng.uniform(-0.5, -0.2))
    _paint(labels, box, (q < 1) & cavity[box], Tissue.MUSCLE)
    _paint(labels, box, (q < 0.55) & cavity[box], Tissue.HEART)


def _paint_lungs(
    labels: np.ndarray,
    g: _Grid,
    rng: np.random.Generator,
    cavity: np.ndarray,
    e: float,
    spine_v: float,
) -> None:
    """Lung bases posterolaterally, above the diaphragm domes that rise towards the top."""
    t_lung = rng.uniform(0.68, 0.82)
    tt, vv, uu = g.t[:, None, None], g.v[None, :, None], g.u[None, None, :]
    size = 1.6 * (1 - np.clip((tt - t_lung) / (1.3 - t_lung), 0, 1))
    dome = np.zeros(labels.shape, dtype=bool)
    for side, lift in ((-1, 0.12), (1, 0.0)):  # the right dome (over the liver) is higher
        q = np.hypot((uu - side * 0.35) / 0.62, (vv + 0.3 * e) / (0.8 * e))
        dome |= q < size + lift * (size > 0)
    mediastinum = (np.abs(uu) < 0.16) & (vv > spine_v - 0.3)
    lung = cavity & (tt > t_lung) & ~dome & ~mediastinum
    cross = ndimage.generate_binary_structure(2, 1)[None]
    diaphragm = ndimage.binary_dilation(lung, cross, iterations=2) & ~lung & dome & cavity
    labels[diaphragm & np.isin(labels, _LUNG_ONTO)] = Tissue.MUSCLE
    labels[lung & np.isin(labels, _LUNG_ONTO)] = Tissue.LUNG
    vessels = _smooth_field(rng, labels.shape, (0.6, 0.8, 0.8)) > 2.2
    labels[vessels & (labels == Tissue.LUNG)] = Tissue.VEIN


def _paint_kidneys(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, cavity: np.ndarray, spine_v: float
) -> None:
    """Kidneys: cortex, medulla, sinus fat and pelvis at the hilum; the right one lower."""
    for side, tc in ((-1, rng.uniform(0.38, 0.48)), (1, rng.uniform(0.46, 0.56))):
        c = (side * rng.uniform(0.34, 0.4), spine_v + rng.uniform(-0.02, 0.05), tc)
        r = (rng.uniform(0.11, 0.13), rng.uniform(0.17, 0.2), rng.uniform(0.26, 0.34))
        ang = side * rng.uniform(0.5, 0.8)
        box, q = _ellipsoid(g, c, r, angle=ang)
        _paint(labels, box, (q < 1) & cavity[box], Tissue.KIDNEY_CORTEX)
        _paint(labels, box, q < 0.45, Tissue.KIDNEY_MEDULLA, onto=(Tissue.KIDNEY_CORTEX,))
        hil = (c[0] - side * 0.08, c[1] - 0.04, tc)  # the hilum faces anteromedially
        box, q = _ellipsoid(g, hil, (0.055, 0.08, r[2] * 0.45), angle=ang)
        _paint(labels, box, q < 1, Tissue.FAT, onto=(Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA))
        _paint(labels, box, q < 0.3, Tissue.URINE, onto=(Tissue.FAT,))


def _paint_retroperitoneum(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, cavity: np.ndarray, spine_v: float
) -> tuple[float, float]:
    """Kidneys, psoas, aorta, IVC and mesenteric vessels; returns the aorta's (u, v)."""
    _paint_kidneys(labels, g, rng, cavity, spine_v)
    n = g.t.size
    for side in (-1, 1):  # psoas: grows towards the pelvis
        grow = np.clip(0.62 - g.t, 0, None)
        ru, rv = 0.03 + 0.16 * grow, 0.04 + 0.1 * grow
        box, q = _ellipses(
            g, side * (0.14 + 0.12 * grow), np.full(n, spine_v + 0.01), ru * (grow > 0), rv
        )
        _paint(labels, box, (q < 1) & cavity[box], Tissue.MUSCLE, onto=(Tissue.VISCERAL_FAT,))
    ao = (rng.uniform(0.03, 0.08), spine_v - rng.uniform(0.18, 0.21))
    box, q = _ellipses(g, np.full(n, ao[0]), np.full(n, ao[1]), *(np.full(n, 0.07),) * 2)
    _paint(labels, box, q < 1, Tissue.AORTA)
    if rng.random() < 0.5:  # wall calcification
        ang = rng.uniform(0, 2 * np.pi)
        cu, cv = ao[0] + 0.07 * np.cos(ang), ao[1] + 0.07 * np.sin(ang)
        t0 = rng.uniform(0, 0.6)
        box, d = _tube(g, (cu, cv, t0), (cu, cv, t0 + 0.08), 0.015)
        _paint(labels, box, d < 1, Tissue.CORTICAL)
    shift = np.clip(g.t - 0.7, 0, None)  # the intrahepatic IVC moves forward and right
    box, q = _ellipses(
        g, -0.14 - 0.3 * shift, np.full(n, ao[1] + 0.01) - 0.5 * shift,
        np.full(n, 0.07), np.full(n, 0.05),
    )  # fmt: skip
    _paint(labels, box, q < 1, Tissue.VEIN)
    for du, dv, r, tissue in (
        (0.0, -0.16, 0.022, Tissue.AORTA),
        (-0.07, -0.16, 0.028, Tissue.VEIN),
    ):
        p0 = (ao[0] + du, ao[1] + dv + 0.03, 0.62)
        box, d = _tube(g, p0, (ao[0] + du, ao[1] + dv - 0.12, 0.0), r)  # SMA, SMV
        _paint(labels, box, d < 1, tissue, onto=(Tissue.VISCERAL_FAT,))
    return ao


def _paint_spine(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, spine_v: float, body: _Body
) -> None:
    """Vertebral bodies (cortical rim, cancellous core), discs and posterior elements."""
    period = 34.0 / g.mm_per_u * g.upt  # a vertebra plus its disc is ~34 mm tall
    phase = ((g.t + rng.uniform(0, period)) % period) / period  # (Z,)
    disc = phase < 0.22
    n = g.t.size
    ones = np.ones(n)
    rx, ry = rng.uniform(0.12, 0.14), rng.uniform(0.095, 0.11)
    box, q = _ellipses(g, 0 * ones, spine_v * ones, rx * ones, ry * ones)
    is_disc = disc[box[0], None, None]
    _paint(labels, box, (q < 1) & ~is_disc, Tissue.CORTICAL)
    _paint(labels, box, (q < 0.72) & ~is_disc, Tissue.CANCELLOUS)
    _paint(labels, box, (q < 1.08) & is_disc, Tissue.DISC)
    canal_v = spine_v + ry + 0.05
    parts = []
    for side in (-1, 1):
        parts += [
            ((side * 0.06, spine_v + 0.6 * ry), (side * 0.07, canal_v + 0.02), 0.026, None),
            ((side * 0.07, canal_v + 0.02), (0.0, canal_v + 0.08), 0.02, None),  # lamina
            ((side * 0.07, canal_v), (side * 0.16, canal_v + 0.03), 0.02, ~disc),  # transverse
        ]
    for a, b, r, where in parts:
        box, d = _capsule(g, a, b, r, where)
        _paint(labels, box, d < 1, Tissue.CORTICAL)
    box, d = _capsule(g, (0.0, canal_v + 0.08), (0.0, canal_v + 0.21), 0.02, ~disc)
    _paint(labels, box, (d < 1) & (body.depth[box] > body.fat[0][box[1:]]), Tissue.CORTICAL)
    box, q = _ellipses(g, 0 * ones, canal_v * ones, 0.048 * ones, 0.042 * ones)
    _paint(labels, box, q < 1, Tissue.CSF)


def _paint_back_muscles(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, body: _Body, spine_v: float
) -> None:
    """Erector spinae: filling the gutters beside the spinous processes, up to the fat."""
    n = g.t.size
    for side in (-1, 1):
        c = (side * rng.uniform(0.16, 0.19), spine_v + 0.3)
        box, q = _ellipses(
            g, np.full(n, c[0]), np.full(n, c[1]), np.full(n, 0.16), np.full(n, 0.17)
        )
        _paint(labels, box, (q < 1) & (body.depth[box] > body.fat[0][box[1:]]), Tissue.MUSCLE)


def _paint_ribs(labels: np.ndarray, g: _Grid, rng: np.random.Generator, body: _Body) -> None:
    """Rib sections in the chest wall, irregularly spaced, shifting with z (ribs slope down)."""
    tt, vv, uu = g.t[:, None, None], g.v[None, :, None], g.u[None, None, :]
    th = body.theta
    ring = np.abs(body.depth - (body.wall - 0.012)) < 0.02
    wobble = 0.15 * np.sin(2 * th + rng.uniform(0, 6.3)) + 0.1 * np.sin(
        3 * th + rng.uniform(0, 6.3)
    )
    phase = (th * rng.uniform(13, 16) / (2 * np.pi) + wobble + tt * rng.uniform(2, 3)) % 1
    rib = ring & (phase < 0.15 + 0.12 * tt) & (tt > rng.uniform(0.25, 0.4))
    back = (vv > 0) & (np.abs(uu) < 0.33)
    front = (vv < -0.1) & (np.abs(uu) < 0.25 + 0.35 * (1 - tt))
    rib &= ~back & ~front & ~((vv < 0) & (tt < 0.55))
    cartilage = rib & (vv < -0.3) & (tt > 0.5)
    labels[rib & ~cartilage] = Tissue.RIB
    labels[cartilage] = Tissue.CARTILAGE


def _paint_bowel(
    labels: np.ndarray,
    g: _Grid,
    rng: np.random.Generator,
    field_fine: np.ndarray,
    e: float,
    spine_v: float,
) -> None:
    """The colon (stool and gas) and packed small-bowel loops, onto visceral fat only."""
    onto = (Tissue.VISCERAL_FAT,)
    tcol = rng.uniform(0.5, 0.64)
    path = [  # ascending, transverse, descending colon: (u, v, t) waypoints
        (rng.uniform(-0.66, -0.58), rng.uniform(-0.15, 0.05), -0.1),
        (-0.6, -0.2, tcol), (-0.25, -e * 0.62, tcol + 0.04), (0.2, -e * 0.62, tcol + 0.06),
        (0.6, -0.15, tcol + 0.1), (rng.uniform(0.58, 0.66), rng.uniform(-0.05, 0.1), -0.1),
    ]  # fmt: skip
    for a, b in zip(path[:-1], path[1:], strict=True):
        box, d = _tube(g, a, b, rng.uniform(0.085, 0.11))
        _paint(labels, box, d < 1, Tissue.BOWEL_WALL, onto=onto)
        lumen = (d < 0.8) & (labels[box] == Tissue.BOWEL_WALL)
        labels[box][lumen] = Tissue.STOOL
        labels[box][lumen & (field_fine[box] > 0.7)] = Tissue.GAS
    _paint_small_bowel(labels, g, rng, e, spine_v)


def _paint_small_bowel(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, e: float, spine_v: float
) -> None:
    """Small-bowel loops packed like cells: a Voronoi partition of the free visceral fat.

    Each seed's cell, shrunk away from its neighbours (mesenteric fat in between) and capped
    in size, becomes a loop with a wall and fluid, gas over fluid, stool or nothing inside.
    """
    tt, vv = g.t[:, None, None], g.v[None, :, None]
    region = (labels == Tissue.VISCERAL_FAT) & (tt < rng.uniform(0.6, 0.72)) & (vv < spine_v + 0.1)
    k, j, i = np.nonzero(region)
    if k.size == 0:
        return
    stretch = 0.55  # loops run along z more than across: shorter distances in z
    pts = np.stack([g.u[i], g.v[j], g.t[k] / g.upt * stretch], axis=1)
    n_seeds = int(rng.integers(80, 110))
    lo, hi = pts.min(0), pts.max(0)
    seeds = rng.uniform(lo, hi, size=(n_seeds, 3))
    d, near = cKDTree(seeds).query(pts, k=2)
    gap = d[:, 1] - d[:, 0]  # ~ twice the distance to the cell boundary
    rmax = rng.uniform(0.08, 0.13, n_seeds)[near[:, 0]]
    kind = rng.random(n_seeds)[near[:, 0]]
    fat_gap = rng.uniform(0.01, 0.03)  # lean patients: loops packed tight
    wall = (gap > fat_gap) & (d[:, 0] < rmax)
    lumen = wall & (gap > fat_gap + 0.045) & (d[:, 0] < rmax - 0.025)
    level = (pts[:, 1] - seeds[near[:, 0], 1]) > rng.uniform(-0.3, 0.6, n_seeds)[near[:, 0]] * rmax
    tissue = np.full(k.size, Tissue.VISCERAL_FAT, np.uint8)
    tissue[wall] = Tissue.BOWEL_WALL
    tissue[lumen & (kind < 0.45)] = Tissue.FLUID
    gas = lumen & (kind >= 0.45) & (kind < 0.65)
    tissue[gas] = np.where(level[gas], Tissue.FLUID, Tissue.GAS)
    tissue[lumen & (kind >= 0.65) & (kind < 0.75)] = Tissue.STOOL
    labels[k, j, i] = tissue


def _anatomy(g: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The tissue label volume (Z, Y, X) of one patient and its coarse texture field."""
    labels = np.zeros(g.shape, dtype=np.uint8)
    field_coarse = _smooth_field(rng, g.shape, (1.0, 4.0, 4.0))
    field_fine = _smooth_field(rng, g.shape, (0.5, 1.2, 1.2))
    body = _body(g, rng)
    _paint_wall(labels, body, g)
    cavity = body.depth > body.wall
    spine_v = body.e - rng.uniform(0.47, 0.52)
    _paint_liver(labels, g, rng, field_coarse, cavity)
    _paint_upper_left(labels, g, rng, field_coarse, cavity, body.e)
    _paint_retroperitoneum(labels, g, rng, cavity, spine_v)
    _paint_liver_vessels(labels, g, rng)
    _paint_bowel(labels, g, rng, field_fine, body.e, spine_v)
    _paint_heart(labels, g, rng, cavity, body.e)
    _paint_lungs(labels, g, rng, cavity, body.e, spine_v)
    _paint_back_muscles(labels, g, rng, body, spine_v)
    _paint_spine(labels, g, rng, spine_v, body)
    _paint_ribs(labels, g, rng, body)
    return labels, field_coarse + 0.6 * field_fine


# --------------------------------------------------------------------------------------------
# Lesions and intensities
# --------------------------------------------------------------------------------------------


def _draw_lesions(
    labels: np.ndarray, g: _Grid, rng: np.random.Generator, spacing: tuple[float, float, float]
) -> list[dict[str, Any]]:
    """Draw 1-4 lesions: organ, centre voxel, radius, shape and contrast."""
    n = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    lesions = []
    for _ in range(n):
        organ = Tissue(rng.choice([Tissue.LIVER, Tissue.SPLEEN, Tissue.KIDNEY_CORTEX],
                                  p=[0.8, 0.1, 0.1]))  # fmt: skip
        if not np.isin(labels, _LESION_ORGANS[organ]).any():
            organ = Tissue.LIVER
        min_r = 1.6 * spacing[2] / g.mm_per_u  # at least ~3 pixels across
        r = max(float(np.exp(rng.uniform(np.log(0.035), np.log(0.14)))), min_r)
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
    hypo = rng.random() < 0.7
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
        "delta": float(-rng.uniform(35, min(85, mean - 5)) if hypo else rng.uniform(40, 75)),
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


def nifti_affine(ph: Phantom) -> np.ndarray:
    """The RAS voxel-to-world affine of the NIfTI files, as dcm2niix would derive it.

    The NIfTI array is (X, Y, Z) = (column, row, slice) of the DICOM series; DICOM's LPS
    becomes NIfTI's RAS by negating x and y.
    """
    dz, dy, dx = ph.spacing
    x0, y0, z0 = ph.origin
    lps = np.array([[dx, 0, 0, x0], [0, dy, 0, y0], [0, 0, dz, z0], [0, 0, 0, 1]], dtype=np.float64)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_nifti(ph: Phantom, root: Path) -> tuple[Path, Path]:
    """Write ``imagesTr/<case>.nii.gz`` (int16 HU) and ``labelsTr/<case>.nii.gz`` (uint8).

    Both carry the same affine, with qform and sform codes set to scanner (1).

    Returns:
        The image and label paths.
    """
    affine = nifti_affine(ph)
    paths = []
    for sub, data in (
        ("imagesTr", np.rint(ph.image).astype(np.int16)),
        ("labelsTr", ph.mask.astype(np.uint8)),
    ):
        img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        path = root / sub / f"{ph.patient}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, path)
        paths.append(path)
    return paths[0], paths[1]


def _dataset_json(cases: list[str], cfg: PhantomsConfig) -> dict[str, Any]:
    return {
        "name": "AugmentPhantoms",
        "description": "Synthetic CT-like abdominal phantoms with lesion masks (augment demo).",
        "reference": "generated by `augment phantoms`",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
        "numTraining": len(cases),
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases
        ],
        "test": [],
        "seed": cfg.seed,
    }


def _identity(ph: Phantom, seed: int) -> dict[str, Any]:
    """Patient and study identity: deterministic, and made to be pseudonymised downstream."""
    rng = np.random.default_rng([seed, ph.index, 0xD1C0])
    study = dt.date(2023, 1, 2) + dt.timedelta(days=int(rng.integers(0, 700)))
    age = int(rng.integers(25, 85))
    birth = study - dt.timedelta(days=int(age * 365.25 + rng.integers(0, 365)))
    src = [str(seed), ph.patient]
    return {
        "PatientID": ph.patient,
        "PatientName": f"Phantom^Patient{ph.index:04d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": "MF"[int(rng.integers(0, 2))],
        "PatientAge": f"{age:03d}Y",
        "AccessionNumber": f"ACC{int(rng.integers(10**7, 10**8))}",
        "InstitutionName": INSTITUTION,
        "StudyDate": study.strftime("%Y%m%d"),
        "StudyTime": f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00",
        "StudyID": f"{int(rng.integers(1, 10**4))}",
        "StudyInstanceUID": generate_uid(entropy_srcs=[*src, "study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=[*src, "series"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[*src, "frame"]),
    }


def _slice_dataset(ph: Phantom, ident: dict[str, Any], k: int, seed: int) -> Dataset:
    """The DICOM dataset of slice ``k`` (CT Image Storage, Explicit VR Little Endian)."""
    dz, dy, dx = ph.spacing
    x0, y0, z0 = ph.origin
    sop = generate_uid(entropy_srcs=[str(seed), ph.patient, "sop", str(k)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    for key, value in ident.items():
        setattr(ds, key, value)
    ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = ident["StudyDate"]
    ds.SeriesTime = ds.ContentTime = ident["StudyTime"]
    ds.Modality, ds.Manufacturer = "CT", "Augment phantom generator"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ReferringPhysicianName = ""
    ds.StudyDescription, ds.SeriesDescription = "CT ABDOMEN", "Abdomen portal venous phantom"
    ds.BodyPartExamined, ds.PatientPosition = "ABDOMEN", "HFS"
    ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = 2, 1, k + 1
    ds.KVP, ds.ConvolutionKernel = DSfloat(120), "STANDARD"
    z = round(z0 + k * dz, 4)
    ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
    ds.ImageOrientationPatient = [_ds(v) for v in (1, 0, 0, 0, 1, 0)]
    ds.SliceLocation = _ds(z)
    ds.PixelSpacing = [_ds(dy), _ds(dx)]  # row spacing, column spacing
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(dz)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ph.image.shape[1], ph.image.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(INTERCEPT), _ds(1), "HU"
    ds.WindowCenter, ds.WindowWidth = _ds(40), _ds(400)
    stored = np.rint(ph.image[k] - INTERCEPT).astype(np.uint16)  # HU = stored * 1 - 1024
    ds.PixelData = stored.tobytes()
    return ds


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def write_dicom_series(ph: Phantom, root: Path, seed: int) -> Path:
    """Write one CT series, one file per slice, under ``root/<series folder>/``.

    Folder and file names are hashes (of the SeriesInstanceUID, and the SOPInstanceUID
    itself), so neither reveals the patient nor sorts in slice order: readers must sort by
    ImagePositionPatient.

    Returns:
        The series folder.
    """
    ident = _identity(ph, seed)
    digest = hashlib.sha256(ident["SeriesInstanceUID"].encode()).hexdigest()[:16]
    folder = root / f"series-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(ph.image.shape[0]):
        ds = _slice_dataset(ph, ident, k, seed)
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------


def make_phantoms(cfg: PhantomsConfig, out: Path) -> dict[str, Any]:
    """Generate the demo data set and write it atomically to ``out``.

    Args:
        cfg: the phantom parameters.
        out: the output directory; replaced whole when the run succeeds.

    Returns:
        A summary: output path, patients, lesion/normal counts, lesions, formats, shape
        (Z, Y, X), spacing (z, y, x) in mm, files written and seconds taken.
    """
    start = time.perf_counter()
    out = Path(out)
    sick = lesion_patients(cfg)
    rows: list[tuple[str, str]] = []
    n_lesions = 0
    with atomic_dir(out) as tmp, Progress(transient=True) as progress:
        task = progress.add_task("phantoms", total=cfg.patients)
        for i in range(cfg.patients):
            ph = generate_phantom(cfg, i, lesion=i in sick)
            if "dicom" in cfg.formats:
                write_dicom_series(ph, tmp / "dicom", cfg.seed)
            if "nifti" in cfg.formats:
                write_nifti(ph, tmp / "nifti")
            rows.append((ph.patient, ph.label))
            n_lesions += len(ph.lesions)
            progress.advance(task)
        if "nifti" in cfg.formats:
            doc = _dataset_json([p for p, _ in rows], cfg)
            (tmp / "nifti" / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
        with open(tmp / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient", "class"])
            writer.writerows(rows)
        files = sum(1 for p in tmp.rglob("*") if p.is_file())
    n_sick = sum(1 for _, c in rows if c == "lesion")
    return {
        "out": str(out),
        "patients": cfg.patients,
        "lesion_patients": n_sick,
        "normal_patients": cfg.patients - n_sick,
        "lesions": n_lesions,
        "formats": list(cfg.formats),
        "shape": [cfg.slices, cfg.size, cfg.size],
        "spacing_mm": [cfg.slice_thickness, cfg.pixel_spacing, cfg.pixel_spacing],
        "files": files,
        "seconds": round(time.perf_counter() - start, 2),
    }


def summary_table(summary: dict[str, Any]) -> Table:
    """A rich table of :func:`make_phantoms`'s summary, for the command line."""
    table = Table(title="augment phantoms", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        text = " x ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(key.replace("_", " "), text)
    return table
