"""Render docs/images/phantom_slices.png: axial slices of the demo phantoms.

Usage: python docs/make_figures.py [--out docs/images/phantom_slices.png] [--seed 0]

A 2 x 4 grid in the abdominal window (W400/L40): lesion patients at their largest lesion
section (lesion outline in colour), normal patients at several levels (lung bases, liver,
kidneys, lower abdomen).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from augment.config import PhantomsConfig  # noqa: E402
from augment.phantoms.generate import Phantom, generate_phantom, lesion_patients  # noqa: E402

WINDOW = (40.0, 400.0)  # level, width: abdomen


def _windowed(hu: np.ndarray) -> np.ndarray:
    level, width = WINDOW
    return np.clip((hu - (level - width / 2)) / width, 0, 1)


def _pick(cfg: PhantomsConfig, n: int = 8) -> list[tuple[Phantom, int, str]]:
    """Four lesion sections and four levels of normal patients."""
    sick = sorted(lesion_patients(cfg))
    well = [i for i in range(cfg.patients) if i not in sick]
    out = []
    for i in sick[: n // 2]:
        ph = generate_phantom(cfg, i, lesion=True)
        k = int(np.argmax(ph.mask.reshape(ph.mask.shape[0], -1).sum(1)))
        out.append((ph, k, "lesion"))
    levels = [0.95, 0.75, 0.5, 0.2]
    for j, i in enumerate(well[: n - len(out)]):
        ph = generate_phantom(cfg, i, lesion=False)
        out.append((ph, round(levels[j % 4] * (cfg.slices - 1)), "normal"))
    return out


def render(cfg: PhantomsConfig, out: Path) -> Path:
    """Draw the grid and save it as a PNG.

    Args:
        cfg: the phantom parameters (the defaults of params.yaml).
        out: the PNG path.

    Returns:
        The path written.
    """
    picks = _pick(cfg)
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.6), dpi=80, layout="constrained")
    for ax, (ph, k, kind) in zip(axes.ravel(), picks, strict=False):
        ax.imshow(_windowed(ph.image[k]), cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        if ph.mask[k].any():
            ax.contour(ph.mask[k], levels=[0.5], colors=["#ff3b30"], linewidths=1.0)
        ax.set_title(f"{ph.patient}  z={k}  {kind}", fontsize=9)
        ax.axis("off")
    fig.suptitle("augment phantoms: axial slices, abdomen window W400/L40", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main() -> None:
    """Parse the options and render the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/phantom_slices.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(render(PhantomsConfig(seed=args.seed), args.out))


if __name__ == "__main__":
    main()
