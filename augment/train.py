"""``augment train``: a resumable DCGAN run on the train split of a SliceStore.

The run writes the model directory (see :mod:`augment.modeldir`): the EMA generator with
recalibrated batch-norm statistics, ``config.json``, a resumable ``checkpoint.pt``, dvclive logs
under ``live/`` and sample grids. Several processes (``torchrun --nproc_per_node N -m augment
train``) train with DistributedDataParallel; ``--batch-size`` is then per process.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from augment.config import TrainConfig
from augment.diffaug import diff_augment
from augment.errors import AugmentError, ConfigError, StoreError
from augment.io.atomic import atomic_file
from augment.io.store import SliceStore
from augment.modeldir import CHECKPOINT_FILE, resolve_device, save_generator
from augment.nets.dcgan import DCGANSpec, Discriminator, Generator, recalibrate_batchnorm

# Options that may differ between a run and its resumption; any other change is a new run.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "sample_every", "checkpoint_every", "device", "compile",
     "divergence_patience"}
)  # fmt: skip
METRICS = ("loss_d", "loss_g", "d_real", "d_fake")
GRID_SIDE = 8  # fixed-noise grids are 8 x 8 tiles
BN_BATCHES = 16  # passes of 64 noise vectors that recalibrate the EMA G's batch norm


class DivergenceError(AugmentError):
    """Losses stayed non-finite for ``divergence_patience`` steps in a row."""


# --------------------------------------------------------------------------- data


def train_patients(store: SliceStore, fraction: float, seed: int) -> list[str]:
    """The train patients a run uses: all of them, or a seeded subset of ``fraction``.

    Evaluation calls this too, so that the real-only baseline gets exactly the GAN's patients.

    Args:
        store: the opened SliceStore.
        fraction: share of the train patients, in (0, 1].
        seed: seed of the subset.

    Returns:
        Sorted patient pseudonyms (at least one).

    Raises:
        StoreError: the store has no train patients.
    """
    patients = store.patients("train")
    if not patients:
        raise StoreError(f"{store.root}: expected train slices, got none in slices.csv")
    if fraction >= 1.0:
        return patients
    k = max(1, round(fraction * len(patients)))
    chosen = np.random.default_rng(seed).choice(len(patients), size=k, replace=False)
    return sorted(patients[i] for i in chosen)


@dataclass
class TrainData:
    """The training slices, held where the step reads them from.

    Attributes:
        images: (N, 1, S, S) float16 in [-1, 1].
        masks: (N, S, S) uint8 mask channel index (not label id), or None.
        labels: (N,) long class ids.
        mask_channels: number of one-hot mask channels (0 without masks).
    """

    images: Tensor
    masks: Tensor | None
    labels: Tensor
    mask_channels: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device) -> TrainData:
        pin = device.type == "cuda" and self.images.device.type == "cpu"
        move = (lambda t: t.pin_memory().to(device, non_blocking=True)) if pin else (
            lambda t: t.to(device)
        )  # fmt: skip
        masks = None if self.masks is None else move(self.masks)
        return TrainData(move(self.images), masks, move(self.labels), self.mask_channels)

    def batch(self, idx: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        """Gather a batch: (B, 1 + mask_channels, S, S) float32 in [-1, 1] and (B,) labels."""
        idx = idx.to(self.images.device)
        x = self.images[idx].to(device, non_blocking=True).float()  # (B, 1, S, S)
        if self.masks is not None:
            m = self.masks[idx].to(device, non_blocking=True).long()  # (B, S, S)
            onehot = F.one_hot(m, self.mask_channels).permute(0, 3, 1, 2).float()  # (B, K, S, S)
            x = torch.cat([x, onehot * 2 - 1], dim=1)
        return x, self.labels[idx].to(device, non_blocking=True)


@dataclass
class DataInfo:
    """What the model directory records about the data (no patient identifiers)."""

    patients: list[str]
    class_names: list[str]
    label_names: dict[str, int]
    mask_label_ids: list[int]
    fingerprint: str


def load_train_data(store: SliceStore, cfg: TrainConfig) -> tuple[TrainData, DataInfo]:
    """Read the train rows of the chosen patients, check them, and fingerprint them.

    Raises:
        StoreError: no usable rows, non-finite pixels, labels or mask ids out of range, or
            masks asked for (``with_masks: yes``) where the store has none.
    """
    patients = train_patients(store, cfg.fraction, cfg.seed)
    idx = store.indices("train", set(patients))
    images = np.ascontiguousarray(store.images[idx])  # (N, 1, S, S) float16
    if not np.isfinite(images).all():
        raise StoreError(f"{store.root}/images.npy: train slices hold non-finite pixels")
    labels = store.labels(idx)
    names = store.class_names
    if labels.min() < 0 or labels.max() >= len(names):
        raise StoreError(
            f"{store.root}/slices.csv: expected labels in [0, {len(names)}), "
            f"got {labels.min()}..{labels.max()}"
        )
    masks, label_names, ids = _masks(store, idx, cfg)
    digest = hashlib.sha256(repr((store.images.shape, idx.tolist(), labels.tolist())).encode())
    digest.update(images.tobytes())
    if masks is not None:
        digest.update(masks.tobytes())
    data = TrainData(
        images=torch.from_numpy(images),
        masks=None if masks is None else torch.from_numpy(masks),
        labels=torch.from_numpy(labels),
        mask_channels=len(ids),
    )
    return data, DataInfo(patients, names, label_names, ids, digest.hexdigest())


def _masks(
    store: SliceStore, idx: np.ndarray, cfg: TrainConfig
) -> tuple[np.ndarray | None, dict[str, int], list[int]]:
    if cfg.with_masks == "yes" and store.masks is None:
        raise StoreError(f"{store.root}: with_masks is 'yes' but the store has no masks.npy")
    if cfg.with_masks == "no" or store.masks is None:
        return None, {}, []
    masks = np.ascontiguousarray(store.masks[idx][:, 0])  # (N, S, S) label ids
    names = _label_names(store.meta.get("label_ids"), masks)
    ids = sorted(set(names.values()))
    lut = np.full(256, 255, dtype=np.uint8)
    lut[ids] = np.arange(len(ids), dtype=np.uint8)
    channel = lut[masks]
    if (channel == 255).any():
        bad = sorted(set(np.unique(masks).tolist()) - set(ids))
        raise StoreError(f"{store.root}/masks.npy: expected label ids in {ids}, got also {bad}")
    return channel, names, ids


def _label_names(meta_ids: Any, masks: np.ndarray) -> dict[str, int]:
    if isinstance(meta_ids, dict):
        names = {str(k): int(v) for k, v in meta_ids.items()}
    elif isinstance(meta_ids, list):
        names = {str(int(v)): int(v) for v in meta_ids}
    else:  # no label table: the ids that occur
        names = {str(int(v)): int(v) for v in np.unique(masks)}
    if 0 not in names.values():
        names = {"background": 0, **names}
    if len(names) < 2:  # only background: keep one unused foreground channel
        names["foreground"] = max(names.values()) + 1
    return names


# --------------------------------------------------------------------------- the step


def _d_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    if kind == "bce":  # non-saturating GAN on logits
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp (penalty added by the caller)


def _g_loss(kind: str, fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean() if kind == "bce" else -fake.mean()


class Trainer:
    """G, D, their EMA and optimisers, and one training step.

    Args:
        spec: the architecture.
        cfg: the run's configuration (losses, learning rates, EMA, augmentation).
        device: where the networks live.
        distributed: wrap G and D in DistributedDataParallel (process group initialised).
    """

    def __init__(
        self, spec: DCGANSpec, cfg: TrainConfig, device: torch.device, distributed: bool = False
    ) -> None:
        self.spec, self.cfg, self.device = spec, cfg, device
        self.cuda = device.type == "cuda"
        # channels_last on CPU too: oneDNN's (transposed) convolutions run 2-3x faster in it.
        fmt = torch.channels_last
        g, d = Generator(spec), Discriminator(spec)
        if distributed:  # batch statistics over all processes, not per process
            g, d = _sync_batchnorm(g, self.cuda), _sync_batchnorm(d, self.cuda)
        self.g = g.to(device, memory_format=fmt)
        self.d = d.to(device, memory_format=fmt)
        self.distributed = distributed
        if distributed:
            ids = [device.index] if self.cuda else None
            self.g_run: nn.Module = nn.parallel.DistributedDataParallel(self.g, device_ids=ids)
            self.d_run: nn.Module = nn.parallel.DistributedDataParallel(self.d, device_ids=ids)
        else:
            self.g_run, self.d_run = self.g, self.d
        if cfg.compile:
            self.g_run, self.d_run = torch.compile(self.g_run), torch.compile(self.d_run)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        opt = {"fused": True} if self.cuda else {}
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=betas, **opt)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=betas, **opt)
        self._ema_pairs = (list(self.g_ema.parameters()), list(self.g.parameters()))
        self._buf_pairs = list(zip(self.g_ema.buffers(), self.g.buffers(), strict=True))
        # Separate real and fake batches through a batch-norm D, as the plain DCGAN does;
        # otherwise one concatenated pass (the same numbers, one launch, one DDP forward).
        self.separate = spec.d_batchnorm and not distributed
        self.step_count = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _aug(self, x: Tensor) -> Tensor:
        if not self.cfg.diffaug:
            return x
        return diff_augment(x, self.cfg.diffaug, image_channels=self.spec.channels)

    def _harden(self, fake: Tensor) -> Tensor:
        """Fake mask scores -> exact one-hot masks in [-1, 1], gradients straight through.

        Real masks are exactly one-hot; soft generated scores would let D tell real from fake by
        the masks' sharpness alone, and G would learn nothing about images. D sees hard masks
        from both; G's gradient flows through a softmax of its scores.
        """
        c = self.spec.channels
        if not self.spec.mask_channels:
            return fake
        soft = torch.softmax(fake[:, c:].float() * 4, dim=1)  # (B, K, S, S)
        hard = F.one_hot(soft.argmax(1), self.spec.mask_channels).permute(0, 3, 1, 2)
        masks = hard.to(soft.dtype) + soft - soft.detach()
        return torch.cat([fake[:, :c], (masks * 2 - 1).to(fake.dtype)], dim=1)

    def _y(self, y: Tensor) -> Tensor | None:
        return y if self.spec.n_classes else None

    def _d_step(self, real: Tensor, y: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg, b = self.cfg, real.shape[0]
        gp = cfg.loss == "wgan-gp"
        parts, ys = [self._aug(real), self._aug(fake)], [y, y]
        if gp:
            alpha = torch.rand(b, 1, 1, 1, device=real.device)
            x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
            parts.append(x_hat)
            ys.append(y)
        with self._autocast():
            if self.separate:
                outs = [self.d_run(p, self._y(yy)).float() for p, yy in zip(parts, ys, strict=True)]
            else:
                cat = torch.cat(parts).contiguous(memory_format=self._fmt())
                outs = list(self.d_run(cat, self._y(torch.cat(ys))).float().split(b))
            loss = _d_loss(cfg.loss, outs[0], outs[1])
        if gp:
            (grad,) = torch.autograd.grad(outs[2].sum(), x_hat, create_graph=True)
            loss = loss + cfg.gp_weight * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.detach(), outs[0].detach(), outs[1].detach()

    def _fmt(self) -> torch.memory_format:
        return torch.channels_last

    def step(self, next_batch: Callable[[], tuple[Tensor, Tensor]]) -> Tensor:
        """One generator step after ``n_critic`` discriminator steps.

        Args:
            next_batch: returns a real batch (B, C, S, S) and its (B,) labels.

        Returns:
            (4,) detached tensor: loss_d, loss_g, D(x), D(G(z)) (probabilities for bce, raw
            scores otherwise), on the device; reading it is the caller's host sync.
        """
        cfg = self.cfg
        real, y = next_batch()
        z = torch.randn(real.shape[0], self.spec.nz, device=self.device)
        with self._autocast():
            fake = self._harden(self.g_run(z, self._y(y)))  # (B, C, S, S)
        for i in range(cfg.n_critic):
            if i > 0:
                real, y = next_batch()
                with torch.no_grad(), self._autocast():
                    extra = self._harden(self.g_run(torch.randn_like(z), self._y(y)))
                loss_d, d_real, d_fake = self._d_step(real, y, extra.float())
            else:
                loss_d, d_real, d_fake = self._d_step(real, y, fake.detach().float())
        # G step: D's weights get no gradient (saves a third of D's backward), and under DDP
        # D's gradients are not all-reduced.
        self.d.requires_grad_(False)
        sync = self.d_run.no_sync() if self.distributed else contextlib.nullcontext()
        with sync, self._autocast():
            loss_g = _g_loss(cfg.loss, self.d_run(self._aug(fake), self._y(y)).float())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        self.step_count += 1
        self.update_ema()
        prob = torch.sigmoid if cfg.loss == "bce" else (lambda t: t)
        return torch.stack([loss_d, loss_g.detach(), prob(d_real).mean(), prob(d_fake).mean()])

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of G's weights, with a warm-up so short runs are not dominated by the init."""
        decay = min(self.cfg.ema_decay, (1 + self.step_count) / (10 + self.step_count))
        torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1.0 - decay)
        for ema_buf, buf in self._buf_pairs:
            ema_buf.copy_(buf)

    def sampling_generator(self, class_probs: Tensor | None = None) -> Generator:
        """A copy of the EMA generator whose eval mode gives what training shows."""
        g = _plain_batchnorm(copy.deepcopy(self.g_ema))
        g = g.to(memory_format=torch.contiguous_format)
        recalibrate_batchnorm(g, BN_BATCHES, 64, seed=self.cfg.seed, class_probs=class_probs)
        return g.eval()

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.g.state_dict(),
            "D": self.d.state_dict(),
            "G_ema": self.g_ema.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g.load_state_dict(state["G"])
        self.d.load_state_dict(state["D"])
        self.g_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step_count = int(state["step"])


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's loss flows back to each input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)  # itself differentiable: the GP's double backward


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm with statistics all-reduced over processes, for CPU (gloo) runs.

    ``nn.SyncBatchNorm`` needs CUDA; this computes per-channel sums and sums of squares, reduces
    them with a differentiable all-reduce (so gradients flow through the shared statistics
    too), and normalises with the global mean and variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3)), count])  # (2C+1,)
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n  # (C,)
        var = (total[c : 2 * c] / n - mean.pow(2)).clamp_min(0)  # (C,) biased
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                f = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked
                self.running_mean.lerp_(mean.detach(), float(f))
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), float(f))
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _swap_batchnorm(module: nn.Module, kind: type[nn.Module], match: tuple[type, ...]) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, match) and type(child) is not kind:
            bn = kind(child.num_features, child.eps, child.momentum, child.affine)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn.to(child.weight.device))
        else:
            _swap_batchnorm(child, kind, match)
    return module


