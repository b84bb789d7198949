"""Preprocess speed and memory: augment's stage against a straightforward loop, side by side.

Run: ``python benchmarks/bench_preprocess.py [--patients 16] [--scale 10] [--workers 2]``

For the demo data set (``augment phantoms``, 16 patients) and one ``--scale`` times larger, it
times, each in a fresh child process (so peak memory is that run's alone):

- ``reference-dicom``: per-file ``pydicom.dcmread`` + rescale, slices sorted by position, then a
  Python loop windowing and resizing each slice with ``skimage.transform.resize``;
- ``reference-nifti``: MONAI ``LoadImage`` per volume, then the same per-slice loop;
- ``augment-dicom`` / ``augment-nifti``: :func:`augment.preprocessing.stage.preprocess` with 1 and
  ``--workers`` workers, writing a real SliceStore.

It prints input slices per second, the ratio to the reference of the same format, and the peak
resident memory (``ru_maxrss`` of the child and its own children).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

SIZE = 64


def make_data(root: Path, patients: int) -> Path:
    """Write a phantom data set (DICOM, NIfTI, labels.csv) of ``patients`` patients."""
    from augment.config import PhantomsConfig
    from augment.phantoms.stage import make_phantoms

    out = root / f"phantoms-{patients}"
    if not out.exists():
        make_phantoms(PhantomsConfig(patients=patients, seed=0), out)
    return out


def _resize_loop(volume: Any, low: float, high: float) -> int:
    """The straightforward per-slice loop: window, then resize with anti-aliasing."""
    import numpy as np
    from skimage.transform import resize

    out = []
    for z in range(volume.shape[0]):
        s = np.clip((volume[z] - low) / (high - low) * 2 - 1, -1, 1)
        out.append(resize(s, (SIZE, SIZE), anti_aliasing=True, preserve_range=True))
    return len(out)


def reference_dicom(data: Path) -> int:
    import numpy as np
    import pydicom

    n = 0
    for folder in sorted(p for p in (data / "dicom").iterdir() if p.is_dir()):
        slices = []
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            slices.append((float(ds.ImagePositionPatient[2]), hu))
        volume = np.stack([s for _, s in sorted(slices, key=lambda t: t[0])])
        n += _resize_loop(volume, -160.0, 240.0)
    return n


def reference_nifti(data: Path) -> int:
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    n = 0
    for path in sorted((data / "nifti" / "imagesTr").glob("*.nii.gz")):
        volume = load(str(path)).numpy().transpose(2, 1, 0)  # (Z, Y, X)
        n += _resize_loop(volume, -160.0, 240.0)
    return n


def run_augment(data: Path, fmt: str, workers: int) -> int:
    from augment.config import PreprocessConfig
    from augment.preprocessing.stage import preprocess

    cfg = PreprocessConfig(size=SIZE, workers=workers, labels_from="csv", min_body_fraction=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        meta = preprocess(
            cfg, [data / fmt], Path(tmp) / "slices", labels_csv=data / "labels.csv",
            key_file=_key(Path(tmp)),
        )  # fmt: skip
    return int(meta["n_slices"])


def _key(tmp: Path) -> Path:
    path = tmp / "bench.key"
    path.write_text("00" * 32)
    return path


_IMPORTS = {
    "reference_dicom": ("pydicom", "skimage.transform"),
    "reference_nifti": ("monai.transforms", "skimage.transform"),
    "run_augment": ("augment.preprocessing.stage",),
}


def _warm_imports(fn_name: str) -> None:
    """Import what a run needs (and only that, so peak memory is the run's own)."""
    import importlib
    import warnings

    warnings.filterwarnings("ignore")
    for module in _IMPORTS[fn_name]:
        importlib.import_module(module)


def _child(queue: mp.Queue, fn_name: str, args: tuple) -> None:
    import contextlib
    import io

    fn = globals()[fn_name]
    _warm_imports(fn_name)  # import time is a fixed cost, not throughput: keep it out of the timing
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the stage's summary table
        n = fn(*args)
    seconds = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put((n, seconds, max(own, kids) / 1024))  # ru_maxrss is in KiB on Linux


def measure(fn_name: str, *args: Any) -> tuple[int, float, float]:
    """Run ``fn_name(*args)`` in a fresh process: (slices, seconds, peak RSS MiB)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn_name, args))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench(data: Path, workers: int) -> list[dict[str, Any]]:
    rows = []
    for fmt in ("dicom", "nifti"):
        n, ref_s, ref_mem = measure(f"reference_{fmt}", data)
        rows.append(_row(f"reference-{fmt}", n, ref_s, ref_s, ref_mem))
        for w in sorted({1, workers}):
            n_aug, s, mem = measure("run_augment", data, fmt, w)
            assert n_aug == n, f"expected {n} slices, got {n_aug}"
            rows.append(_row(f"augment-{fmt} ({w} worker{'s' * (w > 1)})", n, s, ref_s, mem))
    return rows


def _row(name: str, n: int, seconds: float, ref_seconds: float, mem: float) -> dict[str, Any]:
    return {
        "run": name,
        "slices": n,
        "seconds": seconds,
        "slices_per_s": n / seconds,
        "vs_reference": ref_seconds / seconds,
        "peak_mib": mem,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=16, help="demo size (patients)")
    parser.add_argument("--scale", type=int, default=10, help="the larger set is this many times")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="keep generated data here")
    args = parser.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, data under {root}")
    cols = ("patients", "run", "slices", "s", "slices/s", "x ref", "peak MiB")
    print("{:>8} {:<28} {:>7} {:>7} {:>9} {:>6} {:>9}".format(*cols))
    for patients in sorted({args.patients, args.patients * args.scale}):
        data = make_data(root, patients)
        for r in bench(data, args.workers):
            print(
                f"{patients:>8} {r['run']:<28} {r['slices']:>7} {r['seconds']:>7.2f} "
                f"{r['slices_per_s']:>9.1f} {r['vs_reference']:>6.2f} {r['peak_mib']:>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
