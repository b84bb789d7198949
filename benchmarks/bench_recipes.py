"""Training recipes measured against steps: conditional consistency, FID, KID, precision, recall.

Three commands (issue #12's recipe table and frontier in docs/benchmarks.md)::

    # one candidate: the train section of params.yaml with changes, scored every 100 steps
    python benchmarks/bench_recipes.py run --store data/slices --runs /tmp/recipes \\
        --name grow16 --seed 0 --set grow_from=16 --set grow_steps=200
    # the table: per run, the snapshot the FID rule keeps within a step budget, next to the
    # real-vs-real baseline (512 validation slices against the judge's training reference)
    python benchmarks/bench_recipes.py table --store data/slices --runs /tmp/recipes --budget 1000
    # the curves of every run as one figure, and as CSV
    python benchmarks/bench_recipes.py plot --runs /tmp/recipes --out docs/figures/recipes.png

Validation slices make the baseline (never test slices: the recipe is chosen on these numbers).
The validation split holds fewer lesion slices than 256, so the baseline takes all of them and
fills the 512 with normal slices; the judge's samples are half lesion, half normal.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from augment.config import TrainConfig
from augment.contracts.slice_store import SliceStore
from augment.evaluation.fidelity.fid import fid
from augment.evaluation.fidelity.kid import kid
from augment.evaluation.fidelity.prdc import prdc
from augment.nets.features import RandomFeatures, extract_features
from augment.training.data import load_train_data
from augment.training.snapshots import PRDC_K, SnapshotJudge
from augment.training.stage import _spec, train

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
MEASURES = ("fid", "kid", "precision", "recall")


def _config(seed: int, changes: dict[str, Any]) -> TrainConfig:
    base = yaml.safe_load(PARAMS.read_text())["train"]
    base.update(seed=seed, threads=1, device="cpu", fidelity_every=100, **changes)
    return TrainConfig(**base)


def run(args: argparse.Namespace) -> None:
    changes = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = Path(args.runs) / f"{args.name}-s{args.seed}"
    start = time.time()
    train(_config(args.seed, {"overwrite": True, **changes}), Path(args.store), out)
    record = json.loads((out / "config.json").read_text())["fidelity"]
    record.update(wall_s=round(time.time() - start), changes=changes)
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(f"{args.name} seed {args.seed}: {record['wall_s']} s, kept step {record['best_step']}")


def baseline(store_dir: Path, seed: int) -> dict[str, float]:
    """Real-vs-real: 512 validation slices against the judge's reference of ``seed``."""
    store = SliceStore.open(store_dir)
    cfg = _config(seed, {})
    data, info = load_train_data(store, cfg)
    judge = SnapshotJudge.build(data, info, store, _spec(cfg, store, data, info), 512, seed)
    idx = store.indices("val")
    labels = store.labels(idx)
    rng = np.random.default_rng(seed)
    lesion = idx[labels == 1][:256]
    normal = rng.choice(idx[labels == 0], 512 - len(lesion), replace=False)
    images = store.images[np.sort(np.r_[lesion, normal])].astype(np.float32)  # (512, C, S, S)
    feats = extract_features(RandomFeatures(), images)
    found = prdc(judge.reference, feats, PRDC_K)
    return {"fid": fid(judge.reference, feats), "kid": kid(judge.reference, feats, seed)[0],
            "precision": found["precision"], "recall": found["recall"]}  # fmt: skip


def _records(runs: Path) -> list[tuple[str, int, dict[str, Any]]]:
    out = []
    for path in sorted(runs.glob("*.json")):
        name, seed = path.stem.rsplit("-s", 1)
        out.append((name, int(seed), json.loads(path.read_text())))
    return out


def _keep(curve: list[dict], budget: int, floor: float) -> tuple[dict, bool]:
    """The snapshot train's judge keeps within ``budget`` steps (its rule, ``select_min_match``).

    The judge's selection needs only the scored entries, so its other fields are placeholders.
    """
    judge = SnapshotJudge(None, None, 0, 0, None, 1, np.zeros((1, 1)), float("nan"),  # type: ignore[arg-type]
                          min_match=floor)  # fmt: skip
    for h in curve:
        if h["step"] <= budget and np.isfinite(h["fid"]):
            judge.keep(h)
    return next(h for h in curve if h["step"] == judge.best_step), judge.best_met_floor


