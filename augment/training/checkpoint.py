"""The resumable state of a run: every RNG, checkpoints on disk, and the resumption check."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from augment.config import TrainConfig
from augment.errors import ConfigError, StoreError
from augment.io.atomic import atomic_file

if TYPE_CHECKING:
    from augment.training.step import Trainer

# Options that may differ between a run and its resumption; any other change is a new run.
RESUMABLE_CHANGES = frozenset(
    {"steps", "log_every", "sample_every", "checkpoint_every", "device", "threads", "compile",
     "divergence_patience", "overwrite"}
)  # fmt: skip


def run_key(cfg: TrainConfig, fingerprint: str, world: int) -> str:
    """What makes two runs the same run: the data, the processes and every non-resumable option.

    An interrupted run's state is kept under this key (``train --state-dir``), so a rerun picks it
    up only when it would have trained the same model; ``steps`` and the other resumable options
    may change in between.
    """
    fixed = {k: v for k, v in cfg.model_dump().items() if k not in RESUMABLE_CHANGES}
    text = json.dumps({"config": fixed, "data": fingerprint, "world": world}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_state(data_rng: torch.Generator) -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and lists (loadable with weights_only)."""
    numpy_state = np.random.get_state(legacy=True)
    if not isinstance(numpy_state, tuple):  # a dict only if the global RNG is not MT19937
        raise RuntimeError("expected numpy's global RNG to be MT19937, got another bit generator")
    keys, pos, has_gauss, cached = numpy_state[1:]
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "data": data_rng.get_state(),
    }  # fmt: skip


def set_rng_state(state: dict[str, Any], data_rng: torch.Generator) -> None:
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


def check_resumable(state: dict[str, Any], cfg: TrainConfig, fingerprint: str, path: Path) -> None:
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