def _sync_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swap_batchnorm(module, GlooSyncBatchNorm, (nn.BatchNorm2d,))


def _plain_batchnorm(module: nn.Module) -> nn.Module:
    """Synchronised batch norms -> BatchNorm2d (recalibration runs in one process)."""
    return _swap_batchnorm(module, nn.BatchNorm2d, (nn.SyncBatchNorm, GlooSyncBatchNorm))


# --------------------------------------------------------------------------- RNG and checkpoints


def _rng_state(data_rng: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and lists (loadable with weights_only)."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "data": data_rng.get_state(),
    }  # fmt: skip


def _set_rng_state(state: dict[str, Any], data_rng: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    data_rng.set_state(state["data"])


def save_checkpoint(path: Path, trainer: Trainer, rng: list[dict[str, Any]], meta: dict) -> None:
    """Write the resumable state atomically: a crash mid-write keeps the previous checkpoint."""
    state = {**trainer.state_dict(), "rng": rng, **meta}
    with atomic_file(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs).

    Raises:
        StoreError: the file is missing or unreadable.
    """
    if not path.is_file():
        raise StoreError(f"{path.parent}: --resume asked for, but {path.name} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors for broken files
        raise StoreError(f"{path}: unreadable checkpoint ({exc})") from exc


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, fingerprint: str, path: Path) -> None:
    old = state.get("config", {})
    new = cfg.model_dump()
    diff = sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES
                  and old.get(k) != new.get(k))  # fmt: skip
    if diff:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ConfigError(
            f"{path}: cannot resume, the configuration changed ({changes}); "
            "train without --resume to start a new run"
        )
    if state.get("fingerprint") != fingerprint:
        raise StoreError(
            f"{path}: cannot resume, the training data differ from the checkpoint's "
            "(other slices, patients or fraction); train without --resume to start a new run"
        )


# --------------------------------------------------------------------------- pictures


def _tiles(images: np.ndarray, masks: np.ndarray | None, ncol: int) -> np.ndarray:
    """(B, 1, S, S) in [-1, 1] (+ (B, S, S) channel ids) -> (rows*S, ncol*S, 3) uint8 RGB."""
    b, s = images.shape[0], images.shape[-1]
    rgb = np.repeat(((images[:, 0] + 1) * 127.5).clip(0, 255)[..., None], 3, axis=-1)
    if masks is not None:  # tint labelled pixels; background (channel 0) stays grey
        palette = np.array([[0, 0, 0], [255, 60, 60], [60, 200, 60], [60, 120, 255],
                            [240, 200, 40], [200, 60, 220]], dtype=np.float64)  # fmt: skip
        on = masks > 0
        colour = palette[np.where(on, (masks - 1) % (len(palette) - 1) + 1, 0)]
        rgb = np.where(on[..., None], 0.6 * rgb + 0.4 * colour, rgb)
    rows = -(-b // ncol)
    grid = np.zeros((rows * s, ncol * s, 3), dtype=np.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        grid[r * s : (r + 1) * s, c * s : (c + 1) * s] = rgb[i].astype(np.uint8)
    return grid


def _channel_ids(x: Tensor, spec: DCGANSpec) -> np.ndarray | None:
    return None if not spec.mask_channels else x[:, spec.channels :].argmax(1).cpu().numpy()


@torch.no_grad()
def _fixed_grid(g: Generator, z: Tensor, y: Tensor) -> np.ndarray:
    out = g(z, y if g.spec.n_classes else None).float()  # (64, C, S, S)
    images = out[:, : g.spec.channels].cpu().numpy()
    return _tiles(images, _channel_ids(out, g.spec), GRID_SIDE)


def _fixed_inputs(spec: DCGANSpec, seed: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rng = torch.Generator().manual_seed(seed + 7919)  # apart from the training noise
    z = torch.randn(GRID_SIDE * GRID_SIDE, spec.nz, generator=rng)
    # One class per row (cycling), so the grid shows every class.
    y = torch.arange(GRID_SIDE).repeat_interleave(GRID_SIDE) % max(1, spec.n_classes)
    return z.to(device), y.to(device)


def _samples_figure(path: Path, g: Generator, data: TrainData, info: DataInfo, seed: int) -> None:
    """out/samples.png: real train slices beside synthetic ones, one row per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = g.spec
    n_cls = max(1, spec.n_classes)
    rows_per = max(1, 4 // n_cls)
    rng = np.random.default_rng(seed)
    labels = data.labels.cpu().numpy()
    real_idx, ys = [], []
    for c in range(n_cls):
        pool = np.flatnonzero(labels == c) if spec.n_classes else np.arange(len(labels))
        take = rng.choice(pool, rows_per * GRID_SIDE, replace=len(pool) < rows_per * GRID_SIDE) \
            if len(pool) else np.array([], dtype=np.int64)  # fmt: skip
        real_idx.append(take)
        ys += [c] * rows_per * GRID_SIDE
    real, _ = data.batch(torch.from_numpy(np.concatenate(real_idx)).long(), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(ys), spec.nz, generator=gen)
    device = next(g.parameters()).device
    with torch.no_grad():
        fake = g(z.to(device), torch.tensor(ys, device=device) if spec.n_classes else None)
    fake = fake.float().cpu()
    rows = n_cls * rows_per
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.75 * rows + 0.9))
    for ax, x, title in ((axes[0], real, "real (train split)"),
                         (axes[1], fake, "synthetic (EMA generator, eval mode)")):  # fmt: skip
        if len(x):
            ax.imshow(_tiles(x[:, : spec.channels].numpy(), _channel_ids(x, spec), GRID_SIDE))
        ax.set_title(title)
        ax.set_xticks([])
        s = spec.image_size
        ax.set_yticks([(i * rows_per + rows_per / 2) * s for i in range(n_cls)])
        ax.set_yticklabels(info.class_names if spec.n_classes else ["all"])
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------- the run


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this call initialised the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device_name: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    owned = not dist.is_initialized()
    if owned:
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 owned)  # fmt: skip


