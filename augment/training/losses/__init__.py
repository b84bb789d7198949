"""GAN losses: the registry (light: names and help only; the losses load on use).

A loss is a :class:`augment.training.losses.base.GANLoss`. Adding one is one new file in this
package plus one line below; ``train.loss`` accepts exactly these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augment.registry import Entry, Registry

if TYPE_CHECKING:
    from augment.training.losses.base import GANLoss

LOSSES: Registry[type[GANLoss]] = Registry(
    "GAN loss",
    {
        "bce": Entry(
            "augment.training.losses.bce:BCELoss", "non-saturating BCE (Radford et al. 2015)"
        ),
        "hinge": Entry(
            "augment.training.losses.hinge:HingeLoss", "hinge (SNGAN, Miyato et al. 2018)"
        ),
        "wgan-gp": Entry(
            "augment.training.losses.wgan_gp:WGANGPLoss",
            "Wasserstein with gradient penalty (Gulrajani et al. 2017)",
        ),
    },
)
