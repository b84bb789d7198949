"""Which torch device a stage runs on."""

from __future__ import annotations

from typing import TypeVar

import torch

from augment.errors import ConfigError

M = TypeVar("M", bound=torch.nn.Module)


def to_device(module: M, device: torch.device | None, memory_format: torch.memory_format) -> M:
    """``module.to(device, memory_format=...)``: documented, but not in torch's overloads.

    ``torch.channels_last`` pays on the CPU too: oneDNN's convolutions run faster in it (2-3x
    for the GAN's transposed convolutions, 10-20% for the downstream classifier and UNet).
    """
    return module.to(device, memory_format=memory_format)  # type: ignore[call-overload]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for, but no CUDA device is available")
    return device
