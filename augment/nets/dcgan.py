"""The DCGAN of Radford et al. (2015), with class conditioning, mask channels and spectral norm.

Generator: a projection of the noise (a 4x4 transposed convolution or a dense layer) to
(ngf*m, 4, 4), then strided transposed convolutions with batch norm and ReLU that double the
size up to S, and tanh out. Discriminator: strided convolutions with LeakyReLU(0.2) that halve the
size down to 4x4 (batch norm after the first layer only when ``d_batchnorm``), one logit out.

Class conditioning: the generator either modulates every batch norm with a per-class gain and
bias (conditional batch norm, ``g_conditioning="cbn"``, as in SNGAN/BigGAN) or concatenates a
learned class embedding to ``z`` (``"concat"``, the older layout); the discriminator is a
projection discriminator (Miyato & Koyama 2018): logit = psi(h) + <e(y), h>.
Masks are extra output channels, one per label id (background included), scored in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

IMAGE_SIZES = (32, 64, 128, 256)
PROJECTIONS = ("conv", "dense")
G_CONDITIONINGS = ("concat", "cbn")
_MAX_MULT = 8  # channel multiplier cap: ngf*8 at 4x4 as in the paper, even for 256x256


@dataclass(frozen=True)
class DCGANSpec:
    """Everything needed to rebuild the generator and the discriminator.

    Attributes:
        image_size: S, one of 32, 64, 128, 256.
        channels: image channels.
        mask_channels: 0 for no masks, else the number of label ids including background.
        n_classes: 0 for unconditional, else the number of classes of G(z|y) and D(x|y).
        nz: noise dimension.
        ngf: generator width (channels of the last hidden layer).
        ndf: discriminator width (channels of the first layer).
        projection: "conv" (4x4 transposed convolution) or "dense" (linear) noise projection.
        spectral_norm: spectral normalisation of every discriminator weight.
        d_batchnorm: batch norm in the discriminator (the plain DCGAN; collapses on small data).
        dropout: dropout after each discriminator activation.
        mbstd_group: 0, or the group size of a minibatch standard deviation feature that D
            appends at 4x4 (Karras et al. 2018): D sees a batch's variety, so collapse costs G.
        g_conditioning: how G sees the class: "cbn" (conditional batch norm) or "concat" (a
            class embedding concatenated to z; the default, so older model directories load).
    """

    image_size: int
    channels: int = 1
    mask_channels: int = 0
    n_classes: int = 0
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    projection: str = "conv"
    spectral_norm: bool = True
    d_batchnorm: bool = False
    dropout: float = 0.0
    mbstd_group: int = 0
    g_conditioning: str = "concat"

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"expected image_size in {IMAGE_SIZES}, got {self.image_size}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"expected projection in {PROJECTIONS}, got {self.projection!r}")
        if self.g_conditioning not in G_CONDITIONINGS:
            raise ValueError(
                f"expected g_conditioning in {G_CONDITIONINGS}, got {self.g_conditioning!r}"
            )
        if self.mask_channels == 1:
            raise ValueError("expected mask_channels 0 or >= 2 (background + labels), got 1")
        for name in ("channels", "nz", "ngf", "ndf"):
            if getattr(self, name) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.mask_channels < 0 or self.n_classes < 0 or self.mbstd_group < 0:
            raise ValueError("expected mask_channels, n_classes and mbstd_group >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"expected dropout in [0, 1), got {self.dropout}")

    @property
    def out_channels(self) -> int:
        """Channels of the generator output and the discriminator input."""
        return self.channels + self.mask_channels

    @property
    def n_up(self) -> int:
        """Number of stride-2 stages between 4x4 and S x S."""
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCGANSpec:
        """Rebuild a spec; unknown keys are an error (a newer or foreign config).

        Raises:
            ValueError: an unknown key, a missing ``image_size`` or an invalid value.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"expected DCGANSpec keys {sorted(known)}, got unknown {unknown}")
        if "image_size" not in d:
            raise ValueError("expected an image_size in the spec, got none")
        return cls(**d)


