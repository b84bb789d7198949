"""A synthetic set on disk: its bookkeeping files and what reading it back gives.

``augment sample`` (:mod:`augment.sampling.stage`) writes the set in one of the registered
formats (:mod:`augment.sampling.formats`); :func:`augment.sampling.read.load_synthetic` reads it
back through ``manifest.csv`` and ``synthetic.json``, whatever the format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MANIFEST = "manifest.csv"  # one row per sample: case, files, class, seed, noise index, checksum
META = "synthetic.json"  # format, window, class and label names, counts, the model's checksum


@dataclass
class SyntheticSet:
    """A synthetic set read back.

    Attributes:
        images: (N, C, S, S) float32 in [-1, 1] (the model's output range).
        classes: (N,) int64 class ids (-1 when the model is unconditional).
        masks: (N, S, S) uint8 label ids, or None.
        rows: manifest rows (case, file, label_file, class, seed, noise_index, model_sha256...).
        class_names: the model's class names.
    """

    images: np.ndarray
    classes: np.ndarray
    masks: np.ndarray | None
    rows: list[dict[str, str]]
    class_names: list[str]
