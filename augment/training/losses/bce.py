"""The non-saturating GAN loss of Goodfellow et al. (2014), as the Radford DCGAN trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class BCELoss:
    """Binary cross-entropy on logits; G maximises log D(G(z)) (the non-saturating form)."""

    gradient_penalty = False

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def generator(self, fake: Tensor) -> Tensor:
        return F.softplus(-fake).mean()

    def score(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)
