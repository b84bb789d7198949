"""Network definitions: the DCGAN generator and discriminator."""

from augment.nets.dcgan import DCGANSpec, Discriminator, Generator

__all__ = ["DCGANSpec", "Discriminator", "Generator"]