def _device(cfg: TrainConfig, d: _Dist) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and d.world > 1:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def _data_device(data: TrainData, device: torch.device) -> torch.device:
    """Keep the whole training set on the GPU when it takes under a quarter of free memory."""
    if device.type != "cuda":
        return device
    size = data.images.nbytes + (0 if data.masks is None else data.masks.nbytes)
    free, _ = torch.cuda.mem_get_info(device)
    return device if size < free // 4 else torch.device("cpu")


def _dry_run(cfg: TrainConfig) -> TrainConfig:
    """A handful of tiny steps through every stage of the run (the options kept)."""
    return cfg.model_copy(update={
        "steps": min(cfg.steps, 4), "ngf": 8, "ndf": 8, "nz": min(cfg.nz, 16),
        "batch_size": min(cfg.batch_size, 8), "log_every": 1, "sample_every": 2,
        "checkpoint_every": 2,
    })  # fmt: skip


def _spec(cfg: TrainConfig, store: SliceStore, data: TrainData, info: DataInfo) -> DCGANSpec:
    if store.size not in (32, 64, 128, 256):
        raise StoreError(f"{store.root}: expected slices of 32, 64, 128 or 256, got {store.size}")
    return DCGANSpec(
        image_size=store.size, channels=1, mask_channels=data.mask_channels,
        n_classes=len(info.class_names) if cfg.conditional else 0, nz=cfg.nz, ngf=cfg.ngf,
        ndf=cfg.ndf, projection=cfg.projection, spectral_norm=cfg.spectral_norm,
        d_batchnorm=cfg.d_batchnorm, dropout=cfg.dropout,
    )  # fmt: skip


