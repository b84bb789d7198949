"""Standard Inception-v3 FID, only from weights the user has locally (nothing is downloaded).

Not a registry entry: it needs the images, not the fixed features, and a weights file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from augment.errors import ConfigError


def inception_fid(
    weights: Path, train: np.ndarray, test: np.ndarray, synthetic: np.ndarray
) -> dict[str, float]:
    """Standard Inception-v3 FID from local weights (torch-fidelity's FID network).

    Args:
        weights: path of the ``pt_inception-2015-12-05`` weights file.
        train, test, synthetic: (N, C, S, S) images in [-1, 1].

    Returns:
        ``{"synthetic": FID(train, synthetic), "baseline": FID(train, test)}``.

    Raises:
        ConfigError: the weights file is missing or torch-fidelity is not installed.
    """
    check_inception_weights(weights)
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        def one(fake: np.ndarray) -> float:
            metric = FrechetInceptionDistance(
                feature=2048, feature_extractor_weights_path=str(weights)
            )
            metric.update(_to_rgb_uint8(train), real=True)
            metric.update(_to_rgb_uint8(fake), real=False)
            return float(metric.compute())

        return {"synthetic": one(synthetic), "baseline": one(test)}
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "evaluate.inception_weights: Inception FID needs torch-fidelity "
            f"(pip install torch-fidelity), got {exc}"
        ) from exc


def check_inception_weights(weights: Path) -> None:
    """Raise a ConfigError naming ``weights`` when it is not a file."""
    if not Path(weights).is_file():
        raise ConfigError(
            f"evaluate.inception_weights: expected a local Inception weights file, "
            f"got {weights} (missing); nothing is downloaded"
        )


def _to_rgb_uint8(images: np.ndarray) -> Tensor:
    x = torch.from_numpy(np.asarray(images, np.float32))  # (N, C, S, S) in [-1, 1]
    if x.shape[1] not in (1, 3):
        raise ConfigError(
            f"evaluate.inception_weights: Inception reads 1 (grey) or 3 (RGB) channels, the "
            f"slices have {x.shape[1]}; leave inception_weights out (the fixed-feature FID "
            "reads any number)"
        )
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1)  # (N, 3, S, S); torchmetrics resizes to 299
