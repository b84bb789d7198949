"""Differentiable augmentation of real and fake batches alike (DiffAugment, Zhao et al. 2020).

Small data sets let the discriminator memorise the real slices; augmenting what it sees (real
and generated, with gradients flowing through to the generator) keeps it honest without leaking
the augmentation into the generated distribution.

Hand-written rather than taken from MONAI: MONAI's random transforms draw one parameter set per
call on the CPU and are not meant to be differentiated through; here every sample of a batch gets
its own draw, on the batch's device, inside the autograd graph, with no host synchronisation.
Geometric ops (translation, cutout) move image and mask channels together; colour ops touch the
image channels only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("translation", "cutout", "color")


def diff_augment(x: Tensor, policy: Sequence[str], image_channels: int = 1) -> Tensor:
    """Apply the policy's augmentations, a fresh random draw per sample.

    Args:
        x: (B, C, S, S) batch in [-1, 1]; the first ``image_channels`` are image intensities,
            the rest one-hot mask scores.
        policy: names from :data:`POLICIES`, applied in that order.
        image_channels: number of leading intensity channels (colour ops touch only these).

    Returns:
        (B, C, S, S) augmented batch, differentiable with respect to ``x``.
    """
    for name in POLICIES:
        if name in policy:
            x = _OPS[name](x, image_channels)
    return x


def _color(x: Tensor, image_channels: int) -> Tensor:
    img, rest = x[:, :image_channels], x[:, image_channels:]
    b = x.shape[0]
    brightness = torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5  # [-0.5, 0.5)
    img = img + brightness
    contrast = torch.rand(b, 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5  # [0.5, 1.5)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = (img - mean) * contrast + mean
    return torch.cat([img, rest], dim=1)


def _translation(x: Tensor, _: int, ratio: float = 0.125) -> Tensor:
    b, _c, h, w = x.shape
    pad = max(1, int(h * ratio + 0.5))
    # Replicate padding: slices have background at the border, so shifted-in pixels are
    # background for the image and the mask alike.
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # (B, C, S+2p, S+2p)
    dy = torch.randint(-pad, pad + 1, (b, 1), device=x.device)
    dx = torch.randint(-pad, pad + 1, (b, 1), device=x.device)
    iy = torch.arange(h, device=x.device)[None, :] + pad - dy  # (B, S)
    ix = torch.arange(w, device=x.device)[None, :] + pad - dx  # (B, S)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, iy[:, :, None], ix[:, None, :]]  # (B, S, S, C)
    return out.permute(0, 3, 1, 2)  # (B, C, S, S)


def _cutout(x: Tensor, _: int, ratio: float = 0.5) -> Tensor:
    b, _c, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # Top-left corner: the square may hang over the border, as in DiffAugment.
    y0 = torch.randint(-(ch // 2), h - ch // 2 + 1, (b, 1, 1), device=x.device)
    x0 = torch.randint(-(cw // 2), w - cw // 2 + 1, (b, 1, 1), device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)  # (B, S, S)
    return x * (~inside)[:, None].to(x.dtype)  # zero out one square per sample


_OPS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "translation": _translation,
    "cutout": _cutout,
    "color": _color,
}