def _clean(out: Path) -> None:
    """A fresh run must not leave a previous run's files to be mistaken for its own."""
    import shutil

    for name in (CHECKPOINT_FILE, "generator.safetensors", "config.json", "samples.png"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "live", ignore_errors=True)


def _batches(data: TrainData, cfg: TrainConfig, device: torch.device, rng: torch.Generator
             ) -> Callable[[], tuple[Tensor, Tensor]]:  # fmt: skip
    n = len(data)

    def next_batch() -> tuple[Tensor, Tensor]:
        # Uniform draws with replacement: no epoch bookkeeping to checkpoint, and the
        # generator's state alone resumes the exact sequence.
        idx = torch.randint(n, (cfg.batch_size,), generator=rng, device=rng.device)
        return data.batch(idx, device)

    return next_batch


def train(
    cfg: TrainConfig, data: Path, out: Path, resume: bool = False, dry_run: bool = False
) -> dict[str, Any]:
    """Train the DCGAN on the train split of a SliceStore and write the model directory.

    Args:
        cfg: the run's configuration.
        data: the SliceStore directory.
        out: the model directory (created; a fresh run replaces a previous run's files).
        resume: continue from ``out/checkpoint.pt`` (same config but ``steps``, same data).
        dry_run: a few tiny steps end to end, for smoke tests.

    Returns:
        Summary: steps, final losses, images per second, model directory.

    Raises:
        StoreError: unusable slice store, or resuming on other data / without a checkpoint.
        ConfigError: resuming with another configuration, or an unusable device.
        DivergenceError: losses non-finite for ``divergence_patience`` steps in a row; the last
            good checkpoint is kept.
    """
    cfg = _dry_run(cfg) if dry_run else cfg
    dd = _dist_setup(cfg.device)
    try:
        return _train(cfg, Path(data), Path(out), resume, dd)
    finally:
        if dd.owned:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, data_dir: Path, out: Path, resume: bool, dd: _Dist) -> dict:
    device = _device(cfg, dd)
    store = SliceStore.open(data_dir)
    host_data, info = load_train_data(store, cfg)
    spec = _spec(cfg, store, host_data, info)
    if cfg.loss == "wgan-gp" and cfg.compile:
        raise ConfigError("train.compile: not supported with loss wgan-gp (double backward)")
    torch.manual_seed(cfg.seed + dd.rank)  # distinct noise per process, same init after DDP
    random.seed(cfg.seed + dd.rank)
    np.random.seed(cfg.seed + dd.rank)
    trainer = Trainer(spec, cfg, device, distributed=dd.world > 1)
    data = host_data.to(_data_device(host_data, device))
    data_rng = torch.Generator(device=data.images.device).manual_seed(cfg.seed * 1000 + dd.rank)
    ckpt_path = out / CHECKPOINT_FILE
    if resume:
        state = load_checkpoint(ckpt_path)
        _check_resumable(state, cfg, info.fingerprint, ckpt_path)
        trainer.load_state_dict(state)
        rngs = state["rng"]
        if len(rngs) == dd.world:  # same number of processes: the exact random sequence
            _set_rng_state(rngs[dd.rank], data_rng)
    elif dd.main:
        out.mkdir(parents=True, exist_ok=True)
        _clean(out)
    if dd.world > 1:
        dist.barrier()
    run = _Run(cfg, spec, trainer, data, info, store, out, dd, data_rng)
    return run.loop(_batches(data, cfg, device, data_rng), resume)


