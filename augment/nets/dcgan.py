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

Options: ``attention`` puts a SAGAN self-attention layer (Zhang et al. 2019) at that resolution
in G and D; ``d_mask="projection"`` adds to D a branch on the mask channels alone whose class
projection checks that the mask fits the class; ``d_mask="local"`` adds a second, small
discriminator (:class:`LocalDiscriminator`) that sees image + mask crops around the lesion's
centre of mass, so that a lesion mask over unchanged tissue is caught. ``progressive`` (Karras
et al. 2018) gives G a 1x1 "to image" layer and D a 1x1 "from image" layer at every resolution
from that one up to S/2, so both can run at a lower resolution (``res``) while the next block is
faded in (``alpha``); at S with alpha 1 they are the plain networks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _sn

IMAGE_SIZES = (32, 64, 128, 256)
PROJECTIONS = ("conv", "dense")
G_CONDITIONINGS = ("concat", "cbn")
D_MASKS = ("none", "projection", "local")
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
        attention: 0 (off), or the resolution (8 .. S/2) of a self-attention layer in G and D.
        d_mask: "none"; "projection" (a class projection on features of the mask channels
            alone); or "local" (a second discriminator on lesion crops; see
            :class:`LocalDiscriminator`, which the trainer builds).
        progressive: 0 (off), or the lowest resolution (8 .. S/2) of progressive growing: G and
            D get image layers at every resolution from it to S/2.
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
    attention: int = 0
    d_mask: str = "none"
    progressive: int = 0

    def __post_init__(self) -> None:
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"expected image_size in {IMAGE_SIZES}, got {self.image_size}")
        if self.projection not in PROJECTIONS:
            raise ValueError(f"expected projection in {PROJECTIONS}, got {self.projection!r}")
        if self.g_conditioning not in G_CONDITIONINGS:
            raise ValueError(
                f"expected g_conditioning in {G_CONDITIONINGS}, got {self.g_conditioning!r}"
            )
        if self.d_mask not in D_MASKS:
            raise ValueError(f"expected d_mask in {D_MASKS}, got {self.d_mask!r}")
        if self.d_mask != "none" and (self.mask_channels == 0 or self.n_classes == 0):
            raise ValueError(f"d_mask {self.d_mask!r} needs mask channels and classes")
        if self.attention and self.attention not in inner_resolutions(self.image_size):
            raise ValueError(
                f"expected attention 0 or one of {inner_resolutions(self.image_size)}, "
                f"got {self.attention}"
            )
        if self.progressive and self.progressive not in inner_resolutions(self.image_size):
            raise ValueError(
                f"expected progressive 0 or one of {inner_resolutions(self.image_size)}, "
                f"got {self.progressive}"
            )
        if self.progressive and self.d_mask == "projection":
            raise ValueError("progressive growing does not take d_mask 'projection'")
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

    @property
    def growth(self) -> tuple[int, ...]:
        """Resolutions with their own image layers (progressive growing): start .. S/2."""
        if not self.progressive:
            return ()
        return tuple(r for r in inner_resolutions(self.image_size) if r >= self.progressive)

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


