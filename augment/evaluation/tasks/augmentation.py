"""Training-time augmentation of the downstream models, on batches in plain torch.

Random parameters are drawn first (:func:`draw`), then applied (:func:`apply`), so one draw
moves an image and its mask alike. Every arm of every task gets this augmentation: without it
the demo's classifier memorised its training patients (train AUC 1.0, val at the shortcut
floor). The ``classic`` arms add :func:`classic_intensity` on top.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Draw:
    """Per-slice parameters of one augmentation draw (each a (B,) tensor)."""

    flip_lr: torch.Tensor
    flip_ud: torch.Tensor
    angle: torch.Tensor  # radians
    zoom: torch.Tensor
    shift: torch.Tensor  # (B, 2), in units of half the image
    gain: torch.Tensor
    offset: torch.Tensor


def draw(n: int, gen: torch.Generator) -> Draw:
    """Flips (p = 0.5 each), rotation within 15 degrees, zoom and intensity within 10%, shift
    within 6%: changes a radiologist would call the same image."""

    def sym(*shape: int) -> torch.Tensor:  # uniform in [-1, 1]
        return torch.rand(*shape, generator=gen) * 2 - 1

    return Draw(
        flip_lr=torch.rand(n, generator=gen) < 0.5,
        flip_ud=torch.rand(n, generator=gen) < 0.5,
        angle=sym(n) * math.pi / 12,
        zoom=1 + sym(n) * 0.1,
        shift=sym(n, 2) * 0.06,
        gain=1 + sym(n) * 0.1,
        offset=sym(n) * 0.1,
    )


def _flip(x: torch.Tensor, d: Draw) -> torch.Tensor:
    x = torch.where(d.flip_lr[:, None, None, None], x.flip(3), x)
    return torch.where(d.flip_ud[:, None, None, None], x.flip(2), x)


def _grid(d: Draw, shape: torch.Size) -> torch.Tensor:
    cos, sin = torch.cos(d.angle) / d.zoom, torch.sin(d.angle) / d.zoom
    row0 = torch.stack([cos, -sin, d.shift[:, 0]], dim=1)  # (B, 3)
    row1 = torch.stack([sin, cos, d.shift[:, 1]], dim=1)
    theta = torch.stack([row0, row1], dim=1)  # (B, 2, 3)
    return F.affine_grid(theta, list(shape), align_corners=False)  # (B, S, S, 2)


def apply(x: torch.Tensor, d: Draw) -> torch.Tensor:
    """Apply a draw to images (B, C, S, S) in [-1, 1]; outside the moved image is air (-1)."""
    grid = _grid(d, x.shape)
    x = _flip(x, d)
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    return (x * d.gain[:, None, None, None] + d.offset[:, None, None, None]).clamp(-1, 1)


def apply_to_mask(mask: torch.Tensor, d: Draw) -> torch.Tensor:
    """Move label maps (B, S, S) as :func:`apply` moves their images (nearest neighbour, no
    intensity change; outside is background 0)."""
    m = _flip(mask[:, None].float(), d)  # (B, 1, S, S)
    m = F.grid_sample(
        m, _grid(d, m.shape), mode="nearest", padding_mode="zeros", align_corners=False
    )
    return m[:, 0].round().to(mask.dtype)


def classic_intensity(seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI's classic intensity augmentation of a batch (B, C, S, S), seeded.

    Gaussian noise, gamma (contrast) and Gaussian smoothing, each with p = 0.3: what the
    ``classic`` arms add to the geometric and linear intensity changes every arm gets.
    """
    from monai.data import get_track_meta, set_track_meta
    from monai.transforms import Compose, RandAdjustContrast, RandGaussianNoise, RandGaussianSmooth

    chain = Compose(
        [
            RandGaussianNoise(prob=0.3, std=0.03),
            RandAdjustContrast(prob=0.3, gamma=(0.7, 1.5)),
            RandGaussianSmooth(prob=0.3, sigma_x=(0.25, 0.75), sigma_y=(0.25, 0.75)),
        ]
    )
    chain.set_random_state(seed)

    def run(batch: torch.Tensor) -> torch.Tensor:
        # One draw per slice, on plain tensors: MONAI's metadata tracking costs more than the
        # transforms themselves here (27 against 10 ms per batch of 64 on one core).
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            out = [torch.as_tensor(chain(s)) for s in batch]  # (C, S, S) each
        finally:
            set_track_meta(tracking)
        return torch.stack(out).clamp(-1, 1)  # (B, C, S, S)

    return run