class _Run:
    """The loop around :meth:`Trainer.step`: logs, grids, checkpoints, the divergence guard."""

    def __init__(self, cfg: TrainConfig, spec: DCGANSpec, trainer: Trainer, data: TrainData,
                 info: DataInfo, store: SliceStore, out: Path, dd: _Dist,
                 data_rng: torch.Generator) -> None:  # fmt: skip
        self.cfg, self.spec, self.trainer, self.data, self.info = cfg, spec, trainer, data, info
        self.store, self.out, self.dd, self.data_rng = store, out, dd, data_rng
        self.device = trainer.device
        self.fixed = _fixed_inputs(spec, cfg.seed, self.device)
        counts = torch.bincount(data.labels.cpu(), minlength=max(1, spec.n_classes)).float()
        self.class_probs = counts if spec.n_classes else None
        self.last_good = -1  # step of the last checkpoint written
        self._sampler_cache: tuple[int, Generator] | None = None
        # Host syncs cost GPU throughput: check finiteness every few steps there, every step
        # on the CPU where it is free.
        self.check_every = 1 if self.device.type == "cpu" else min(10, cfg.divergence_patience)

    def loop(self, next_batch: Callable[[], tuple[Tensor, Tensor]], resumed: bool) -> dict:
        cfg, trainer = self.cfg, self.trainer
        start = trainer.step_count
        live = self._live(resumed)
        bad = torch.zeros((), device=self.device)  # consecutive non-finite steps
        acc = torch.zeros(len(METRICS), device=self.device)
        n_acc, t0, last = 0, time.perf_counter(), None
        images_per_s = 0.0
        with self._progress() as (progress, task):
            progress.update(task, completed=start)
            while trainer.step_count < cfg.steps:
                m = trainer.step(next_batch)
                finite = torch.isfinite(m).all()
                bad = torch.where(finite, torch.zeros_like(bad), bad + 1)
                acc += torch.where(finite, m, torch.zeros_like(m))
                n_acc += 1
                step = trainer.step_count
                if step % self.check_every == 0 or step == cfg.steps:
                    self._guard(int(bad.item()), m, step)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    last = (acc / max(1, n_acc)).tolist()  # the one host sync of a log window
                    dt = time.perf_counter() - t0
                    images_per_s = n_acc * cfg.batch_size * cfg.n_critic * self.dd.world / dt
                    self._log(live, step, last, images_per_s)
                    progress.update(task, losses=self._describe(last))
                    acc.zero_()
                    n_acc, t0 = 0, time.perf_counter()
                if self.dd.main and (step % cfg.sample_every == 0 or step == cfg.steps):
                    self._grid(live, step)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    self._checkpoint(step)
                progress.update(task, completed=step)
        final = trainer.step_count
        if self.dd.world > 1:
            _check_replicas(trainer.g)
        if self.dd.main:
            self._finish(final)
            if live is not None:
                live.end()
        values = dict(zip(METRICS, last or [float("nan")] * len(METRICS), strict=True))
        return {"steps": final, "started_at": start, **values, "images_per_s": images_per_s,
                "model_dir": str(self.out), "world_size": self.dd.world}  # fmt: skip

    # -- pieces of the loop

    def _guard(self, bad: int, m: Tensor, step: int) -> None:
        if bad < self.cfg.divergence_patience:
            return
        values = ", ".join(f"{k}={v:.4g}" for k, v in zip(METRICS, m.tolist(), strict=True))
        kept = (
            f"the last good checkpoint (step {self.last_good}) is kept in "
            f"{self.out / CHECKPOINT_FILE}"
            if self.last_good >= 0
            else "no checkpoint had been written yet"
        )
        raise DivergenceError(
            f"training diverged at step {step}: losses not finite for {bad} steps in a row "
            f"({values}); {kept}. Lower lr_g/lr_d, or try loss: hinge"
        )

    def _checkpoint(self, step: int) -> None:
        # A state with non-finite weights is never saved over a good one.
        ok = all(torch.isfinite(p).all() for p in self.trainer.g.parameters())
        ok = ok and all(torch.isfinite(p).all() for p in self.trainer.d.parameters())
        rng = _rng_state(self.data_rng)
        rngs = [rng]
        if self.dd.world > 1:
            rngs = [None] * self.dd.world
            dist.all_gather_object(rngs, rng)
        if not ok or not self.dd.main:
            return
        meta = {"config": self.cfg.model_dump(), "spec": self.spec.to_dict(),
                "fingerprint": self.info.fingerprint, "world_size": self.dd.world}  # fmt: skip
        save_checkpoint(self.out / CHECKPOINT_FILE, self.trainer, rngs, meta)
        self._save_generator(step)
        self.last_good = step

    def _sampler(self) -> Generator:
        """The recalibrated EMA generator of the current step (grid and save share it)."""
        step = self.trainer.step_count
        if self._sampler_cache is None or self._sampler_cache[0] != step:
            self._sampler_cache = (step, self.trainer.sampling_generator(self.class_probs))
        return self._sampler_cache[1]

    def _save_generator(self, step: int) -> None:
        g = self._sampler()
        extra = {
            "class_names": self.info.class_names if self.spec.n_classes else [],
            "label_names": self.info.label_names,
            "mask_label_ids": self.info.mask_label_ids,
            "spacing": self.store.meta.get("spacing", [1.0, 1.0]),
            "window": self.store.meta.get("window"),
            "slice_store": {"fingerprint": self.info.fingerprint,
                            "n_slices": len(self.data), "size": self.spec.image_size},
            "train_patients": self.info.patients,
            "steps": step,
            "train_config": self.cfg.model_dump(),
            "world_size": self.dd.world,
        }  # fmt: skip
        save_generator(self.out, g, self.spec, extra)

    def _grid(self, live: Any, step: int) -> None:
        from PIL import Image

        g = self._sampler()
        image = Image.fromarray(_fixed_grid(g, *self.fixed))
        if live is not None:
            live.log_image(f"grid/{step:06d}.png", image)

    def _finish(self, step: int) -> None:
        g = self._sampler()
        _samples_figure(self.out / "samples.png", g, self.data, self.info, self.cfg.seed)

    def _live(self, resumed: bool) -> Any:
        if not self.dd.main:
            return None
        from dvclive import Live

        # dvcyaml=None: the pipeline's own dvc.yaml declares the plots (live/plots/metrics).
        return Live(dir=str(self.out / "live"), resume=resumed, save_dvc_exp=False, dvcyaml=None)

    def _log(self, live: Any, step: int, values: list[float], images_per_s: float) -> None:
        if live is None:
            return
        live.step = step
        for k, v in zip(METRICS, values, strict=True):
            live.log_metric(f"train/{k}", v)
        live.log_metric("train/lr_g", self.trainer.opt_g.param_groups[0]["lr"])
        live.log_metric("train/lr_d", self.trainer.opt_d.param_groups[0]["lr"])
        live.log_metric("train/images_per_s", images_per_s)
        live.make_summary()

    @staticmethod
    def _describe(values: list[float]) -> str:
        return "  ".join(f"{k} {v:.3f}" for k, v in zip(METRICS, values, strict=True))

    @contextlib.contextmanager
    def _progress(self) -> Iterator[tuple[Any, Any]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"), transient=True, disable=not self.dd.main,
        )  # fmt: skip
        with progress:
            yield progress, progress.add_task("train", total=self.cfg.steps, losses="")


def print_summary(summary: dict[str, Any]) -> None:
    """Print a run's summary as a rich table on stderr (the first process only)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"trained {summary['steps']} steps -> {summary['model_dir']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key in (*METRICS, "images_per_s", "world_size"):
        value = summary[key]
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(stderr=True).print(table)


def _check_replicas(g: nn.Module) -> None:
    """DDP keeps replicas equal; a mismatch would mean rank 0 saved a model others never had."""
    flat = torch.cat([p.detach().flatten().double() for p in g.parameters()])
    mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device)).sum()])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    if not torch.allclose(mine, ref, rtol=1e-9, atol=1e-9):
        raise RuntimeError("DDP replicas of the generator disagree after training")
