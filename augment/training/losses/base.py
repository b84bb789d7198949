"""What every GAN loss provides to :class:`augment.training.step.Trainer`."""

from __future__ import annotations

from typing import ClassVar, Protocol

from torch import Tensor


class GANLoss(Protocol):
    """A GAN objective on D's raw outputs (logits or critic scores).

    Attributes:
        gradient_penalty: D's loss needs the gradient penalty on real/fake interpolates
            (weighted by ``train.gp_weight``); the trainer computes it.
    """

    gradient_penalty: ClassVar[bool]

    def discriminator(self, real: Tensor, fake: Tensor) -> Tensor:
        """D's loss from its outputs on a real and a fake batch: a scalar."""
        ...

    def generator(self, fake: Tensor) -> Tensor:
        """G's loss from D's outputs on a fake batch: a scalar."""
        ...

    def score(self, out: Tensor) -> Tensor:
        """What the logs show of D's outputs (probabilities for BCE, raw scores otherwise)."""
        ...
