"""Array functions of preprocessing, free of I/O: window, reslice, resize, split, one volume.

The first layer of :mod:`augment.preprocessing.stage` (nnU-Net's layering): :func:`window_range`,
:func:`reslice`, :func:`body_fraction`, :func:`resize_slices`, :func:`split_patients`, then
one volume's processing (:func:`process_volume`), which the stage runs in worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.transform import resize

from augment.config import PreprocessConfig, SplitConfig, WindowConfig
from augment.contracts.slice_store import SPLITS
from augment.contracts.volume import Volume
from augment.contracts.window import CT_PRESETS, EXPLICIT, PERCENTILE, Window
from augment.errors import InputError

# ---------------------------------------------------------------- array functions (no I/O)


CT_AUTO_WINDOW = "abdomen"
CT_BODY_HU = -500.0  # air is -1000 HU, fat about -100: above this is body
AIR_HU = -500.0  # a volume whose 1st percentile lies below this is in Hounsfield units
MAX_PIXEL_ASPECT = 20.0  # row vs column spacing: beyond this a header is damaged, not exotic


def channel_kinds(volume: Volume) -> tuple[str, ...]:
    """Per channel, ``"CT"`` (Hounsfield units) or ``"MR"`` (arbitrary units; MR sequences and
    any other modality).

    DICOM says (``Modality``) and a NIfTI data set's ``dataset.json`` may (channel names such
    as CT, T1, FLAIR); where nothing does, a channel with air at about -1000 (its 1st
    percentile below -500) is CT.
    """
    kinds = []
    for c, name in enumerate(volume.channels):
        name = name.strip().upper()
        name = volume.modality.upper() if name.isdigit() else name
        if name == "CT":
            kinds.append("CT")
        elif name not in ("", "OT"):
            kinds.append("MR")
        else:
            kinds.append("CT" if float(np.percentile(volume.image[c], 1)) < AIR_HU else "MR")
    return tuple(kinds)


def resolved(cfg: PreprocessConfig, kind: str) -> PreprocessConfig:
    """``cfg`` with ``window`` and ``body_threshold`` chosen for the modality where "auto"."""
    update: dict[str, object] = {}
    if cfg.window == "auto":
        update["window"] = CT_AUTO_WINDOW if kind == "CT" else PERCENTILE
    if cfg.body_threshold == "auto" and kind == "CT":
        update["body_threshold"] = CT_BODY_HU
    return cfg.model_copy(update=update) if update else cfg


def body_threshold(image: np.ndarray, cfg: PreprocessConfig) -> float:
    """The body threshold of one volume: ``cfg.body_threshold``, or (auto, not CT) Otsu's
    threshold of its intensities, which separates the dark background from tissue in MR."""
    if cfg.body_threshold != "auto":
        return float(cfg.body_threshold)
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(image[::2, ::2, ::2]))  # every 8th voxel: the same threshold


def window_range(image: np.ndarray, cfg: PreprocessConfig) -> Window:
    """The intensity window mapped to [-1, 1]: a CT preset, an explicit window or percentiles.

    Args:
        image: the volume in physical units (percentiles are taken over all of it).
        cfg: ``cfg.window`` (resolved, never "auto": :func:`resolved`) and ``cfg.percentiles``.

    Returns:
        The window (``high > low``). A CT preset is in HU, as is an explicit window that
        reaches below -100 HU (no other modality has such values); a percentile window is
        this volume's own range.
    """
    if isinstance(cfg.window, WindowConfig):
        low = cfg.window.center - cfg.window.width / 2
        units = "HU" if low < -100 else ""
        return Window.preset(EXPLICIT, cfg.window.center, cfg.window.width, units)
    if cfg.window in CT_PRESETS:
        return Window.preset(cfg.window, *CT_PRESETS[cfg.window], units="HU")
    lo, hi = np.percentile(image, cfg.percentiles)
    return Window(PERCENTILE, float(lo), float(max(hi, lo + 1e-6)), percentiles=cfg.percentiles)


def reslice(
    volume: np.ndarray, spacing: tuple[float, float, float], axis: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """View a canonical (Z, Y, X) volume as a stack of 2D slices along ``axis``.

    Slices are laid out as viewers show them: axial with anterior up and the patient's right on
    the left; coronal and sagittal with superior up.

    Returns:
        (N, H, W) slices (a view, no copy) and their in-plane spacing (h, w) in mm.
    """
    sz, sy, sx = spacing
    if axis == "axial":
        return volume, (sy, sx)
    if axis == "coronal":  # (Y, Z reversed, X)
        return volume.transpose(1, 0, 2)[:, ::-1, :], (sz, sx)
    if axis == "sagittal":  # (X, Z reversed, Y)
        return volume.transpose(2, 0, 1)[:, ::-1, :], (sz, sy)
    raise ValueError(f"expected axis axial, coronal or sagittal, got {axis!r}")


def body_fraction(slices: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) share of each slice's pixels above ``threshold`` (physical units)."""
    return (slices > threshold).mean(axis=(1, 2))