def _mult(i: int, n: int) -> int:
    """Channel multiplier of stage i of n (largest at the 4x4 end), capped at 8."""
    return min(_MAX_MULT, 2 ** (n - 1 - i))


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear/embedding N(0, 0.02), batch norm N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            bias = getattr(m, "bias", None)  # an embedding has none; a layer may have None
            if isinstance(bias, Tensor):
                nn.init.zeros_(bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class CondBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias are looked up per class (conditional batch norm).

    The normalisation itself is a plain ``nn.BatchNorm2d(affine=False)`` (``self.bn``), so batch
    statistics, their recalibration and their synchronisation across processes work unchanged.
    """

    def __init__(self, num_features: int, n_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(n_classes, num_features)
        self.bias = nn.Embedding(n_classes, num_features)
        self.reset_affine()

    def reset_affine(self) -> None:
        """Gain N(1, 0.02), bias 0: the DCGAN initialisation of a batch norm's affine part."""
        nn.init.normal_(self.gain.weight, 1.0, 0.02)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.bn(x)  # (B, C, H, W)
        gain = self.gain(y).to(h.dtype)[:, :, None, None]  # (B, C, 1, 1)
        return h * gain + self.bias(y).to(h.dtype)[:, :, None, None]


class Generator(nn.Module):
    """G(z | y): (B, nz) noise (+ (B,) class ids) -> (B, channels + mask_channels, S, S)."""

    def __init__(self, spec: DCGANSpec) -> None:
        super().__init__()
        self.spec = spec
        n = spec.n_up
        c0 = spec.ngf * _mult(0, n)
        concat = spec.n_classes > 0 and spec.g_conditioning == "concat"
        self.cbn = spec.n_classes > 0 and spec.g_conditioning == "cbn"
        self.embed = nn.Embedding(spec.n_classes, spec.nz) if concat else None
        n_in = spec.nz * (2 if concat else 1)
        if spec.projection == "conv":
            self.project: nn.Module = nn.ConvTranspose2d(n_in, c0, 4, 1, 0, bias=False)
        else:
            self.project = nn.Linear(n_in, c0 * 16, bias=False)
        self.c0 = c0
        blocks: list[nn.Module] = [self._norm(c0), nn.ReLU(True)]  # (B, c0, 4, 4)
        for i in range(n - 1):
            c_in, c_out = spec.ngf * _mult(i, n), spec.ngf * _mult(i + 1, n)
            blocks += [
                nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),  # (B, c_out, 2^(i+3), ...)
                self._norm(c_out),
                nn.ReLU(True),
            ]
        # (B, ngf, S/2, S/2) -> (B, channels + mask_channels, S, S)
        blocks += [nn.ConvTranspose2d(spec.ngf, spec.out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*blocks)
        init_weights(self)
        for m in self.modules():
            if isinstance(m, CondBatchNorm2d):
                m.reset_affine()

    def _norm(self, c: int) -> nn.Module:
        return CondBatchNorm2d(c, self.spec.n_classes) if self.cbn else nn.BatchNorm2d(c)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Generate images (and mask scores), every channel in [-1, 1].

        Args:
            z: (B, nz) float noise.
            y: (B,) long class ids; required when the spec is conditional, ignored otherwise.

        Returns:
            (B, channels + mask_channels, S, S).
        """
        if self.spec.n_classes and y is None:
            raise ValueError("expected class ids y for a conditional generator, got None")
        if self.embed is not None:
            z = torch.cat([z, self.embed(y).to(z.dtype)], dim=1)  # (B, 2*nz)
        if self.spec.projection == "conv":
            h = self.project(z[:, :, None, None])  # (B, c0, 4, 4)
        else:
            h = self.project(z).view(z.shape[0], self.c0, 4, 4)  # (B, c0, 4, 4)
        if not self.cbn:
            return self.main(h)  # (B, C, S, S)
        for m in self.main:
            h = m(h, y) if isinstance(m, CondBatchNorm2d) else m(h)
        return h  # (B, C, S, S)


class Discriminator(nn.Module):
    """D(x | y): (B, channels + mask_channels, S, S) (+ (B,) class ids) -> (B,) logits."""

    def __init__(self, spec: DCGANSpec) -> None:
        super().__init__()
        self.spec = spec
        n = spec.n_up
        layers: list[nn.Module] = []
        c_in = spec.out_channels
        for i in range(n):
            c_out = spec.ndf * _mult(n - 1 - i, n)  # ndf, 2ndf, ... capped at 8ndf
            # (B, c_in, S/2^i, S/2^i) -> (B, c_out, S/2^(i+1), S/2^(i+1))
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not spec.d_batchnorm or i == 0))
            if spec.d_batchnorm and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)  # (B, c_in, 4, 4)
        self.head = nn.Conv2d(c_in + (spec.mbstd_group > 0), 1, 4, 1, 0)  # (B, 1, 1, 1)
        self.embed = nn.Embedding(spec.n_classes, c_in) if spec.n_classes else None
        init_weights(self)
        if spec.spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Embedding)):
                    _sn(m)

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Score images as real (high) or fake (low).

        Args:
            x: (B, channels + mask_channels, S, S) in [-1, 1].
            y: (B,) long class ids; required when the spec is conditional.

        Returns:
            (B,) logits.
        """
        h = self.features(x)  # (B, c, 4, 4)
        if self.spec.mbstd_group:
            out = self.head(minibatch_std(h, self.spec.mbstd_group)).flatten()  # (B,)
        else:
            out = self.head(h).flatten()  # (B,)
        if self.embed is not None:
            if y is None:
                raise ValueError("expected class ids y for a conditional discriminator, got None")
            pooled = h.sum(dim=(2, 3))  # (B, c)
            out = out + (self.embed(y).to(pooled.dtype) * pooled).sum(dim=1)  # projection term
        return out


def minibatch_std(h: Tensor, group: int) -> Tensor:
    """Append the mean standard deviation over groups of consecutive samples as a channel.

    Groups are consecutive samples (not strided as in ProGAN), so a batch of reals followed by
    an equal batch of fakes, as the trainer concatenates them, never mixes the two in a group.

    Args:
        h: (B, C, H, W) features.
        group: samples per group; lowered to a divisor of B.

    Returns:
        (B, C + 1, H, W).
    """
    b = h.shape[0]
    g = min(group, b)
    while b % g:
        g -= 1
    y = h.float().reshape(b // g, g, *h.shape[1:])  # (B/g, g, C, H, W)
    std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
    feat = std.repeat_interleave(g)[:, None, None, None].expand(b, 1, *h.shape[2:])  # (B,1,H,W)
    return torch.cat([h, feat.to(h.dtype)], dim=1)


@torch.no_grad()
def recalibrate_batchnorm(
    generator: Generator,
    batches: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    class_probs: Tensor | None = None,
) -> None:
    """Recompute the generator's batch-norm running statistics from its own train-mode passes.

    An EMA generator's running statistics belong to the raw generator's weights, so eval-mode
    samples from it drift towards noise. Averaging the batch statistics of ``batches`` train-mode
    forward passes (momentum None: a cumulative mean) gives eval mode what training showed.

    Args:
        generator: the generator (its mode is restored afterwards).
        batches: number of forward passes.
        batch_size: noise vectors per pass.
        seed: seed of the noise, so the result is reproducible.
        class_probs: (n_classes,) class frequencies for conditional generators (default uniform).
    """
    spec = generator.spec
    device = next(generator.parameters()).device
    bns = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    was_training = generator.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    rng = torch.Generator(device="cpu").manual_seed(seed)
    generator.train()
    for _ in range(batches):
        z = torch.randn(batch_size, spec.nz, generator=rng).to(device)
        y = None
        if spec.n_classes:
            probs = class_probs if class_probs is not None else torch.ones(spec.n_classes)
            y = torch.multinomial(probs.float().cpu(), batch_size, True, generator=rng).to(device)
        generator(z, y)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    generator.train(was_training)