def table(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    records = _records(Path(args.runs))
    base = {s: baseline(Path(args.store), s) for s in sorted({s for _, s, _ in records})}
    for s, b in base.items():
        print(f"baseline seed {s}: " + ", ".join(f"{k} {v:.4g}" for k, v in b.items()))
    print(f"\nwithin {args.budget} steps" + (f", floor {args.floor}" if args.floor else ""))
    print(
        "| setting | seed | kept step | lesion-class match | normal with a lesion | contrast "
        "ratio | FID (× baseline) | KID (×) | precision | recall |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, seed, rec in records:
        h, met = _keep(rec["curve"], args.budget, args.floor)
        match, b = h["consistency"]["match"], base[seed]
        ratio = h["consistency"].get("contrast_ratio")
        ratio_s = "-" if ratio is None or not np.isfinite(ratio) else f"{ratio:.2f}"
        fid_s = f"{h['fid']:.2f} ({h['fid'] / b['fid']:.1f}×)"
        kid_s = f"{h['kid']:.4f} ({h['kid'] / b['kid']:.0f}×)"
        print(f"| {name} | {seed} | {h['step']:,} | {match['lesion']:.2f} | "
              f"{1 - match['normal']:.2f} | {ratio_s} | {fid_s} | {kid_s} | "
              f"{h['precision']:.2f} | {h['recall']:.3f} |"
              + ("" if met else " (no snapshot met the floor)"))  # fmt: skip


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = _records(Path(args.runs))
    panels = [*MEASURES, "lesion-class match", "contrast ratio"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    colours = {n: f"C{i}" for i, n in enumerate(dict.fromkeys(n for n, _, _ in records))}
    if args.store:  # issue #12's targets (FID, KID: x the real-vs-real baseline of seed 0)
        b = baseline(Path(args.store), 0)
        targets = {
            "fid": 1.5 * b["fid"], "kid": 3 * b["kid"], "precision": b["precision"],
            "recall": b["recall"], "lesion-class match": 0.95, "contrast ratio": 0.7,
        }  # fmt: skip
        for ax, m in zip(axes.flat, panels, strict=True):
            ax.axhline(targets[m], color="k", lw=0.8, ls=":", label="target / real baseline")
    rows = []
    for name, seed, rec in records:
        steps = [h["step"] for h in rec["curve"]]
        values = {m: [h.get(m, np.nan) for h in rec["curve"]] for m in MEASURES}
        values["lesion-class match"] = [h["consistency"]["match"]["lesion"] for h in rec["curve"]]
        values["contrast ratio"] = [h["consistency"].get("contrast_ratio") or np.nan
                                    for h in rec["curve"]]  # fmt: skip
        style = "-" if seed == 0 else "--"
        for ax, m in zip(axes.flat, panels, strict=True):
            ax.plot(steps, values[m], style, lw=1, color=colours[name], label=f"{name} s{seed}")
        for i, step in enumerate(steps):
            rows.append({"setting": name, "seed": seed, "step": step,
                         **{m: values[m][i] for m in panels}})  # fmt: skip
    for ax, m in zip(axes.flat, panels, strict=True):
        ax.set_title(m, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        if m in ("fid", "kid"):
            ax.set_yscale("log")
    axes.flat[0].legend(fontsize=7, ncol=2)
    fig.suptitle("Snapshots of the EMA generator every 100 steps (solid: seed 0, dashed: seed 1)"
                 + ("; dotted: issue #12's target or the real-vs-real value" if args.store
                    else ""), fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    with open(Path(args.out).with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one candidate")
    r.add_argument("--store", required=True)
    r.add_argument("--runs", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", action="append", default=[], help="train key=value (YAML value)")
    t = sub.add_parser("table", help="the kept snapshot of every run, beside the baseline")
    t.add_argument("--store", required=True)
    t.add_argument("--runs", required=True)
    t.add_argument("--budget", type=int, default=1000)
    t.add_argument("--floor", type=float, default=0.0, help="select_min_match")
    g = sub.add_parser("plot", help="every run's curves as PNG and CSV")
    g.add_argument("--runs", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--store", help="draw the targets (needs the store for the baseline)")
    args = p.parse_args(argv)
    {"run": run, "table": table, "plot": plot}[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
