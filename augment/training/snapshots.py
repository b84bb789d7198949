"""Choosing the model by fidelity: score the EMA generator during training, keep the best.

GAN quality does not rise steadily with steps (StudioGAN's own DCGAN reaches its best FID at
42k of 200k steps and ends 2.8x worse; on the demo, snapshot-to-snapshot swings were as large
as recipe effects). Every ``train.fidelity_every`` steps the sampling generator draws a fixed,
class-balanced set of samples; their FID on the fixed random features against the training
patients' slices (never val or test patients) and their conditional consistency
(:mod:`augment.training.consistency`) are logged, and the snapshot with the lowest FID becomes
the model directory's generator; with ``train.select_min_match`` above 0, the lowest FID among
the snapshots whose every class's mask agreement reaches it (until one does, the lowest FID of
all stands in, and the record says no snapshot met the floor). The resumable checkpoint always
holds the last step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from augment.contracts.slice_store import SliceStore
from augment.evaluation.fidelity.fid import fid
from augment.evaluation.fidelity.kid import kid
from augment.evaluation.fidelity.prdc import prdc
from augment.nets.dcgan import DCGANSpec, Generator
from augment.nets.features import RandomFeatures, extract_features
from augment.training import consistency
from augment.training.data import DataInfo, TrainData

REFERENCE_SLICES = 2000  # training slices the FID is measured against (a seeded subset)
PRDC_K = 5  # neighbours of the curve's precision and recall (evaluate's default k)


def lesion_rule(store: SliceStore, info: DataInfo) -> tuple[list[int] | None, int]:
    """(lesion label ids, min lesion pixels) of the store: what makes a slice a lesion slice."""
    params = store.meta.get("params") or {}
    ids = params.get("lesion_labels") if isinstance(params, dict) else None
    min_pixels = int(params.get("min_lesion_pixels", 1)) if isinstance(params, dict) else 1
    if ids is None:
        ids = [i for i in info.mask_label_ids if i != 0]
    return [int(i) for i in ids], max(1, min_pixels)


@dataclass
class SnapshotJudge:
    """Scores snapshots of a run and remembers the best one.

    Attributes:
        history: one entry per scored step: step, FID, KID, precision, recall, per-class
            match, contrast ratio.
        best_step: the step of the lowest FID so far (-1 before the first score).
    """

    spec: DCGANSpec
    info: DataInfo
    n_samples: int
    seed: int
    lesion_ids: list[int] | None
    min_pixels: int
    reference: np.ndarray  # (M, D) features of training slices
    real_contrast: float
    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = -1
    best_fid: float = float("inf")
    min_match: float = 0.0  # the consistency floor a kept snapshot must meet (0: FID alone)
    best_met_floor: bool = False

    @classmethod
    def build(
        cls,
        data: TrainData,
        info: DataInfo,
        store: SliceStore,
        spec: DCGANSpec,
        n: int,
        seed: int,
        min_match: float = 0.0,
    ) -> SnapshotJudge:
        """Reference features and real lesion contrast from the run's training slices."""
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.permutation(len(data))[: min(len(data), REFERENCE_SLICES)])
        images = data.images[torch.from_numpy(pick)].float().cpu().numpy()  # (M, 1, S, S)
        reference = extract_features(RandomFeatures(), images)
        lesion_ids, min_pixels = lesion_rule(store, info)
        real_contrast = float("nan")
        if data.masks is not None:
            lut = np.asarray(info.mask_label_ids, np.uint8)
            masks = lut[data.masks[torch.from_numpy(pick)].cpu().numpy()]  # (M, S, S) label ids
            real_contrast = consistency.lesion_contrast(images, masks, lesion_ids, min_pixels)
        return cls(spec, info, n, seed, lesion_ids, min_pixels, reference, real_contrast,
                   min_match=min_match)  # fmt: skip

    def samples(self, g: Generator) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """A fixed, class-balanced draw: images (n, C, S, S), label-id masks, classes."""
        device = next(g.parameters()).device
        gen = torch.Generator().manual_seed(self.seed + 104729)  # apart from training noise
        z = torch.randn(self.n_samples, self.spec.nz, generator=gen)
        k = max(1, self.spec.n_classes)
        y = torch.arange(self.n_samples) % k
        with torch.no_grad():
            out = g(z.to(device), y.to(device) if self.spec.n_classes else None).float().cpu()
        c = self.spec.channels
        images = out[:, :c].clamp(-1, 1).numpy()
        masks = None
        if self.spec.mask_channels:
            lut = np.asarray(self.info.mask_label_ids, np.uint8)
            masks = lut[out[:, c:].max(dim=1).indices.numpy()]
        return images, masks, y.numpy()

    def score(self, g: Generator, step: int) -> tuple[dict[str, Any], bool]:
        """Score a snapshot; returns its entry and whether it is the best so far."""
        images, masks, classes = self.samples(g)
        entry: dict[str, Any] = {"step": step}
        if not np.isfinite(images).all():
            entry["fid"] = float("nan")
            self.history.append(entry)
            return entry, False
        feats = extract_features(RandomFeatures(), images)
        entry["fid"] = round(fid(self.reference, feats), 5)
        # The curve's other fidelity measures (logged, not selected on): KID, and PRDC's
        # precision (samples on the real manifold) and recall (the real manifold covered).
        entry["kid"] = round(kid(self.reference, feats, self.seed)[0], 6)
        found_prdc = prdc(self.reference, feats, PRDC_K)
        entry.update({name: round(found_prdc[name], 4) for name in ("precision", "recall")})
        if masks is not None and self.spec.n_classes:
            names = self.info.class_names or [str(i) for i in range(self.spec.n_classes)]
            found = consistency.measure(
                images, masks, classes, names, self.lesion_ids, self.min_pixels, self.real_contrast
            )
            entry["consistency"] = found.to_dict()
        self.history.append(entry)
        return entry, self.keep(entry)

    def meets_floor(self, entry: dict[str, Any]) -> bool:
        """Every class's mask agreement is at least ``min_match`` (always, when none is set)."""
        match = (entry.get("consistency") or {}).get("match")
        if self.min_match <= 0 or not match:
            return True
        return all(v is not None and v >= self.min_match for v in match.values())

    def keep(self, entry: dict[str, Any]) -> bool:
        """Whether a scored snapshot becomes the model: the lowest FID among those meeting the
        floor; before any has met it, the lowest FID of all."""
        met = self.meets_floor(entry)
        lower = entry["fid"] < self.best_fid
        better = (met and (lower or not self.best_met_floor)) or (
            not met and not self.best_met_floor and lower
        )
        if better:
            self.best_fid, self.best_step, self.best_met_floor = entry["fid"], entry["step"], met
        return better

    def record(self) -> dict[str, Any]:
        """What ``config.json`` keeps: the curve, the chosen step and its consistency."""
        best = next((h for h in self.history if h["step"] == self.best_step), {})
        return {
            "selected_by": "fid on fixed random features vs training slices"
            + (
                f", among snapshots with mask agreement >= {self.min_match}"
                if self.min_match
                else ""
            ),
            "met_floor": self.best_met_floor,
            "best_step": self.best_step,
            "best_fid": self.best_fid if np.isfinite(self.best_fid) else None,
            "consistency": best.get("consistency"),
            "curve": self.history,
        }
