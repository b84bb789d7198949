"""The training data of a run: the chosen train patients' slices, masks and labels.

The slices are read once into tensors (optionally moved to the GPU whole); batches are uniform
draws with replacement, so a run's data position is just its random generator's state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from augment.config import TrainConfig
from augment.contracts.slice_store import SliceStore, train_patients
from augment.errors import StoreError


@dataclass
class TrainData:
    """The training slices, held where the step reads them from.

    Attributes:
        images: (N, C, S, S) float16 in [-1, 1].
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
        x = self.images[idx].to(device, non_blocking=True).float()  # (B, C, S, S)
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
    images = np.ascontiguousarray(store.images[idx])  # (N, C, S, S) float16
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


def batches(data: TrainData, cfg: TrainConfig, device: torch.device, rng: torch.Generator
             ) -> Callable[[], tuple[Tensor, Tensor]]:  # fmt: skip
    """A function that returns the next (B, C, S, S) batch and its (B,) labels.

    Draws are with replacement: no epoch bookkeeping to checkpoint, and the generator's state
    alone resumes the exact sequence. With ``balance_classes`` every class is drawn equally
    often (rare lesion slices then fill half of a two-class batch).
    """
    n = len(data)
    weights = None
    if cfg.balance_classes:
        labels = data.labels.to(rng.device)
        counts = torch.bincount(labels).float()
        weights = (1.0 / counts)[labels]  # (N,)

    def next_batch() -> tuple[Tensor, Tensor]:
        if weights is None:
            idx = torch.randint(n, (cfg.batch_size,), generator=rng, device=rng.device)
        else:
            idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=rng)
        return data.batch(idx, device)

    return next_batch
