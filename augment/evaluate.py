"""``augment evaluate``: does the synthetic data help? Gain experiment, fidelity, memorisation.

The gain experiment trains a classifier in four arms, each with several seeds paired across
arms (the same seed gives the same initial weights and batch order):

- ``real``: the GAN's real training patients only;
- ``real_classic``: the same, with classic MONAI augmentation (flips, rotations, intensity);
- ``real_synthetic``: the same real slices plus synthetic slices labelled by their class;
- ``real_classic_synthetic``: both.

Fairness: every arm gets exactly the real patients the GAN was trained on (recorded in the
model's ``config.json``); the best epoch is chosen on the val split; metrics are computed on the
test split only, with 95% intervals from a bootstrap over test patients (the same draws for every
arm and seed, so the gains are paired).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from augment import metrics
from augment.config import EvaluateConfig
from augment.errors import AugmentError, StoreError
from augment.io.atomic import atomic_dir
from augment.io.store import SliceStore
from augment.nets.classifier import RandomFeatures, build_classifier

ARMS = ("real", "real_classic", "real_synthetic", "real_classic_synthetic")
COMPARISONS = (
    ("real_classic", "real"),
    ("real_synthetic", "real"),
    ("real_classic_synthetic", "real"),
    ("real_synthetic", "real_classic"),
    ("real_classic_synthetic", "real_classic"),
)


@dataclass
class Split:
    """Slices of one split: images (n, 1, S, S) float32 in [-1, 1], labels (n,), patients (n,)."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray


@dataclass
class ExperimentData:
    """Everything the gain experiment sees; built by :func:`experiment_data` or by tests."""

    train: Split
    val: Split
    test: Split
    synthetic: np.ndarray  # (N_syn, 1, S, S) float32 in [-1, 1]
    synthetic_labels: np.ndarray  # (N_syn,) class ids; -1 when the generator is unconditional
    class_names: list[str]


@dataclass
class GainResult:
    """Outcome of the gain experiment."""

    arms: list[str]
    seeds: list[int]
    test_labels: np.ndarray  # (n_test,)
    probs: dict[str, np.ndarray]  # arm -> (n_seeds, n_test, K) test probabilities
    best_epoch: dict[str, list[int]]  # arm -> per seed
    val_curves: dict[str, list[list[float]]]  # arm -> per seed, val AUC per epoch
    per_seed: dict[str, dict[str, list[float]]]  # arm -> metric -> per seed (full test set)
    arm_ci: dict[str, dict[str, metrics.Interval]]  # arm -> metric -> mean over seeds + CI
    gains: dict[str, dict[str, metrics.Interval]]  # "a_vs_b" -> metric -> gain + CI
    n_synthetic: int
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- data


def experiment_data(
    store: SliceStore, train_patients: list[str], synthetic: Any, max_synthetic: int | None = None
) -> ExperimentData:
    """Gather the slices of the experiment from a store and a loaded synthetic set.

    Args:
        store: the slice store the GAN was trained on.
        train_patients: the GAN's training patients (all in the store's train split).
        synthetic: a :class:`augment.sample.SyntheticSet` (images, classes, class_names).
        max_synthetic: unused cap hook; None keeps every synthetic slice.

    Raises:
        StoreError: the synthetic slices do not fit the store (size, class names).
    """
    names = store.class_names
    syn_images = np.asarray(synthetic.images, np.float32)[:max_synthetic]
    if syn_images.shape[1:] != store.images.shape[1:]:
        raise StoreError(
            f"expected synthetic slices of shape {store.images.shape[1:]} like {store.root}, "
            f"got {syn_images.shape[1:]}"
        )
    classes = np.asarray(synthetic.classes, np.int64)[:max_synthetic]
    syn_names = list(synthetic.class_names or [])
    if syn_names and (classes >= 0).any():
        unknown = sorted(set(syn_names) - set(names))
        if unknown:
            raise StoreError(f"synthetic class names {unknown} are not in {store.root} ({names})")
        remap = np.array([names.index(n) for n in syn_names])
        classes = np.where(classes >= 0, remap[np.clip(classes, 0, None)], -1)
    return ExperimentData(
        train=_split(store, "train", set(train_patients)),
        val=_split(store, "val"),
        test=_split(store, "test"),
        synthetic=syn_images,
        synthetic_labels=classes,
        class_names=names,
    )


