"""The anatomy of one phantom patient, painted as a tissue label volume."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from augment.phantoms.shapes import (
    _align,
    _capsule,
    _ellipses,
    _ellipsoid,
    _Grid,
    _paint,
    _smooth_field,
    _tube,
)
from augment.phantoms.tissue import (
    _LUNG_ONTO,
    Tissue,
)


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
