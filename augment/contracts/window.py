"""The intensity window: how the data's units map to the models' [-1, 1], in one spelling.

Preprocess chooses it (a CT preset, an explicit window, or per-volume percentiles) and writes it
into the SliceStore's ``meta.json``; training copies it into the model's ``config.json``;
sampling writes synthetic files back in the data's units through it, and reading a synthetic
set maps them to [-1, 1] again. Everything reads and writes it through :class:`Window`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from augment.errors import StoreError

# CT windows (centre, width) in HU, as radiology viewers preset them.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
}
PERCENTILE = "percentile"
EXPLICIT = "explicit"


@dataclass(frozen=True)
class Window:
    """[-1, 1] <-> ``[low, high]`` in the data's units.

    Attributes:
        kind: a CT preset name, ``"explicit"``, or ``"percentile"`` (a range per volume: the
            data set then has no common units, and [-1, 1] stays as it is).
        low: the value that maps to -1.
        high: the value that maps to +1.
        units: ``"HU"`` for CT, ``""`` when the units are unknown or arbitrary.
        percentiles: the (low, high) percentiles of a percentile window.
    """

    kind: str
    low: float = -1.0
    high: float = 1.0
    units: str = ""
    percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"expected a finite window with low < high, got {self.low}, {self.high}"
            )

    @classmethod
    def preset(cls, kind: str, center: float, width: float, units: str = "") -> Window:
        """The window of centre ``center`` and width ``width`` (a viewer's preset)."""
        return cls(kind, center - width / 2, center + width / 2, units)

    @property
    def center(self) -> float:
        """The value of 0 in the models' range."""
        return (self.low + self.high) / 2

    @property
    def width(self) -> float:
        """The span of [-1, 1] in the data's units."""
        return self.high - self.low

    def to_unit_range(self, values: np.ndarray, clip: bool = True) -> np.ndarray:
        """The data's units -> [-1, 1], float32; with ``clip``, values outside are clipped."""
        if not clip:
            shifted = np.asarray(values, np.float32) - np.float32(self.center)
            return (shifted / np.float32(self.width / 2)).astype(np.float32)
        out = np.clip(values, self.low, self.high).astype(np.float32)
        out -= self.low
        out *= 2.0 / (self.high - self.low)
        out -= 1.0
        return np.clip(out, -1.0, 1.0, out=out)

    def to_units(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] -> the data's units, float32."""
        return (x * np.float32(self.width / 2) + np.float32(self.center)).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The one spelling written to ``meta.json``, ``config.json`` and ``synthetic.json``."""
        out: dict[str, Any] = {"kind": self.kind, "units": self.units}
        if self.kind == PERCENTILE:
            out["percentiles"] = list(self.percentiles or ())
        else:
            out.update(center=self.center, width=self.width, low=self.low, high=self.high)
        return out

    @classmethod
    def from_dict(cls, value: Any, where: str) -> Window:
        """Read :meth:`to_dict`'s spelling.

        Args:
            value: the ``window`` entry of a JSON file.
            where: the file, for the message.

        Raises:
            StoreError: not a window of this spelling.
        """
        try:
            kind = str(value["kind"])
            if kind == PERCENTILE:
                lo, hi = value.get("percentiles") or (0.0, 100.0)
                return cls(kind, units=str(value.get("units", "")), percentiles=(lo, hi))
            low, high = float(value["low"]), float(value["high"])
            if not (np.isfinite([low, high]).all() and high > low):
                raise ValueError("expected finite low < high")
            units = value.get("units")
            if units is None:  # written before the units were recorded: CT presets are HU
                units = "HU" if kind in CT_PRESETS or low < -100 else ""
            return cls(kind, low, high, str(units))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"{where}: expected a window {{kind, low, high, units}} with finite low < high, "
                f"got {str(value)[:120]}"
            ) from exc