def output_geometry(
    shape_hw: tuple[int, int], spacing_hw: tuple[float, float], size: int, spacing: float | None
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Where a slice lands in the S x S output: its resized shape and the output pixel size.

    Pixels become square. Without a target ``spacing`` the whole field of view fits in S x S
    (the short side is padded); with one, the slice is resampled to it and centre-padded or
    cropped to S x S.

    Returns:
        The resized (h, w) before padding/cropping, and the output spacing (y, x) in mm.
    """
    fov = (shape_hw[0] * spacing_hw[0], shape_hw[1] * spacing_hw[1])
    pixel = spacing if spacing is not None else max(fov) / size
    new = (max(1, round(fov[0] / pixel)), max(1, round(fov[1] / pixel)))
    if spacing is None:
        new = (min(new[0], size), min(new[1], size))
    return new, (round(fov[0] / new[0], 4), round(fov[1] / new[1], 4))


def resize_slices(slices: np.ndarray, shape_hw: tuple[int, int], is_mask: bool) -> np.ndarray:
    """Resize (N, H, W) slices in-plane: anti-aliased linear for images, nearest for masks."""
    target = (slices.shape[0], *shape_hw)
    if slices.shape == target:
        return np.array(slices)
    if is_mask:
        out = resize(slices, target, order=0, anti_aliasing=False, preserve_range=True)
        return out.astype(np.uint8)
    # The first axis keeps its size, so the anti-aliasing Gaussian has sigma 0 along it.
    return resize(slices, target, order=1, anti_aliasing=True, preserve_range=True).astype(
        np.float32
    )


def fit_square(slices: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Centre-pad or centre-crop (N, H, W) slices to (N, size, size)."""
    n, h, w = slices.shape
    out = np.full((n, size, size), fill, dtype=slices.dtype)
    ch, cw = min(h, size), min(w, size)
    sy, sx = (h - ch) // 2, (w - cw) // 2  # crop offsets
    dy, dx = (size - ch) // 2, (size - cw) // 2  # pad offsets
    out[:, dy : dy + ch, dx : dx + cw] = slices[:, sy : sy + ch, sx : sx + cw]
    return out


def split_patients(classes: dict[str, int], fractions: SplitConfig, seed: int) -> dict[str, str]:
    """Assign each patient to exactly one split, stratified by patient class.

    Within each class the patients are shuffled with ``seed`` and cut by the fractions
    (largest remainders); then every split with a non-zero fraction that got no patient takes
    one from the largest split, while that split keeps at least one.

    Args:
        classes: patient -> class id.
        fractions: the train/val/test fractions.
        seed: the shuffle's seed; the same inputs and seed give the same split.

    Returns:
        patient -> "train" | "val" | "test".
    """
    rng = np.random.default_rng(seed)
    frac = {"train": fractions.train, "val": fractions.val, "test": fractions.test}
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for cls in sorted(set(classes.values())):
        patients = sorted(p for p, c in classes.items() if c == cls)
        patients = [patients[i] for i in rng.permutation(len(patients))]
        quotas = _quotas(len(patients), frac, {s: len(m) for s, m in members.items()})
        start = 0
        for s in SPLITS:
            members[s].extend(patients[start : start + quotas[s]])
            start += quotas[s]
    for s in SPLITS:
        donor = max(SPLITS, key=lambda d: len(members[d]))
        if frac[s] > 0 and not members[s] and len(members[donor]) > 1:
            members[s].append(members[donor].pop())
    return {p: s for s in SPLITS for p in members[s]}


def _quotas(n: int, frac: dict[str, float], so_far: dict[str, int]) -> dict[str, int]:
    exact = {s: n * frac[s] for s in SPLITS}
    quotas = {s: int(exact[s]) for s in SPLITS}
    # Remainders go to the largest fractional parts; ties to the split furthest below its share.
    total = sum(so_far.values()) + n
    order = sorted(
        (s for s in SPLITS if frac[s] > 0),
        key=lambda s: (-(exact[s] - quotas[s]), so_far[s] - total * frac[s]),
    )
    for s in order[: n - sum(quotas.values())]:
        quotas[s] += 1
    return quotas


# ---------------------------------------------------------------- one volume


@dataclass
class Slices:
    """One volume's output slices (before the split is known).

    Attributes:
        images: (n, C, S, S) float32 in [-1, 1].
        masks: (n, S, S) uint8 label ids, or None.
        z: (n,) index of each slice along the slicing axis of the canonical volume.
        lesion_pixels: (n,) foreground mask pixels at the output size (0 without a mask).
        spacing: output pixel size (y, x) in mm.
        windows: per channel, the intensity window that was mapped to [-1, 1].
        kinds: per channel, "CT" or "MR" (:func:`channel_kinds`): what chose "auto" settings.
        channels: the channel names.
        left_out: slices of the volume not kept, by reason (the body filter, no contrast).
    """

    images: np.ndarray
    masks: np.ndarray | None
    z: np.ndarray
    lesion_pixels: np.ndarray
    spacing: tuple[float, float]
    windows: tuple[Window, ...]
    kinds: tuple[str, ...]
    channels: tuple[str, ...]
    left_out: dict[str, int] = field(default_factory=dict)


def process_volume(volume: Volume, cfg: PreprocessConfig) -> Slices:
    """Slice, filter, window and resize one volume.

    Raises:
        InputError: NaN or inf voxels, or no slice with enough body.
    """
    bad = int(np.size(volume.image) - np.count_nonzero(np.isfinite(volume.image)))
    if bad:
        raise InputError(f"{volume.source}: expected finite voxels, got {bad} NaN or inf")
    kinds = channel_kinds(volume)
    chosen = [resolved(cfg, kind) for kind in kinds]
    # The body filter reads the first channel (CT, or the first MR sequence) for every channel.
    slices, spacing_hw = reslice(volume.image[0], volume.spacing, cfg.axis)
    if max(spacing_hw) > MAX_PIXEL_ASPECT * min(spacing_hw):
        raise InputError(
            f"{volume.source}: expected roughly square pixels, got a spacing of "
            f"{spacing_hw[0]:g} x {spacing_hw[1]:g} mm (a damaged header?)"
        )
    threshold = body_threshold(volume.image[0], chosen[0])
    keep = np.flatnonzero(body_fraction(slices, threshold) >= cfg.min_body_fraction)
    if keep.size == 0:
        raise InputError(
            f"{volume.source}: expected slices with at least {cfg.min_body_fraction:.0%} body "
            f"(voxels above {threshold:g}), got none"
        )
    windows = tuple(window_range(volume.image[c], chosen[c]) for c in range(len(kinds)))
    shape, spacing = output_geometry(slices.shape[1:], spacing_hw, cfg.size, cfg.spacing)
    channels = []
    for c, window in enumerate(windows):
        planes = slices if c == 0 else reslice(volume.image[c], volume.spacing, cfg.axis)[0]
        unit = resize_slices(window.to_unit_range(planes[keep]), shape, is_mask=False)
        channels.append(np.clip(fit_square(unit, cfg.size, -1.0), -1.0, 1.0))  # (n, S, S)
    images = np.stack(channels, axis=1)  # (n, C, S, S)
    # A slice of one value shows nothing (every pixel beyond the window, a scaling gone wrong):
    # it is no training image, and a volume of nothing but such slices is no volume.
    shows = np.ptp(images.reshape(len(images), -1), axis=1) > 0
    if not shows.any():
        raise InputError(
            f"{volume.source}: expected contrast after windowing, got every slice of one value "
            "(a constant volume, or a rescale slope or scaling that crushes it)"
        )
    flat = int(np.count_nonzero(~shows))
    images, keep = images[shows], keep[shows]
    masks, lesion = None, np.zeros(keep.size, dtype=np.int64)
    if volume.mask is not None:
        mask_slices, _ = reslice(volume.mask, volume.spacing, cfg.axis)
        masks = fit_square(resize_slices(mask_slices[keep], shape, is_mask=True), cfg.size, 0)
        positive = masks if cfg.lesion_labels is None else np.isin(masks, cfg.lesion_labels)
        lesion = np.count_nonzero(positive, axis=(1, 2))
    below = int(slices.shape[0] - keep.size - flat)
    left_out = {"below min_body_fraction": below, "one value after windowing": flat}
    return Slices(images, masks, keep, lesion, spacing, windows, kinds, volume.channels,
                  {k: n for k, n in left_out.items() if n})  # fmt: skip
