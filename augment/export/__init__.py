"""Exports of a trained model directory for other tools: the registry (light: names and help).

An export is a function ``(model: Path, out: Path, overwrite: bool) -> dict`` (a summary) that
writes ``out`` whole or not at all. Adding one is one new module in this package plus one line
below; ``augment export --format`` accepts exactly these names.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from augment.errors import ConfigError
from augment.registry import Entry, Registry

Export = Callable[[Path, Path, bool], dict[str, Any]]

EXPORTS: Registry[Export] = Registry(
    "export format",
    {
        "monai-bundle": Entry(
            "augment.export.monai_bundle:export_monai_bundle",
            "MONAI bundle: configs/metadata.json, configs/inference.json (samples N slices), "
            "models/model.pt",
        ),
    },
)


def export(model: Path, out: Path, fmt: str = "monai-bundle", overwrite: bool = False) -> dict:
    """Export the model directory ``model`` to ``out`` in the registered format ``fmt``.

    Raises:
        ConfigError: an unknown format (the message lists the registered ones).
        StoreError: a model directory that does not check out.
        FileExistsError: ``out`` exists and ``overwrite`` is off.
    """
    try:
        EXPORTS.check(fmt)
    except ValueError as exc:
        raise ConfigError(f"--format: {exc}") from exc
    return EXPORTS.get(fmt)(Path(model), Path(out), overwrite)