def inner_resolutions(size: int) -> tuple[int, ...]:
    """G's and D's hidden resolutions, 8 .. S/2: where self-attention may sit and progressive
    growing may start."""
    return tuple(2**k for k in range(3, int(math.log2(size))))


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


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019): x + gamma * softmax(q^T k) v, gamma from 0.

    1x1 convolutions give queries and keys of C/8 channels and values of C; every position
    attends to every other, so G and D can relate distant parts of a slice (a lesion and its
    mask, the two sides of a body). ``gamma`` starts at 0: the layer begins as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1, bias=False)
        self.key = nn.Conv2d(channels, inner, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (B, C/8, HW)
        k = self.key(x).flatten(2)  # (B, C/8, HW)
        v = self.value(x).flatten(2)  # (B, C, HW)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (B, HW_q, HW_k)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)  # (B, C, H, W)
        return x + self.gamma.to(out.dtype) * out


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
            if spec.attention == 2 ** (i + 3):
                blocks.append(SelfAttention(c_out))  # (B, c_out, attention, attention)
        # (B, ngf, S/2, S/2) -> (B, channels + mask_channels, S, S)
        blocks += [nn.ConvTranspose2d(spec.ngf, spec.out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*blocks)
        # Progressive growing: (B, c_r, r, r) -> (B, out_channels, r, r), tanh applied in forward.
        self.to_image = nn.ModuleDict({
            str(r): nn.Conv2d(spec.ngf * _mult(int(math.log2(r)) - 2, n), spec.out_channels, 1)
            for r in spec.growth
        })  # fmt: skip
        init_weights(self)
        for m in self.modules():
            if isinstance(m, CondBatchNorm2d):
                m.reset_affine()

    def _norm(self, c: int) -> nn.Module:
        return CondBatchNorm2d(c, self.spec.n_classes) if self.cbn else nn.BatchNorm2d(c)

    def forward(
        self, z: Tensor, y: Tensor | None = None, res: int | None = None, alpha: float = 1.0
    ) -> Tensor:
        """Generate images (and mask scores), every channel in [-1, 1].

        Args:
            z: (B, nz) float noise.
            y: (B,) long class ids; required when the spec is conditional, ignored otherwise.
            res: output resolution (progressive growing: one of ``spec.growth`` or S; default S).
            alpha: fade-in of the block that makes ``res`` (progressive growing): the output is
                ``lerp(up(image of res/2), image of res, alpha)``; 1 is the block alone.

        Returns:
            (B, channels + mask_channels, res, res).
        """
        if self.spec.n_classes and y is None:
            raise ValueError("expected class ids y for a conditional generator, got None")
        if self.embed is not None:
            z = torch.cat([z, self.embed(y).to(z.dtype)], dim=1)  # (B, 2*nz)
        if self.spec.projection == "conv":
            h = self.project(z[:, :, None, None])  # (B, c0, 4, 4)
        else:
            h = self.project(z).view(z.shape[0], self.c0, 4, 4)  # (B, c0, 4, 4)
        res = res or self.spec.image_size
        if res != self.spec.image_size and str(res) not in self.to_image:
            raise ValueError(f"expected res in {(*self.spec.growth, self.spec.image_size)}")
        if not self.cbn and res == self.spec.image_size and alpha >= 1:
            return self.main(h)  # (B, C, S, S)
        prev = None  # (B, c, res/2, res/2): the features the fade-in's low path starts from
        for m in self.main:
            if isinstance(m, nn.ConvTranspose2d):  # every stride-2 block starts with one
                if h.shape[-1] == res:
                    return self._fade(torch.tanh(self.to_image[str(res)](h)), prev, alpha)
                if 2 * h.shape[-1] == res:
                    prev = h
            h = m(h, y) if isinstance(m, CondBatchNorm2d) else m(h)
        return self._fade(h, prev, alpha)  # (B, C, S, S)

    def _fade(self, out: Tensor, prev: Tensor | None, alpha: float) -> Tensor:
        """(B, C, r, r) new block's image, faded in over the upsampled image of r/2."""
        if alpha >= 1 or prev is None or str(prev.shape[-1]) not in self.to_image:
            return out
        low = torch.tanh(self.to_image[str(prev.shape[-1])](prev))  # (B, C, r/2, r/2)
        return torch.lerp(F.interpolate(low, scale_factor=2.0, mode="nearest"), out, alpha)


class Discriminator(nn.Module):
    """D(x | y): (B, channels + mask_channels, S, S) (+ (B,) class ids) -> (B,) logits."""

    def __init__(self, spec: DCGANSpec) -> None:
        super().__init__()
        self.spec = spec
        n = spec.n_up
        layers: list[nn.Module] = []
        c_in = spec.out_channels
        self._stages: list[int] = []  # index in ``features`` where stage i (S/2^i in) starts
        # Progressive growing: (B, out_channels, r, r) -> (B, c, r, r) into the stage taking r.
        self.from_image = nn.ModuleDict()
        for i in range(n):
            self._stages.append(len(layers))
            c_out = spec.ndf * _mult(n - 1 - i, n)  # ndf, 2ndf, ... capped at 8ndf
            if spec.image_size // 2**i in spec.growth:
                self.from_image[str(spec.image_size // 2**i)] = nn.Sequential(
                    nn.Conv2d(spec.out_channels, c_in, 1), nn.LeakyReLU(0.2, inplace=True)
                )
            # (B, c_in, S/2^i, S/2^i) -> (B, c_out, S/2^(i+1), S/2^(i+1))
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not spec.d_batchnorm or i == 0))
            if spec.d_batchnorm and i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if spec.dropout > 0:
                layers.append(nn.Dropout(spec.dropout))
            if spec.attention == spec.image_size // 2 ** (i + 1):
                layers.append(SelfAttention(c_out))  # (B, c_out, attention, attention)
            c_in = c_out
        self._stages.append(len(layers))
        self.features = nn.Sequential(*layers)  # (B, c_in, 4, 4)
        self.head = nn.Conv2d(c_in + (spec.mbstd_group > 0), 1, 4, 1, 0)  # (B, 1, 1, 1)
        self.embed = nn.Embedding(spec.n_classes, c_in) if spec.n_classes else None
        self.mask_branch: nn.Module | None = None
        self.mask_embed: nn.Module | None = None
        if spec.d_mask == "projection":
            self.mask_branch = _conv_stack(spec.mask_channels, spec.ndf // 2, n, spec.ndf * 2)
            self.mask_embed = nn.Embedding(
                spec.n_classes, _stack_width(spec.ndf // 2, n, spec.ndf * 2)
            )
        init_weights(self)
        if spec.spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Embedding)):
                    _sn(m)

    def forward(self, x: Tensor, y: Tensor | None = None, alpha: float = 1.0) -> Tensor:
        """Score images as real (high) or fake (low).

        Args:
            x: (B, channels + mask_channels, r, r) in [-1, 1]; r is S, or with progressive
                growing one of ``spec.growth``.
            y: (B,) long class ids; required when the spec is conditional.
            alpha: fade-in of the stage that takes r (progressive growing): its features are
                ``lerp(from_image(avg_pool(x)), stage(x), alpha)``.

        Returns:
            (B,) logits.
        """
        h = self._features(x, alpha)  # (B, c, 4, 4)
        if self.spec.mbstd_group:
            out = self.head(minibatch_std(h, self.spec.mbstd_group)).flatten()  # (B,)
        else:
            out = self.head(h).flatten()  # (B,)
        if self.embed is not None:
            if y is None:
                raise ValueError("expected class ids y for a conditional discriminator, got None")
            pooled = h.sum(dim=(2, 3))  # (B, c)
            out = out + (self.embed(y).to(pooled.dtype) * pooled).sum(dim=1)  # projection term
        if self.mask_branch is not None and self.mask_embed is not None:
            # Class projection on the masks alone: "a lesion-class slice has a lesion mask".
            m = self.mask_branch(x[:, self.spec.channels :]).sum(dim=(2, 3))  # (B, c_m)
            out = out + (self.mask_embed(y).to(m.dtype) * m).sum(dim=1)
        return out

    def _features(self, x: Tensor, alpha: float) -> Tensor:
        """(B, C, r, r) -> (B, c, 4, 4), entering at the stage that takes r."""
        r = x.shape[-1]
        if r == self.spec.image_size and alpha >= 1:
            return self.features(x)
        if r != self.spec.image_size and str(r) not in self.from_image:
            raise ValueError(f"expected inputs of {(*self.spec.growth, self.spec.image_size)} px")
        k = int(math.log2(self.spec.image_size // r))  # the stage taking r
        h = x if r == self.spec.image_size else self.from_image[str(r)](x)
        h = self._run(h, k, k + 1)  # (B, c, r/2, r/2)
        if alpha < 1 and str(r // 2) in self.from_image:
            low = self.from_image[str(r // 2)](F.avg_pool2d(x, 2))  # (B, c, r/2, r/2)
            h = torch.lerp(low, h, alpha)
        return self._run(h, k + 1, len(self._stages) - 1)

    def _run(self, h: Tensor, first: int, last: int) -> Tensor:
        """Stages first .. last-1 of ``features``."""
        for i in range(self._stages[first], self._stages[last]):
            h = self.features[i](h)
        return h


def _stack_width(width: int, n: int, cap: int) -> int:
    return min(cap, width * 2 ** (n - 1))


def _conv_stack(c_in: int, width: int, n: int, cap: int) -> nn.Sequential:
    """n strided 4x4 convolutions with LeakyReLU(0.2), width doubling up to ``cap``."""
    layers: list[nn.Module] = []
    for i in range(n):
        c_out = min(cap, width * 2**i)
        layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers)


class LocalDiscriminator(nn.Module):
    """D_local(crop | y): image + mask crops (B, C, S/4, S/4) around the lesion -> (B,) logits.

    The trainer crops real and generated slices alike around the mask's lesion centre of mass
    (:func:`lesion_crops`; a random place where the mask holds no lesion). With the class
    projection, a lesion-class crop without a lesion mask is fake, and so is a lesion mask over
    tissue that does not look like a lesion: the global D sees masks at ``mask_weight`` and in
    a 64x64 field, where a small lesion is a few pixels of its input.
    """

    def __init__(self, spec: DCGANSpec) -> None:
        super().__init__()
        self.spec = spec
        self.crop = local_crop_size(spec.image_size)
        n = int(math.log2(self.crop)) - 2
        self.features = _conv_stack(spec.out_channels, spec.ndf, n, spec.ndf * 4)  # (B, c, 4, 4)
        width = _stack_width(spec.ndf, n, spec.ndf * 4)
        self.head = nn.Conv2d(width, 1, 4, 1, 0)  # (B, 1, 1, 1)
        self.embed = nn.Embedding(max(1, spec.n_classes), width)
        init_weights(self)
        if spec.spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Embedding)):
                    _sn(m)

    def forward(self, crops: Tensor, y: Tensor) -> Tensor:
        h = self.features(crops)  # (B, c, 4, 4)
        pooled = h.sum(dim=(2, 3))  # (B, c)
        return self.head(h).flatten() + (self.embed(y).to(pooled.dtype) * pooled).sum(dim=1)


def local_crop_size(image_size: int) -> int:
    """Side of the local discriminator's crops: S/4, at least 8 (16 at 64x64)."""
    return max(8, image_size // 4)


def lesion_crops(
    x: Tensor,
    channels: int,
    lesion_channels: list[int],
    size: int,
    gen: torch.Generator | None = None,
) -> Tensor:
    """Crops of ``size`` centred on each slice's lesion (a random centre where there is none).

    The centre is the centre of mass of the pixels whose lesion share of the mask channels
    (softmax over the scores, as in hard masks) exceeds one half; it is chosen without
    gradient, and the crop's contents keep theirs.

    Args:
        x: (B, channels + K, S, S) images and mask scores in [-1, 1].
        channels: image channels.
        lesion_channels: indices (within the K mask channels) of the lesion labels.
        size: crop side.
        gen: generator of the random centres (default: torch's global one).

    Returns:
        (B, channels + K, size, size).
    """
    b, _, s, _ = x.shape
    with torch.no_grad():
        p = torch.softmax(x[:, channels:].float() * 4, dim=1)[:, lesion_channels].sum(1)
        hit = (p > 0.5).float()  # (B, S, S)
        mass = hit.sum(dim=(1, 2))  # (B,)
        coords = torch.arange(s, device=x.device, dtype=torch.float32)
        cy = (hit.sum(2) * coords).sum(1) / mass.clamp(min=1)
        cx = (hit.sum(1) * coords).sum(1) / mass.clamp(min=1)
        rand = torch.randint(size // 2, s - size // 2 + 1, (2, b), generator=gen)
        rand = rand.to(x.device).float()
        cy = torch.where(mass > 0, cy, rand[0]).round().long()
        cx = torch.where(mass > 0, cx, rand[1]).round().long()
        y0 = (cy - size // 2).clamp(0, s - size)
        x0 = (cx - size // 2).clamp(0, s - size)
        offs = torch.arange(size, device=x.device)
        iy = (y0[:, None] + offs)[:, :, None]  # (B, size, 1)
        ix = (x0[:, None] + offs)[:, None, :]  # (B, 1, size)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return x[batch, :, iy, ix].permute(0, 3, 1, 2).contiguous()  # (B, C, size, size)


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
