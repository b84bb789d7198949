"""The hinge loss of SNGAN / SAGAN (Miyato et al. 2018; Zhang et al. 2019)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


class HingeLoss:
    """D: max(0, 1 - D(x)) + max(0, 1 + D(G(z))); G: -D(G(z))."""

    gradient_penalty = False

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator(self, fake: Tensor) -> Tensor:
        return -fake.mean()

    def score(self, out: Tensor) -> Tensor:
        return out
