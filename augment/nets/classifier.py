"""Downstream classifiers of the gain experiment and the fixed feature network of the metrics.

- :class:`SmallCNN`: a compact 2D CNN, the default on CPU (a demo run trains it dozens of times).
- ``densenet121`` / ``resnet18``: MONAI's networks with ``spatial_dims=2``, ``in_channels=1``,
  trained from scratch (no pretrained weights: nothing is downloaded).
- :class:`RandomFeatures`: a fixed, seeded, untrained conv net whose pooled activations are the
  feature space of FID, KID, precision/recall, density/coverage and the memorisation check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLASSIFIERS = ("small", "densenet121", "resnet18")


class SmallCNN(nn.Module):
    """Four stride-2 conv blocks, global average pooling and a linear head.

    Args:
        n_classes: number of output logits.
        in_channels: image channels.
        width: channels of the first block; each block doubles them.
    """

    def __init__(self, n_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        chans = [in_channels, width, width * 2, width * 4, width * 8]
        blocks: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            blocks += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: (B, C, S, S) -> (B, width * 8)."""
        return self.body(x).mean(dim=(2, 3))  # (B, width*8)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, n_classes)


def build_classifier(name: str, n_classes: int, in_channels: int = 1) -> nn.Module:
    """A freshly initialised classifier (seed torch before calling for reproducible weights).

    Args:
        name: ``small``, ``densenet121`` or ``resnet18``.
        n_classes: number of output logits.
        in_channels: image channels.

    Returns:
        A module mapping (B, in_channels, S, S) to (B, n_classes) logits.

    Raises:
        ValueError: an unknown name.
    """
    if name == "small":
        return SmallCNN(n_classes, in_channels)
    # MONAI imports torchvision-free network code only when asked, keeping `small` light.
    from monai.networks.nets import DenseNet121, ResNet

    if name == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=n_classes)
    if name == "resnet18":
        return ResNet(
            block="basic",
            layers=(2, 2, 2, 2),
            block_inplanes=(64, 128, 256, 512),
            spatial_dims=2,
            n_input_channels=in_channels,
            num_classes=n_classes,
        )
    raise ValueError(f"expected a classifier in {CLASSIFIERS}, got {name!r}")


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
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            # He-normal weights keep activations at a similar scale through the layers.
            std = (2.0 / (cin * 9)) ** 0.5
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                conv.bias.zero_()
            self.convs.append(conv)
        self.num_features = 2 * sum(chans[1:])
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, S, S) float in [-1, 1] -> (B, 480) float32."""
        x = x.float()
        if x.shape[-1] != 64 or x.shape[-2] != 64:
            x = F.interpolate(
                x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True
            )
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))  # (B, C, S/2^k, S/2^k)
            feats += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        return torch.cat(feats, dim=1)  # (B, 480)
