"""Geometry helpers of the phantoms: every shape is painted inside its bounding box only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from augment.phantoms.tissue import (
    Tissue,
    _Box,
)


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
