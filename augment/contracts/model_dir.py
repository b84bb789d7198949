"""The model directory: what ``augment train`` writes and ``augment sample`` needs, nothing else.

Layout:

- ``generator.safetensors``: the EMA generator's weights and batch-norm statistics;
- ``config.json``: ``spec`` (the :class:`DCGANSpec`) plus what sampling and evaluation need:
  ``class_names``, ``label_names``, ``mask_label_ids``, ``spacing``, ``window``, the slice store
  fingerprint, the steps trained, the training patients' pseudonyms;
- ``checkpoint.pt``: the resumable training state (see :mod:`augment.training.stage`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from augment.errors import StoreError
from augment.io.atomic import atomic_file
from augment.io.jsonfile import load_json
from augment.nets.dcgan import DCGANSpec, Generator
from augment.nets.device import resolve_device

GENERATOR_FILE = "generator.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class ModelInfo:
    """A loaded model directory's description.

    Attributes:
        path: the model directory.
        spec: the architecture.
        config: the whole ``config.json``.
        checksum: sha256 hex digest of ``generator.safetensors``.
        class_names: names of the generator's classes ([] if unconditional).
        label_names: mask label name -> label id ({} without masks).
        spacing: (y, x) pixel spacing in mm of the training slices.
    """

    path: Path
    spec: DCGANSpec
    config: dict[str, Any]
    checksum: str
    class_names: list[str]
    label_names: dict[str, int]
    spacing: tuple[float, float]

    @property
    def mask_label_ids(self) -> list[int]:
        """Label id of each mask channel, in channel order."""
        ids = self.config.get("mask_label_ids")
        if ids:
            return [int(i) for i in ids]
        return list(range(self.spec.mask_channels))

    def split(self, out: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Split generator output into images and label-id masks.

        Args:
            out: (B, channels + mask_channels, S, S) generator output.

        Returns:
            images float32 (B, channels, S, S) in [-1, 1]; masks uint8 (B, S, S) label ids,
            or None when the model has no mask channels.
        """
        out = out.detach().float().cpu()
        c = self.spec.channels
        images = out[:, :c].clamp(-1.0, 1.0).numpy().astype(np.float32)  # (B, c, S, S)
        if self.spec.mask_channels == 0:
            return images, None
        channel = out[:, c:].max(dim=1).indices.numpy()  # (B, S, S); argmax is ~10x slower on CPU
        lut = np.asarray(self.mask_label_ids, dtype=np.uint8)
        return images, lut[channel]


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_generator(
    model_dir: Path, generator: Generator, spec: DCGANSpec, extra: dict[str, Any]
) -> None:
    """Write ``generator.safetensors`` and ``config.json`` atomically.

    The caller passes the generator to sample from (the EMA copy, with batch-norm statistics
    recalibrated by :func:`augment.nets.dcgan.recalibrate_batchnorm`).

    Args:
        model_dir: the model directory (created if missing).
        generator: the generator whose weights and buffers are saved.
        spec: its architecture.
        extra: further config entries (class_names, label_names, spacing, window, ...).
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    with atomic_file(model_dir / GENERATOR_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "spec": json.dumps(spec.to_dict())})
    config = {**extra, "spec": spec.to_dict()}
    config["generator_sha256"] = sha256_file(model_dir / GENERATOR_FILE)
    with atomic_file(model_dir / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_config(model_dir: Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a model directory.

    Raises:
        StoreError: the directory or file is missing or not a JSON object with a spec.
    """
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise StoreError(f"{model_dir}: not a model directory, {CONFIG_FILE} is missing")
    config = load_json(path, StoreError)
    if not isinstance(config, dict) or not isinstance(config.get("spec"), dict):
        raise StoreError(f"{path}: expected a JSON object with a 'spec' entry")
    return config


def load_generator(
    model_dir: Path, device: str | torch.device = "cpu"
) -> tuple[Generator, ModelInfo]:
    """Rebuild the generator of a model directory, in eval mode on ``device``.

    Raises:
        StoreError: a file is missing, the spec is invalid, or the weights do not fit it;
            the message names the directory.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    try:
        spec = DCGANSpec.from_dict(config["spec"])
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{model_dir / CONFIG_FILE}: invalid spec: {exc}") from exc
    _check_spec_bounds(spec, model_dir / CONFIG_FILE)
    weights = model_dir / GENERATOR_FILE
    if not weights.is_file():
        raise StoreError(f"{model_dir}: not a model directory, {GENERATOR_FILE} is missing")
    checksum = sha256_file(weights)
    recorded = config.get("generator_sha256")
    if recorded is not None and recorded != checksum:
        raise StoreError(
            f"{weights}: expected the weights whose sha256 {CONFIG_FILE} records "
            f"({str(recorded)[:12]}...), got other weights ({checksum[:12]}...): the file was "
            "changed after training"
        )
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own SafetensorError on corrupt files
        raise StoreError(f"{weights}: unreadable weights ({exc})") from exc
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all())
    if bad:
        raise StoreError(f"{weights}: expected finite weights, got NaN or inf in {bad[:3]}")
    generator = Generator(spec)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise StoreError(f"{weights}: weights do not fit the spec in {CONFIG_FILE}: {exc}") from exc
    generator = generator.to(resolve_device(device) if isinstance(device, str) else device).eval()
    info = ModelInfo(
        path=model_dir,
        spec=spec,
        config=config,
        checksum=checksum,
        class_names=list(config.get("class_names", [])) if spec.n_classes else [],
        label_names={str(k): int(v) for k, v in (config.get("label_names") or {}).items()}
        if spec.mask_channels
        else {},
        spacing=_spacing(config.get("spacing")),
    )
    return generator, info


# What a trained generator of this project can have; beyond that a config.json is damaged or
# hostile, and building it would exhaust memory before any message.
SPEC_BOUNDS = {"nz": 4096, "ngf": 1024, "ndf": 1024, "channels": 16, "n_classes": 1000,
               "mask_channels": 256}  # fmt: skip


def _check_spec_bounds(spec: DCGANSpec, path: Path) -> None:
    for name, high in SPEC_BOUNDS.items():
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
            raise StoreError(
                f"{path}: expected spec.{name} an integer in [0, {high}], got {value!r}"
            )


def _spacing(value: Any) -> tuple[float, float]:
    """The model's (y, x) pixel spacing in mm; 1 mm when unrecorded.

    Raises:
        StoreError: a recorded spacing that is not two positive finite numbers.
    """
    if value is None:
        return 1.0, 1.0
    try:
        y, x = float(value[-2]), float(value[-1])
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise StoreError(
            f"expected a spacing of two numbers in {CONFIG_FILE}, got {value!r}"
        ) from exc
    if not (np.isfinite([y, x]).all() and y > 0 and x > 0):
        raise StoreError(f"expected a positive finite spacing in {CONFIG_FILE}, got {value!r}")
    return y, x
