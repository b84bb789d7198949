"""One GAN training step: G, D, their EMA and optimisers (:class:`Trainer`), and the losses."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment.config import TrainConfig
from augment.errors import ConfigError
from augment.nets.dcgan import (
    DCGANSpec,
    Discriminator,
    Generator,
    LocalDiscriminator,
    lesion_crops,
    local_crop_size,
    recalibrate_batchnorm,
)
from augment.nets.device import to_device
from augment.training.ddp import plain_batchnorm, sync_batchnorm
from augment.training.diffaug import diff_augment
from augment.training.losses import LOSSES
from augment.training.losses.base import GANLoss

BN_BATCHES = 16  # passes of 64 noise vectors that recalibrate the EMA G's batch norm


def growth_steps(cfg: TrainConfig, size: int) -> int:
    """The step from which progressive growing has reached S with the last block fully in."""
    if not cfg.grow_from:
        return 0
    levels = int(math.log2(size // cfg.grow_from))
    return levels * cfg.grow_steps + cfg.grow_steps // 2


def growth_level(cfg: TrainConfig, size: int, step: int) -> tuple[int, float]:
    """Resolution and fade-in alpha of progressive growing at ``step`` (S and 1 when off).

    ``grow_steps`` steps at the starting resolution, then per doubling ``grow_steps`` steps
    whose first half fades the new block in (alpha 0 -> 1) and whose second half trains it alone.
    """
    if not cfg.grow_from:
        return size, 1.0
    k = step // cfg.grow_steps
    levels = int(math.log2(size // cfg.grow_from))
    if k > levels:
        return size, 1.0
    into = step - k * cfg.grow_steps
    alpha = 1.0 if k == 0 else min(1.0, into / (cfg.grow_steps // 2))
    return cfg.grow_from * 2**k, alpha


class Trainer:
    """G, D, their EMA and optimisers, and one training step.

    Args:
        spec: the architecture, built from ``cfg`` (train's ``_spec``: its ``attention`` and
            ``d_mask`` are the config's).
        cfg: the run's configuration (losses, learning rates, EMA, augmentation).
        device: where the networks live.
        distributed: wrap G and D in DistributedDataParallel (process group initialised).

    Raises:
        ConfigError: ``d_mask`` asked for without masks or classes.
    """

    def __init__(
        self, spec: DCGANSpec, cfg: TrainConfig, device: torch.device, distributed: bool = False
    ) -> None:
        if cfg.d_mask != "none" and not (spec.mask_channels and spec.n_classes):
            raise ConfigError(
                f"train.d_mask: {cfg.d_mask!r} needs masks and a conditional model, got "
                f"{spec.mask_channels} mask channels and {spec.n_classes} classes"
            )
        if (spec.attention, spec.d_mask) != (cfg.attention, cfg.d_mask):
            raise ValueError(
                f"expected the spec of the config (attention {cfg.attention}, d_mask "
                f"{cfg.d_mask!r}), got {spec.attention} and {spec.d_mask!r}: build it with train's"
                " _spec"
            )
        self.spec, self.cfg, self.device = spec, cfg, device
        self.loss: GANLoss = LOSSES.get(cfg.loss)()
        self.cuda = device.type == "cuda"
        # channels_last on CPU too: oneDNN's (transposed) convolutions run 2-3x faster in it.
        fmt = torch.channels_last
        g, d = Generator(spec), Discriminator(spec)
        if distributed:  # batch statistics over all processes, not per process
            g, d = sync_batchnorm(g, self.cuda), sync_batchnorm(d, self.cuda)
        self.g = to_device(g, device, fmt)
        self.d = to_device(d, device, fmt)
        # The local D (d_mask "local") and the mask channels of the lesion labels it crops
        # around (the training run sets the store's lesion labels; default: all but channel 0).
        self.d_local: nn.Module | None = None
        self.d_local_run: Callable[..., Tensor] | None = None
        self.lesion_channels = list(range(1, spec.mask_channels))
        if spec.d_mask == "local":
            self.d_local = to_device(LocalDiscriminator(spec), device, fmt)
            self.d_local_run = self.d_local
        self.distributed = distributed
        # What a step calls: G and D themselves, or their DDP wrappers (and compiled).
        self.g_run: Callable[..., Tensor] = self.g
        self.d_run: Callable[..., Tensor] = self.d
        self.d_ddp: nn.parallel.DistributedDataParallel | None = None  # for no_sync()
        if distributed:
            ids = [device.index] if self.cuda else None
            # Progressive growing leaves the other resolutions' image layers unused in a step.
            unused = bool(spec.progressive)
            self.g_run = nn.parallel.DistributedDataParallel(
                self.g, device_ids=ids, find_unused_parameters=unused
            )
            self.d_ddp = nn.parallel.DistributedDataParallel(
                self.d, device_ids=ids, find_unused_parameters=unused
            )
            self.d_run = self.d_ddp
            if self.d_local is not None:
                self.d_local_run = nn.parallel.DistributedDataParallel(self.d_local, device_ids=ids)
        if cfg.compile:
            self.g_run, self.d_run = torch.compile(self.g_run), torch.compile(self.d_run)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        opt = {"fused": True} if self.cuda else {}
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=betas, **opt)
        d_params = list(self.d.parameters())
        if self.d_local is not None:
            d_params += list(self.d_local.parameters())
        self.opt_d = torch.optim.Adam(d_params, lr=cfg.lr_d, betas=betas, **opt)
        self._ema_pairs: tuple[list[Tensor], list[Tensor]] = (
            list(self.g_ema.parameters()),
            list(self.g.parameters()),
        )
        self._buf_pairs = list(zip(self.g_ema.buffers(), self.g.buffers(), strict=True))
        # Separate real and fake batches through a batch-norm D, as the plain DCGAN does;
        # otherwise one concatenated pass (the same numbers, one launch, one DDP forward).
        self.separate = spec.d_batchnorm and not distributed
        self.step_count = 0
        self.d_steps = 0  # D updates so far (lazy R1's clock; n_critic per step)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _aug(self, x: Tensor) -> Tensor:
        """What D sees: DiffAugment, and the mask channels scaled by ``mask_weight``."""
        return self._weigh(self._diffaug(x))

    def _diffaug(self, x: Tensor) -> Tensor:
        if self.cfg.diffaug:
            x = diff_augment(x, self.cfg.diffaug, image_channels=self.spec.channels)
        return x

    def level(self) -> tuple[int, float]:
        """Progressive growing's resolution and fade-in at this step (S and 1 when off)."""
        return growth_level(self.cfg, self.spec.image_size, self.step_count)

    @property
    def grown(self) -> bool:
        """G makes full-resolution slices with every block in (always, without growing)."""
        return self.step_count >= growth_steps(self.cfg, self.spec.image_size)

    def _gen(self, z: Tensor, y: Tensor, res: int, alpha: float) -> Tensor:
        if not self.spec.progressive:
            return self.g_run(z, self._y(y))
        return self.g_run(z, self._y(y), res=res, alpha=alpha)

    def _dis(self, x: Tensor, y: Tensor | None, alpha: float) -> Tensor:
        if not self.spec.progressive:
            return self.d_run(x, y)
        return self.d_run(x, y, alpha=alpha)

    def _shrink(self, real: Tensor, res: int, alpha: float) -> Tensor:
        """Real slices at the growing resolution, faded as G's output is (ProGAN)."""
        s = self.spec.image_size
        if res == s and alpha >= 1:
            return real
        x = F.avg_pool2d(real, s // res) if res < s else real  # (B, C, res, res)
        if alpha < 1:
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
            x = torch.lerp(low, x, alpha)
        return x

    def _local(self, x: Tensor, y: Tensor) -> Tensor:
        """The local D's logits on lesion crops of (augmented, unweighted) slices: (B,)."""
        assert self.d_local_run is not None
        if x.shape[-1] != self.spec.image_size:  # progressive growing: crops of the full field
            x = F.interpolate(x, size=self.spec.image_size, mode="nearest")
        size = local_crop_size(self.spec.image_size)
        crops = lesion_crops(x, self.spec.channels, self.lesion_channels, size)
        return self.d_local_run(crops.contiguous(memory_format=torch.channels_last), y).float()

    def _weigh(self, x: Tensor) -> Tensor:
        if self.spec.mask_channels and self.cfg.mask_weight != 1.0:
            c = self.spec.channels
            x = torch.cat([x[:, :c], x[:, c:] * self.cfg.mask_weight], dim=1)
        return x

    def _harden(self, fake: Tensor) -> Tensor:
        """With ``hard_masks``: fake mask scores -> one-hot masks in [-1, 1], straight through.

        Hard masks deny D the masks' sharpness as a cue, but G's gradient is only that of a
        softmax; on the phantoms they gave scattered lesion pixels on every slice. Without
        ``hard_masks`` (the default) D sees G's tanh scores, and ``mask_weight`` keeps the
        sharpness cue from drowning the images' signal.
        """
        c = self.spec.channels
        if not self.spec.mask_channels or not self.cfg.hard_masks:
            return fake
        soft = torch.softmax(fake[:, c:].float() * 4, dim=1)  # (B, K, S, S)
        hard = F.one_hot(soft.argmax(1), self.spec.mask_channels).permute(0, 3, 1, 2)
        masks = hard.to(soft.dtype) + soft - soft.detach()
        return torch.cat([fake[:, :c], (masks * 2 - 1).to(fake.dtype)], dim=1)

    def _y(self, y: Tensor) -> Tensor | None:
        return y if self.spec.n_classes else None

    def _d_step(
        self, real: Tensor, y: Tensor, fake: Tensor, alpha: float = 1.0
    ) -> tuple[Tensor, Tensor, Tensor]:
        cfg, b = self.cfg, real.shape[0]
        gp = self.loss.gradient_penalty
        seen = [self._diffaug(real), self._diffaug(fake)]  # the same views for both D's
        # Lazy R1 (StyleGAN2): every r1_every-th D step, gamma/2 * |grad D(real)|^2, scaled by
        # r1_every; the gradient is taken at the slice D sees (after DiffAugment), through both
        # D's where there is a local one.
        r1 = cfg.r1_weight > 0 and self.d_steps % cfg.r1_every == 0
        self.d_steps += 1
        if r1:
            seen[0] = seen[0].detach().requires_grad_(True)
        parts, ys = [self._weigh(v) for v in seen], [y, y]
        if gp:
            mix = torch.rand(b, 1, 1, 1, device=real.device)
            x_hat = (mix * real + (1 - mix) * fake).requires_grad_(True)
            parts.append(x_hat)
            ys.append(y)
        with self._autocast():
            if self.separate:
                outs = [
                    self._dis(p, self._y(yy), alpha).float()
                    for p, yy in zip(parts, ys, strict=True)
                ]
            else:
                cat = torch.cat(parts).contiguous(memory_format=torch.channels_last)
                outs = list(self._dis(cat, self._y(torch.cat(ys)), alpha).float().split(b))
            loss = self.loss.discriminator(outs[0], outs[1])
            reals = [outs[0]]  # D's outputs on the real slices (R1's gradient is of their sum)
            if self.d_local is not None:
                local = self._local(torch.cat(seen), torch.cat([y, y])).split(b)
                loss = loss + self.loss.discriminator(local[0], local[1])
                reals.append(local[0])
        if gp:
            (grad,) = torch.autograd.grad(outs[2].sum(), x_hat, create_graph=True)
            loss = loss + cfg.gp_weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        if r1:
            total = torch.stack([r.sum() for r in reals]).sum()
            (grad,) = torch.autograd.grad(total, seen[0], create_graph=True)
            penalty = grad.float().flatten(1).pow(2).sum(dim=1).mean()
            loss = loss + 0.5 * cfg.r1_weight * cfg.r1_every * penalty
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach(), outs[0].detach(), outs[1].detach()

    def step(self, next_batch: Callable[[], tuple[Tensor, Tensor]]) -> Tensor:
        """One generator step after ``n_critic`` discriminator steps.

        Args:
            next_batch: returns a real batch (B, C, S, S) and its (B,) labels.

        Returns:
            (4,) detached tensor: loss_d, loss_g, D(x), D(G(z)) (probabilities for bce, raw
            scores otherwise), on the device; reading it is the caller's host sync.
        """
        cfg = self.cfg
        res, alpha = self.level()
        real, y = next_batch()
        z = torch.randn(real.shape[0], self.spec.nz, device=self.device)
        with self._autocast():
            fake = self._harden(self._gen(z, y, res, alpha))  # (B, C, res, res)
        for i in range(cfg.n_critic):
            if i > 0:
                real, y = next_batch()
                with torch.no_grad(), self._autocast():
                    extra = self._harden(self._gen(torch.randn_like(z), y, res, alpha))
                loss_d, d_real, d_fake = self._d_step(
                    self._shrink(real, res, alpha), y, extra.float(), alpha
                )
            else:
                loss_d, d_real, d_fake = self._d_step(
                    self._shrink(real, res, alpha), y, fake.detach().float(), alpha
                )
        # G step: D's weights get no gradient (saves a third of D's backward), and under DDP
        # D's gradients are not all-reduced.
        self.d.requires_grad_(False)
        sync = contextlib.ExitStack()
        for ddp in (self.d_ddp, self.d_local_run):
            if isinstance(ddp, nn.parallel.DistributedDataParallel):
                sync.enter_context(ddp.no_sync())
        if self.d_local is not None:
            self.d_local.requires_grad_(False)
        with sync, self._autocast():
            seen = self._diffaug(fake)
            loss_g = self.loss.generator(self._dis(self._weigh(seen), self._y(y), alpha).float())
            if self.d_local is not None:
                loss_g = loss_g + self.loss.generator(self._local(seen, y))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        if self.d_local is not None:
            self.d_local.requires_grad_(True)
        self.step_count += 1
        self.update_ema()
        score = self.loss.score
        return torch.stack([loss_d, loss_g.detach(), score(d_real).mean(), score(d_fake).mean()])

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of G's weights, with a warm-up so short runs are not dominated by the init."""
        decay = min(self.cfg.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1.0 - decay)
        for ema_buf, buf in self._buf_pairs:
            ema_buf.copy_(buf)

    def sampling_generator(self, class_probs: Tensor | None = None) -> Generator:
        """A copy of the EMA generator whose eval mode gives what training shows."""
        g = plain_batchnorm(copy.deepcopy(self.g_ema))
        g = to_device(g, None, torch.contiguous_format)
        recalibrate_batchnorm(g, BN_BATCHES, 64, seed=self.cfg.seed, class_probs=class_probs)
        return g.eval()

    def state_dict(self) -> dict[str, Any]:
        state = {
            "G": self.g.state_dict(),
            "D": self.d.state_dict(),
            "G_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step_count,
            "d_steps": self.d_steps,
        }
        if self.d_local is not None:
            state["D_local"] = self.d_local.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["G"])
        self.d.load_state_dict(state["D"])
        if self.d_local is not None:
            self.d_local.load_state_dict(state["D_local"])
        self.g_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step_count = int(state["step"])
        self.d_steps = int(state.get("d_steps", self.step_count * self.cfg.n_critic))