def _split(store: SliceStore, split: str, patients: set[str] | None = None) -> Split:
    idx = store.indices(split, patients)
    if len(idx) == 0:
        raise StoreError(f"{store.root}: the {split} split has no slices")
    return Split(
        images=np.asarray(store.images[idx], np.float32),
        labels=store.labels(idx),
        patients=np.array([store.rows[i]["patient"] for i in idx]),
    )


def check_fairness(store: SliceStore, recorded: list[str] | None, expected: list[str]) -> None:
    """The GAN's recorded training patients must be the expected subset of the train split.

    Raises:
        StoreError: a recorded patient is in val/test or outside the store, or the recorded list
            differs from what the train fraction gives.
    """
    held = set(store.patients("val")) | set(store.patients("test"))
    if recorded is None:
        recorded = expected
    leaked = set(recorded) & held
    if leaked:
        raise StoreError(
            f"the model was trained on {len(leaked)} val/test patient(s) of {store.root}: "
            "its evaluation would not be honest; retrain it on this store"
        )
    if sorted(recorded) != sorted(expected):
        raise StoreError(
            f"expected the model's training patients to be the {len(expected)} patients that "
            f"train.fraction selects in {store.root}, got {len(recorded)} other(s): "
            "was the model trained on another store or fraction?"
        )


# --------------------------------------------------------------------------- training


def classic_augmentation(seed: int, group: int = 8) -> Callable[[torch.Tensor], torch.Tensor]:
    """MONAI augmentation of a batch (B, 1, S, S), seeded.

    Left-right flips, rotations up to 15 degrees, intensity scaling and shifting by up to 10%:
    the changes a radiologist would call "the same image". One random draw covers a group of
    ``group`` slices (stacked as channels): MONAI's per-call overhead, not the arithmetic,
    dominates on CPU, and batches are reshuffled every epoch so the groups keep changing.
    """
    from monai.transforms import (
        Compose,
        RandFlip,
        RandRotate,
        RandScaleIntensity,
        RandShiftIntensity,
    )
    from monai.utils import convert_to_tensor

    chain = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=1),
            RandRotate(range_x=np.pi / 12, prob=0.5, padding_mode="border"),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.1, prob=0.5),
        ]
    )
    chain.set_random_state(seed)

    def apply(batch: torch.Tensor) -> torch.Tensor:
        # Plain tensors out: a MetaTensor would route every op of the network through MONAI's
        # metadata tracking and make training several times slower.
        parts = [
            convert_to_tensor(chain(batch[i : i + group, 0]), track_meta=False)  # (g, S, S)
            for i in range(0, len(batch), group)
        ]
        return torch.cat(parts)[:, None].clamp(-1, 1)  # (B, 1, S, S)

    return apply


