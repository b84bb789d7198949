"""``augment phantoms``: the embedded demo data set, written atomically."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from rich.progress import Progress
from rich.table import Table

from augment.config import PhantomsConfig
from augment.io.atomic import atomic_dir
from augment.parallel import process_pool, worker_count
from augment.phantoms.generate import generate_phantom, lesion_patients
from augment.phantoms.writers import dataset_json, write_dicom_series, write_nifti_case


def make_phantoms(cfg: PhantomsConfig, out: Path) -> dict[str, Any]:
    """Generate the demo data set and write it atomically to ``out``.

    Args:
        cfg: the phantom parameters.
        out: the output directory; replaced whole when the run succeeds.

    Returns:
        A summary: output path, patients, lesion/normal counts, lesions, formats, shape
        (Z, Y, X), spacing (z, y, x) in mm, files written and seconds taken.
    """
    start = time.perf_counter()
    out = Path(out)
    sick = lesion_patients(cfg)
    rows: list[tuple[str, str]] = []
    n_lesions = 0
    with atomic_dir(out) as tmp, Progress(transient=True) as progress, _pool(cfg) as pool:
        task = progress.add_task("phantoms", total=cfg.patients)
        make = partial(_make_patient, cfg, tmp, frozenset(sick))
        for patient, label, lesions in (pool.map if pool else map)(make, range(cfg.patients)):
            rows.append((patient, label))
            n_lesions += lesions
            progress.advance(task)
        if "nifti" in cfg.formats:
            doc = dataset_json([p for p, _ in rows], cfg)
            (tmp / "nifti" / "dataset.json").write_text(json.dumps(doc, indent=2) + "\n")
            # The Decathlon layout has imagesTs/ (nnU-Net's MSD converter asserts it); the note
            # keeps the empty folder through git and DVC, which track files only.
            (tmp / "nifti" / "imagesTs").mkdir()
            (tmp / "nifti" / "imagesTs" / "README.txt").write_text(
                "The phantoms have no test images: every case is in imagesTr/ (see dataset.json).\n"
            )
        with open(tmp / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["patient", "class"])
            writer.writerows(rows)
        files = sum(1 for p in tmp.rglob("*") if p.is_file())
    n_sick = sum(1 for _, c in rows if c == "lesion")
    return {
        "out": str(out),
        "patients": cfg.patients,
        "lesion_patients": n_sick,
        "normal_patients": cfg.patients - n_sick,
        "lesions": n_lesions,
        "formats": list(cfg.formats),
        "shape": [cfg.slices, cfg.size, cfg.size],
        "spacing_mm": [cfg.slice_thickness, cfg.pixel_spacing, cfg.pixel_spacing],
        "files": files,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _make_patient(
    cfg: PhantomsConfig, tmp: Path, sick: frozenset[int], i: int
) -> tuple[str, str, int]:
    # Each patient depends only on (cfg.seed, i) and writes files of its own: any order works.
    ph = generate_phantom(cfg, i, lesion=i in sick)
    if "dicom" in cfg.formats:
        write_dicom_series(ph, tmp / "dicom", cfg.seed)
    if "nifti" in cfg.formats:
        write_nifti_case(ph, tmp / "nifti")
    return ph.patient, ph.label, len(ph.lesions)


@contextmanager
def _pool(cfg: PhantomsConfig) -> Iterator[ProcessPoolExecutor | None]:
    workers = worker_count(cfg.workers, cfg.patients)
    if workers <= 1:
        yield None
        return
    with process_pool(workers) as pool:
        yield pool


def summary_table(summary: dict[str, Any]) -> Table:
    """A rich table of :func:`make_phantoms`'s summary, for the command line."""
    table = Table(title="augment phantoms", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        text = " x ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(key.replace("_", " "), text)
    return table
