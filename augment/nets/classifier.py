"""Downstream classifiers of the gain experiment.

- :class:`SmallCNN`: a compact 2D CNN, the default on CPU (a demo run trains it dozens of times).
  Three stride-2 blocks keep an 8 x 8 map at 64 x 64, and global max pooling lets one small
  lesion decide: with four blocks and average pooling the net learned the amount of liver in a
  slice instead, measured on val (docs/results.md).
- ``densenet121`` / ``resnet18``: MONAI's networks with ``spatial_dims=2``, ``in_channels=1``,
  trained from scratch (no pretrained weights: nothing is downloaded).
"""

from __future__ import annotations

from torch import Tensor, nn

CLASSIFIERS = ("small", "densenet121", "resnet18")


class SmallCNN(nn.Module):
    """Stride-2 conv blocks, global max pooling and a linear head.

    Args:
        n_classes: number of output logits.
        in_channels: image channels.
        width: channels of the first block; each block doubles them.
        blocks: number of stride-2 blocks (each halves the map).
    """

    def __init__(
        self, n_classes: int, in_channels: int = 1, width: int = 16, blocks: int = 3
    ) -> None:
        super().__init__()
        chans = [in_channels] + [width * 2**i for i in range(blocks)]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),  # (B, cout, S/2, S/2)
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)  # (B, width * 2**(blocks-1), S / 2**blocks, ...)
        self.head = nn.Linear(chans[-1], n_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations: (B, C, S, S) -> (B, width * 2**(blocks-1))."""
        return self.body(x).amax(dim=(2, 3))  # (B, width * 2**(blocks-1))

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
            layers=[2, 2, 2, 2],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            num_classes=n_classes,
        )
    raise ValueError(f"expected a classifier in {CLASSIFIERS}, got {name!r}")