def _predict(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).to(device)  # (b, 1, S, S)
            out.append(F.softmax(model(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out)  # (n, K)


def _val_score(y: np.ndarray, prob: np.ndarray) -> float:
    auc = float(metrics.classification_metrics(y, prob)["auc"][0])
    if np.isfinite(auc):
        return auc
    # One class only in val: fall back to the mean probability of the true class.
    return float(prob[np.arange(len(y)), y].mean()) - 1.0


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    val: Split,
    n_classes: int,
    cfg: EvaluateConfig,
    seed: int,
    classic: bool,
    device: torch.device,
    steps_per_epoch: int | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train one arm's classifier for one seed; keep the epoch with the best val AUC.

    Every arm gets the same number of optimisation steps (``steps_per_epoch`` per epoch, set
    from the real training set), so that an arm with synthetic slices does not win merely by
    being trained longer; its batches are drawn from the larger pool instead.

    Args:
        images: (n, 1, S, S) float32 training slices.
        labels: (n,) class ids.
        val: the val split (model selection only).
        n_classes: number of classes.
        cfg: epochs, batch size, learning rate, classifier name.
        seed: fixes the initial weights, batch order and augmentation draws.
        classic: apply :func:`classic_augmentation` to each batch.
        device: where to train.
        steps_per_epoch: optimisation steps between two val checks (None: one pass).

    Returns:
        The model with the best epoch's weights, and the val score of every epoch.
    """
    torch.manual_seed(seed)
    model = build_classifier(cfg.classifier, n_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    counts = np.bincount(labels, minlength=n_classes).clip(min=1)
    # Inverse-frequency weights: lesion slices are rarer, and arms differ in class balance.
    weight = torch.tensor(len(labels) / (n_classes * counts), dtype=torch.float32, device=device)
    order = torch.Generator().manual_seed(seed)
    augment = classic_augmentation(seed) if classic else None
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels)
    steps = steps_per_epoch or -(-len(labels) // cfg.batch_size)
    batches = _batches(len(labels), cfg.batch_size, order)
    best, best_state, curve = -np.inf, None, []
    for _ in range(cfg.epochs):
        model.train()
        for _ in range(steps):
            idx = next(batches)
            x = augment(x_all[idx]) if augment else x_all[idx]  # (B, 1, S, S)
            loss = F.cross_entropy(model(x.to(device)), y_all[idx].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        score = _val_score(val.labels, _predict(model, val.images, device))
        curve.append(score)
        if score > best:
            best, best_state = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model.eval(), curve


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of indices: successive permutations, cut into batches of >= 2."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) >= 2:  # batch norm needs two samples
                yield idx


def _arm_training_set(
    data: ExperimentData, arm: str, n_syn: int, rng_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.train.images, data.train.labels
    if "synthetic" not in arm:
        return images, labels
    usable = np.flatnonzero(data.synthetic_labels >= 0)
    pick = np.random.default_rng(rng_seed).choice(usable, n_syn, replace=False)
    pick.sort()
    return (
        np.concatenate([images, data.synthetic[pick]]),
        np.concatenate([labels, data.synthetic_labels[pick]]),
    )


def gain_experiment(
    data: ExperimentData, cfg: EvaluateConfig, device: torch.device, console: Console | None = None
) -> GainResult:
    """Train every arm with every seed and compare them on the test split.

    Args:
        data: the slices (see :func:`experiment_data`).
        cfg: the stage's configuration (classifier, seeds, epochs, ratio, bootstrap).
        device: where to train.
        console: where the progress bar goes (None: a default console).

    Returns:
        A :class:`GainResult` with test probabilities, per-arm summaries and paired gains.
    """
    notes = []
    usable = int((data.synthetic_labels >= 0).sum())
    n_syn = min(int(round(cfg.synthetic_ratio * len(data.train.labels))), usable)
    arms = list(ARMS)
    if usable == 0 or n_syn == 0:
        arms = ["real", "real_classic"]
        notes.append(
            "The synthetic arms were skipped: the synthetic slices carry no class "
            "(unconditional generator) or synthetic_ratio is 0."
        )
    elif n_syn < round(cfg.synthetic_ratio * len(data.train.labels)):
        notes.append(
            f"Only {usable} labelled synthetic slices were available: the synthetic arms used "
            f"a ratio of {n_syn / len(data.train.labels):.2f} instead of {cfg.synthetic_ratio}."
        )
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    n_classes = len(data.class_names)
    if not metrics.bootstrap_assessable(data.test.labels, data.test.patients, n_classes):
        notes.append(
            f"The test split is too small to call any difference significant: it needs at least "
            f"{metrics.MIN_TEST_PATIENTS} patients and every class in at least "
            f"{metrics.MIN_PATIENTS_PER_CLASS} of them; intervals are shown but no gain is marked."
        )
    steps = -(-len(data.train.labels) // cfg.batch_size)  # one real epoch, for every arm
    probs: dict[str, list[np.ndarray]] = {a: [] for a in arms}
    best_epoch: dict[str, list[int]] = {a: [] for a in arms}
    curves: dict[str, list[list[float]]] = {a: [] for a in arms}
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("gain experiment", total=len(arms) * len(seeds))
        for seed in seeds:
            for arm in arms:
                x, y = _arm_training_set(data, arm, n_syn, cfg.seed)
                model, curve = train_classifier(
                    x, y, data.val, n_classes, cfg, seed, "classic" in arm, device, steps
                )
                probs[arm].append(_predict(model, data.test.images, device))
                best_epoch[arm].append(int(np.argmax(curve)))
                curves[arm].append(curve)
                bar.advance(task)
    stacked = {a: np.stack(p) for a, p in probs.items()}  # (n_seeds, n_test, K)
    per_seed, arm_ci, gains = compare_arms(
        data.test.labels, data.test.patients, stacked, cfg.bootstrap, cfg.seed
    )
    return GainResult(
        arms=arms,
        seeds=seeds,
        test_labels=data.test.labels,
        probs=stacked,
        best_epoch=best_epoch,
        val_curves=curves,
        per_seed=per_seed,
        arm_ci=arm_ci,
        gains=gains,
        n_synthetic=n_syn if "real_synthetic" in arms else 0,
        notes=notes,
    )


def compare_arms(
    y: np.ndarray, patients: np.ndarray, probs: dict[str, np.ndarray], n_boot: int, seed: int
) -> tuple[dict, dict, dict]:
    """Per-arm metrics and paired gains with a bootstrap over test patients.

    Every arm and seed is scored on the same bootstrap draws; a draw's value for an arm is the
    mean over seeds, and a gain's draw is the difference of two arms' draws.

    Args:
        y: (n,) test labels.
        patients: (n,) test patient keys.
        probs: arm -> (n_seeds, n, K) test probabilities.
        n_boot: bootstrap draws.
        seed: seed of the draws.

    Returns:
        per_seed (arm -> metric -> list), arm_ci (arm -> metric -> Interval),
        gains ("a_vs_b" -> metric -> Interval).
    """
    weights = metrics.patient_bootstrap_weights(patients, n_boot, seed)  # (B, n)
    n_classes = next(iter(probs.values())).shape[2]
    ok = metrics.bootstrap_assessable(y, patients, n_classes)
    point, draws, per_seed = {}, {}, {}
    for arm, p in probs.items():
        full = [metrics.classification_metrics(y, ps) for ps in p]
        boot = [metrics.classification_metrics(y, ps, weights) for ps in p]
        per_seed[arm] = {m: [float(f[m][0]) for f in full] for m in metrics.CLASSIFICATION_METRICS}
        point[arm] = {m: float(np.mean(per_seed[arm][m])) for m in per_seed[arm]}
        draws[arm] = {m: np.mean([b[m] for b in boot], axis=0) for m in per_seed[arm]}
    arm_ci = {
        a: {m: metrics.interval(point[a][m], draws[a][m], assessable=ok) for m in point[a]}
        for a in probs
    }
    gains = {}
    for arm, ref in COMPARISONS:
        if arm in probs and ref in probs:
            gains[f"{arm}_vs_{ref}"] = {
                m: metrics.interval(
                    point[arm][m] - point[ref][m], draws[arm][m] - draws[ref][m], assessable=ok
                )
                for m in point[arm]
            }
    return per_seed, arm_ci, gains


# --------------------------------------------------------------------------- the stage


def _model_patients(config: dict[str, Any]) -> list[str] | None:
    value = config.get("train_patients")
    return [str(v) for v in value] if isinstance(value, list) else None


def _train_settings(config: dict[str, Any]) -> tuple[float, int]:
    """(train.fraction, train.seed) recorded in the model's config.json."""
    train_cfg = config.get("train_config")
    train_cfg = train_cfg if isinstance(train_cfg, dict) else {}
    return float(train_cfg.get("fraction", 1.0)), int(train_cfg.get("seed", 0))


def read_training_logs(model: Path) -> dict[str, list[tuple[float, float]]]:
    """dvclive scalar logs of the model directory: name -> [(step, value)]; {} when absent."""
    root = Path(model) / "live" / "plots" / "metrics"
    logs: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(root.rglob("*.tsv")) if root.is_dir() else []:
        lines = path.read_text().splitlines()
        if len(lines) < 2:
            continue
        header = lines[0].split("\t")
        if "step" not in header:
            continue
        name = str(path.relative_to(root).with_suffix(""))
        col = next((i for i, h in enumerate(header) if h not in ("step", "timestamp")), None)
        if col is None:
            continue
        step = header.index("step")
        rows = [line.split("\t") for line in lines[1:] if line.strip()]
        logs[name] = [(float(r[step]), float(r[col])) for r in rows if len(r) == len(header)]
    return logs


def evaluate(cfg: EvaluateConfig, data: Path, model: Path, synthetic: Path, out: Path) -> dict:
    """Run the gain experiment, fidelity and memorisation checks; write ``out`` atomically.

    Args:
        cfg: the stage's configuration.
        data: the SliceStore directory the model was trained on.
        model: the model directory (config.json with the training patients; live/ logs).
        synthetic: the synthetic set written by ``augment sample``.
        out: the reports directory: metrics.json, plots/, report.html.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        StoreError: an input breaks its contract or the fairness rules.
        AugmentError: the copy rate exceeds ``memorisation_threshold`` (raised after writing).
    """
    from augment.modeldir import read_config, resolve_device
    from augment.sample import load_synthetic
    from augment.train import train_patients

    if cfg.inception_weights:
        metrics.check_inception_weights(Path(cfg.inception_weights))
    started = time.perf_counter()
    store = SliceStore.open(data)
    config = read_config(model)
    fraction, seed = _train_settings(config)
    expected = train_patients(store, fraction, seed)
    check_fairness(store, _model_patients(config), expected)
    exp = experiment_data(store, expected, load_synthetic(synthetic))
    device = resolve_device(cfg.device)
    result = run(exp, cfg, device, read_training_logs(model), model, out, fraction)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def run(
    exp: ExperimentData,
    cfg: EvaluateConfig,
    device: torch.device,
    training_logs: dict[str, list[tuple[float, float]]],
    model: Path | None,
    out: Path,
    fraction: float | None = None,
) -> dict:
    """The stage on arrays: experiment, measures, outputs and the memorisation gate."""
    from augment.report import write_outputs

    console = Console(stderr=True)
    gain = gain_experiment(exp, cfg, device, console)
    net = RandomFeatures()
    feats = {
        name: metrics.extract_features(net, images)
        for name, images in (
            ("train", exp.train.images),
            ("val", exp.val.images),
            ("test", exp.test.images),
            ("synthetic", exp.synthetic),
        )
    }
    fid = metrics.fidelity(feats["train"], feats["test"], feats["synthetic"], cfg.k, cfg.seed)
    if cfg.inception_weights:
        fid["inception_fid"] = metrics.inception_fid(
            Path(cfg.inception_weights), exp.train.images, exp.test.images, exp.synthetic
        )
    held_images = np.concatenate([exp.val.images, exp.test.images])
    held_feats = np.concatenate([feats["val"], feats["test"]])
    mem = metrics.memorisation(
        (exp.synthetic, feats["synthetic"]),
        (exp.train.images, feats["train"]),
        (held_images, held_feats),
        cfg.copy_quantile,
    )
    summary = summarise(exp, cfg, gain, fid, mem, fraction)
    with atomic_dir(out) as tmp:
        write_outputs(tmp, summary, exp, gain, fid, mem, training_logs, model)
    _print_table(console, gain)
    if mem.copy_rate > cfg.memorisation_threshold:
        raise AugmentError(
            f"memorisation check failed: {mem.copy_rate:.1%} of synthetic slices are closer to a "
            f"training slice than {cfg.copy_quantile:.0%} of held-out real slices come "
            f"(threshold evaluate.memorisation_threshold = {cfg.memorisation_threshold:.1%}); "
            f"see the gallery in {out / 'report.html'}"
        )
    return summary


def summarise(
    exp: ExperimentData,
    cfg: EvaluateConfig,
    gain: GainResult,
    fid: dict,
    mem: metrics.Memorisation,
    fraction: float | None,
) -> dict[str, Any]:
    """The flat-ish dictionary of ``metrics.json``."""
    arms = {
        a: {
            **{m: round(ci.value, 4) for m, ci in gain.arm_ci[a].items()},
            **{f"{m}_std": round(float(np.std(v)), 4) for m, v in gain.per_seed[a].items()},
        }
        for a in gain.arms
    }
    gains = {
        name: {
            **{m: round(ci.value, 4) for m, ci in g.items()},
            **{f"{m}_low": round(ci.low, 4) for m, ci in g.items()},
            **{f"{m}_high": round(ci.high, 4) for m, ci in g.items()},
            **{f"{m}_significant": ci.significant for m, ci in g.items()},
        }
        for name, g in gain.gains.items()
    }
    rounded = {k: {m: round(v, 5) for m, v in d.items()} for k, d in fid.items()}
    return {
        "fraction": fraction,
        "classifier": cfg.classifier,
        "seeds": len(gain.seeds),
        "n_train_patients": int(len(set(exp.train.patients))),
        "n_test_patients": int(len(set(exp.test.patients))),
        "n_train_slices": int(len(exp.train.labels)),
        "n_test_slices": int(len(exp.test.labels)),
        "n_synthetic_used": gain.n_synthetic,
        "intervals_assessable": bool(
            metrics.bootstrap_assessable(exp.test.labels, exp.test.patients, len(exp.class_names))
        ),
        "arms": arms,
        "gain": gains,
        "fidelity": rounded,
        "memorisation": {
            **{k: round(v, 4) for k, v in mem.summary().items()},
            "threshold": cfg.memorisation_threshold,
            "passed": bool(mem.copy_rate <= cfg.memorisation_threshold),
        },
        "synthetic_helps": verdict(gain),
    }


def verdict(gain: GainResult) -> bool:
    """True only when adding synthetic data gives a significant AUC gain over real-only."""
    key = "real_synthetic_vs_real"
    return bool(key in gain.gains and gain.gains[key]["auc"].significant
                and gain.gains[key]["auc"].value > 0)  # fmt: skip


def _print_table(console: Console, gain: GainResult) -> None:
    table = Table(title="Test AUC per arm (mean over seeds, 95% CI over test patients)")
    for col in ("arm", "AUC", "95% CI", "balanced acc."):
        table.add_column(col)
    for arm in gain.arms:
        ci = gain.arm_ci[arm]["auc"]
        bal = gain.arm_ci[arm]["balanced_accuracy"].value
        table.add_row(arm, f"{ci.value:.3f}", f"[{ci.low:.3f}, {ci.high:.3f}]", f"{bal:.3f}")
    console.print(table)


def write_json(path: Path, value: Any) -> None:
    """JSON with NaN written as null (dvc and browsers reject NaN)."""
    path.write_text(json.dumps(_clean(value), indent=2) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
