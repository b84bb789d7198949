"""The fixed feature network of the fidelity metrics and the memorisation check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RandomFeatures(nn.Module):
    """A fixed random conv net: the default feature space of the fidelity metrics.

    Why a random network rather than Inception or the downstream classifier:

    - nothing is downloaded (Inception weights are not shipped), and 1-channel CT slices are far
      from ImageNet, so Inception features would not be the "standard" they are for photos anyway;
    - it is the same function in every run: the seed fixes the weights, so FID values are
      comparable across `dvc exp` runs with different `train.fraction` (a classifier trained on
      each run's data would move the yardstick with the thing it measures);
    - it has not seen the training split, so the real-train vs real-test baseline is not biased
      toward the training patients;
    - random conv features are a recognised embedding for these metrics (Naeem et al. 2020
      evaluate density/coverage with randomly initialised networks) and are sensitive to texture,
      edges and intensity at several scales.

    Slices are resized to 64 x 64 so that features do not depend on the slice size. Each of four
    stride-2 conv + ReLU blocks contributes its spatially averaged and its spatially maximal
    activations, giving ``2 * (16 + 32 + 64 + 128) = 480`` features.

    Args:
        seed: seed of the weights; the default is the project's fixed feature space.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [1, 16, 32, 64, 128]
        self.convs = nn.ModuleList()
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            # skip_init: building the layer must not draw from torch's global generator (a
            # training run that scores snapshots would otherwise change its own batches).
            conv = nn.utils.skip_init(nn.Conv2d, cin, cout, 3, stride=2, padding=1)
            # He-normal weights keep activations at a similar scale through the layers.
            std = (2.0 / (cin * 9)) ** 0.5
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                if conv.bias is not None:  # always: the conv is built with a bias
                    conv.bias.zero_()
            self.convs.append(conv)
        self.num_features = 2 * sum(chans[1:])
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, C, S, S) float in [-1, 1] -> (B, 480 C) float32: each channel through the same
        network, their features side by side (one channel: exactly the 480)."""
        b, c = x.shape[:2]
        x = x.float().reshape(b * c, 1, *x.shape[2:])
        if x.shape[-1] != 64 or x.shape[-2] != 64:
            x = F.interpolate(
                x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True
            )
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))  # (B, C, S/2^k, S/2^k)
            feats += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        return torch.cat(feats, dim=1).reshape(b, -1)  # (B, 480 C)


def extract_features(
    net: Callable[[Tensor], Tensor], images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Features of (N, C, S, S) images in [-1, 1], in batches: (N, D) float32."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start : start + batch_size], np.float32))
            out.append(net(batch).float().numpy())
    return np.concatenate(out, axis=0)
