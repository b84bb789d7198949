"""Benchmark of ``augment sample``: the whole command vs a plain per-file nibabel loop.

Both run as subprocesses (start-up included) on the same demo-sized model (the spec that
``augment train`` builds from params.yaml; random seeded weights, speed does not depend on
training), one after the other in the same run, so the ratio holds even on a noisy shared
machine. Peak memory is each child's ru_maxrss (``os.wait4``) for n and for 10 x n, to show
that memory stays flat as n grows.

Usage::

    python benchmarks/bench_sample.py                     # n = 5000, memory at 5000 and 50000
    python benchmarks/bench_sample.py --n 500 --n-memory 5000 --cores 0,1
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch

from augment.config import PreprocessConfig, TrainConfig, load
from augment.contracts.model_dir import save_generator
from augment.nets.dcgan import DCGANSpec, Generator

# The reference: what a user would write by hand; the same generator, batch by batch, one
# nib.save per image and per label, no threads, no manifest.
REFERENCE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import nibabel as nib, numpy as np, torch
    from augment.contracts.model_dir import load_generator
    model, out, n, bs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    g, info = load_generator(model, "cpu")
    (out / "imagesTr").mkdir(parents=True); (out / "labelsTr").mkdir()
    affine = np.diag([-info.spacing[1], -info.spacing[0], 1.0, 1.0])
    torch.manual_seed(0)
    with torch.inference_mode():
        for start in range(0, n, bs):
            b = min(bs, n - start)
            y = torch.randint(0, info.spec.n_classes, (b,)) if info.spec.n_classes else None
            images, masks = info.split(g(torch.randn(b, info.spec.nz), y))
            for k in range(b):
                case = f"syn_{start + k:06d}"
                img = nib.Nifti1Image(images[k, 0].T[:, :, None], affine)
                nib.save(img, out / "imagesTr" / f"{case}_0000.nii.gz")
                nib.save(nib.Nifti1Image(masks[k].T[:, :, None], affine),
                         out / "labelsTr" / f"{case}.nii.gz")
    """
)


def demo_spec(params: Path) -> DCGANSpec:
    """The spec ``augment train`` builds from the demo's params.yaml (masks: background, lesion)."""
    train = load(TrainConfig, "train", params)
    size = load(PreprocessConfig, "preprocess", params).size
    return DCGANSpec(
        image_size=size, mask_channels=2, n_classes=2 if train.conditional else 0, nz=train.nz,
        ngf=train.ngf, ndf=train.ndf, projection=train.projection,
    )  # fmt: skip


def make_model(root: Path, spec: DCGANSpec) -> Path:
    """A model directory with the demo's spec and random (seeded) weights."""
    torch.manual_seed(0)
    extra = {
        "class_names": ["normal", "lesion"] if spec.n_classes else [],
        "label_names": {"background": 0, "lesion": 1},
        "spacing": [2.8, 2.8],
        "window": {"kind": "abdomen", "center": 40.0, "width": 400.0, "low": -160.0, "high": 240.0},
    }
    save_generator(root, Generator(spec), spec, extra)
    return root


def timed(cmd: list[str], cores: str | None) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS of the child in MiB)."""
    if cores:
        cmd = ["taskset", "-c", cores, *cmd]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def augment_cmd(model: Path, out: Path, n: int, fmt: str, bs: int) -> list[str]:
    """The ``augment sample`` command line (through ``python -m augment``)."""
    params = os.devnull  # no params file: defaults and options only
    return [
        sys.executable, "-m", "augment", "sample", "--n", str(n), "--model", str(model),
        "--out", str(out), "--format", fmt, "--batch-size", str(bs), "--device", "cpu",
        "--params", str(params),
    ]  # fmt: skip


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument(
        "--n-memory",
        type=int,
        default=50_000,
        help="the large-n memory run (0: skip the memory runs)",
    )
    parser.add_argument("--memory-format", default="npz", choices=["npz", "png", "nnunet"])
    parser.add_argument("--formats", nargs="+", default=["nnunet", "png"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--cores", default=None, help="taskset core list, e.g. 0,1")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="demo params")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sample-") as tmp:
        root = Path(tmp)
        spec = demo_spec(args.params)
        model = make_model(root / "model", spec)
        ref_cmd = [sys.executable, "-c", REFERENCE, str(model), str(root / "ref"), str(args.n),
                   str(args.batch_size)]  # fmt: skip
        ref_s, ref_mb = timed(ref_cmd, args.cores)
        rows.append(("plain loop (nibabel per file)", args.n, ref_s, ref_mb, 1.0))
        for fmt in args.formats:
            cmd = augment_cmd(model, root / f"out-{fmt}", args.n, fmt, args.batch_size)
            wall, mb = timed(cmd, args.cores)
            rows.append((f"augment sample --format {fmt}", args.n, wall, mb, ref_s / wall))
        for n in (args.n, args.n_memory) if args.n_memory > 0 else ():
            out = root / f"mem-{n}"
            wall, mb = timed(augment_cmd(model, out, n, args.memory_format, args.batch_size),
                             args.cores)  # fmt: skip
            rows.append((f"augment sample --format {args.memory_format}", n, wall, mb, None))
    cpus = len(os.sched_getaffinity(0)) if not args.cores else len(args.cores.split(","))
    print(f"\n{cpus} CPU cores, torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    print(f"model: {spec}")
    print("| command | n | wall (s) | peak RSS (MiB) | speed-up vs plain loop |")
    print("|---|---:|---:|---:|---:|")
    for name, n, wall, mb, ratio in rows:
        speed = "" if ratio is None else f"{ratio:.2f}x"
        print(f"| {name} | {n} | {wall:.1f} | {mb:.0f} | {speed} |")


if __name__ == "__main__":
    main()
