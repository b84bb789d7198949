"""Sample pictures of a run: the fixed-noise grids logged during training and ``samples.png``.

Tiles are 8-bit greyscale slices; where the model makes masks, every labelled region is outlined
in its label's colour (the slice underneath stays visible, unlike a tint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from augment.io.atomic import atomic_file
from augment.nets.dcgan import DCGANSpec, Generator
from augment.training.data import DataInfo, TrainData

GRID_SIDE = 8  # fixed-noise grids are 8 x 8 tiles
_PALETTE = np.array(
    [[0, 0, 0], [255, 40, 40], [40, 220, 40], [60, 120, 255], [240, 200, 40], [200, 60, 220]],
    dtype=np.uint8,
)
_GAP = 6  # pixels between the real and the synthetic half, and between class blocks
_LABEL_W = 56  # left column of class names
_HEAD_H = 14  # top row of titles


def _outline(masks: np.ndarray) -> np.ndarray:
    """(B, S, S) channel ids -> (B, S, S) bool, True on the inner border of each labelled region."""
    on = masks > 0
    pad = np.pad(masks, ((0, 0), (1, 1), (1, 1)), mode="edge")
    same = np.ones_like(on)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= pad[:, dy : dy + masks.shape[1], dx : dx + masks.shape[2]] == masks
    return on & ~same


def tiles(images: np.ndarray, masks: np.ndarray | None, ncol: int) -> np.ndarray:
    """(B, 1, S, S) in [-1, 1] (+ (B, S, S) channel ids) -> (rows*S, ncol*S, 3) uint8 RGB."""
    b, s = images.shape[0], images.shape[-1]
    grey = np.nan_to_num((images[:, 0] + 1) * 127.5).clip(0, 255).astype(np.uint8)  # (B, S, S)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (B, S, S, 3)
    if masks is not None:
        edge = _outline(masks)
        colour = _PALETTE[np.where(masks > 0, (masks - 1) % (len(_PALETTE) - 1) + 1, 0)]
        rgb = np.where(edge[..., None], colour, rgb)
    rows = -(-b // ncol)
    grid = np.zeros((rows * s, ncol * s, 3), dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[r * s : (r + 1) * s, c * s : (c + 1) * s] = rgb[i]
    return grid


def channel_ids(x: Tensor, spec: DCGANSpec) -> np.ndarray | None:
    """Generator output -> (B, S, S) mask channel ids (argmax), or None without masks."""
    return None if not spec.mask_channels else x[:, spec.channels :].argmax(1).cpu().numpy()


@torch.no_grad()
def fixed_grid(
    g: Generator, z: Tensor, y: Tensor, res: int | None = None, alpha: float = 1.0
) -> np.ndarray:
    """The 8 x 8 grid of the fixed noise (one class per row, cycling) as RGB uint8.

    ``res`` and ``alpha``: progressive growing's current output, shown enlarged to S.
    """
    out = g(z, y if g.spec.n_classes else None, res=res, alpha=alpha).float()  # (64, C, r, r)
    if out.shape[-1] != g.spec.image_size:
        out = F.interpolate(out, size=g.spec.image_size, mode="nearest")  # (64, C, S, S)
    images = out[:, : g.spec.channels].cpu().numpy()
    return tiles(images, channel_ids(out, g.spec), GRID_SIDE)


def fixed_inputs(spec: DCGANSpec, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Noise and class ids of the fixed grid, the same at every step of a run."""
    rng = torch.Generator().manual_seed(seed + 7919)  # apart from the training noise
    z = torch.randn(GRID_SIDE * GRID_SIDE, spec.nz, generator=rng)
    y = torch.arange(GRID_SIDE).repeat_interleave(GRID_SIDE) % max(1, spec.n_classes)
    return z.to(device), y.to(device)


def _pick_real(labels: np.ndarray, n_cls: int, per: int, conditional: bool, seed: int
               ) -> list[np.ndarray]:  # fmt: skip
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(n_cls):
        pool = np.flatnonzero(labels == c) if conditional else np.arange(len(labels))
        if len(pool) == 0:
            picks.append(np.array([], dtype=np.int64))
            continue
        picks.append(rng.choice(pool, per, replace=len(pool) < per))
    return picks


def samples_figure(path: Path, g: Generator, data: TrainData, info: DataInfo, seed: int) -> None:
    """Write ``samples.png``: real train slices beside synthetic ones, one block per class.

    Each block holds 3 rows of 8 real slices of that class (left) and 3 rows of 8 generated
    ones (right, the EMA generator in eval mode); masks are outlined in colour.
    """
    from PIL import Image, ImageDraw

    spec = g.spec
    n_cls = max(1, spec.n_classes)
    rows_per = 3 if spec.n_classes else 4
    per = rows_per * GRID_SIDE
    picks = _pick_real(data.labels.cpu().numpy(), n_cls, per, bool(spec.n_classes), seed)
    gen = torch.Generator().manual_seed(seed)
    device = next(g.parameters()).device
    s = spec.image_size
    half_w = GRID_SIDE * s
    label_w = _LABEL_W if spec.n_classes else 0  # one block: no class names to show
    width = label_w + 2 * half_w + _GAP
    height = _HEAD_H + n_cls * rows_per * s + (n_cls - 1) * _GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((label_w + 2, 1), "real (train split)", fill=(0, 0, 0))
    draw.text((label_w + half_w + _GAP + 2, 1), "synthetic (EMA generator)", fill=(0, 0, 0))
    for c in range(n_cls):
        top = _HEAD_H + c * (rows_per * s + _GAP)
        if spec.n_classes:
            name = info.class_names[c][: _LABEL_W // 6]
            draw.text((2, top + rows_per * s // 2 - 6), name, fill=(0, 0, 0))
        if len(picks[c]):
            real, _ = data.batch(torch.from_numpy(picks[c]).long(), torch.device("cpu"))
            real_tiles = tiles(real[:, : spec.channels].numpy(), channel_ids(real, spec), GRID_SIDE)
            canvas.paste(Image.fromarray(real_tiles), (label_w, top))
        z = torch.randn(per, spec.nz, generator=gen).to(device)
        y = torch.full((per,), c, dtype=torch.long, device=device) if spec.n_classes else None
        with torch.no_grad():
            fake = g(z, y).float().cpu()
        fake_tiles = tiles(fake[:, : spec.channels].numpy(), channel_ids(fake, spec), GRID_SIDE)
        canvas.paste(Image.fromarray(fake_tiles), (label_w + half_w + _GAP, top))
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="png", optimize=True)
