"""The Wasserstein loss with gradient penalty (Gulrajani et al. 2017)."""

from __future__ import annotations

from torch import Tensor


class WGANGPLoss:
    """Critic: D(G(z)) - D(x), plus the gradient penalty the trainer adds; G: -D(G(z))."""

    gradient_penalty = True

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        return fake.mean() - real.mean()

    def generator(self, fake: Tensor) -> Tensor:
        return -fake.mean()

    def score(self, out: Tensor) -> Tensor:
        return out
