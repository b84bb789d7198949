"""``augment evaluate``: does the synthetic data help? Gain experiment, fidelity, memorisation.

For each evaluation task (:mod:`augment.evaluation.tasks`: classification, segmentation), the
gain experiment (:mod:`augment.evaluation.experiment`) trains the task's model in four arms
(real, real with classic augmentation, real with synthetic slices, both) with seeds paired
across arms, scores untrained floors beside them, and :mod:`augment.evaluation.verdict` reads
the answer. This module gathers the data from the slice store and the synthetic set, checks
fairness, measures fidelity and memorisation, and writes the reports.

Fairness: every arm gets exactly the real patients the GAN was trained on (recorded in the
model's ``config.json``); model selection and thresholds use the val split; metrics are computed
on the test split only, with 95% intervals from a bootstrap over test patients and seeds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from augment.config import EvaluateConfig
from augment.contracts.model_dir import GENERATOR_FILE, read_config, sha256_file
from augment.contracts.slice_store import SliceStore, train_patients
from augment.contracts.synthetic_set import SyntheticSet
from augment.errors import StoreError
from augment.evaluation import stats
from augment.evaluation.experiment import ExperimentData, GainResult, Split, gain_experiment
from augment.evaluation.fidelity.inception import check_inception_weights, inception_fid
from augment.evaluation.fidelity.measure import fidelity
from augment.evaluation.memorisation import Memorisation, MemorisationError, memorisation
from augment.evaluation.report.outputs import write_outputs
from augment.evaluation.stats import Interval
from augment.evaluation.tasks import TASKS
from augment.evaluation.verdict import HELPS, Verdict, decide
from augment.io.atomic import atomic_dir
from augment.nets.device import resolve_device
from augment.nets.features import RandomFeatures, extract_features
from augment.sampling.read import load_synthetic

# --------------------------------------------------------------------------- data


def experiment_data(
    store: SliceStore, train_patients: list[str], synthetic: SyntheticSet
) -> ExperimentData:
    """Gather the slices of the experiment from a store and a loaded synthetic set.

    Args:
        store: the slice store the GAN was trained on.
        train_patients: the GAN's training patients (all in the store's train split).
        synthetic: the synthetic set, read back.

    Raises:
        StoreError: the synthetic slices do not fit the store (size, class names).
    """
    names = store.class_names
    syn_images = np.asarray(synthetic.images, np.float32)
    if syn_images.shape[1:] != store.images.shape[1:]:
        raise StoreError(
            f"expected synthetic slices of shape {store.images.shape[1:]} like {store.root}, "
            f"got {syn_images.shape[1:]}"
        )
    classes = np.asarray(synthetic.classes, np.int64)
    syn_names = list(synthetic.class_names or [])
    if syn_names and (classes >= 0).any():
        unknown = sorted(set(syn_names) - set(names))
        if unknown:
            raise StoreError(f"synthetic class names {unknown} are not in {store.root} ({names})")
        remap = np.array([names.index(n) for n in syn_names])
        classes = np.where(classes >= 0, remap[np.clip(classes, 0, None)], -1)
    lesion = lesion_label_ids(store)
    syn_masks = None
    if synthetic.masks is not None and store.masks is not None:
        syn_masks = _lesion_mask(np.asarray(synthetic.masks), lesion)
    return ExperimentData(
        train=_split(store, "train", lesion, set(train_patients)),
        val=_split(store, "val", lesion),
        test=_split(store, "test", lesion),
        synthetic=syn_images,
        synthetic_labels=classes,
        class_names=names,
        synthetic_masks=syn_masks,
    )


def lesion_label_ids(store: SliceStore) -> list[int] | None:
    """The mask label ids that are lesions (``preprocess.lesion_labels``; None: any non-zero)."""
    params = store.meta.get("params") or {}
    ids = params.get("lesion_labels") if isinstance(params, dict) else None
    return [int(i) for i in ids] if isinstance(ids, list) else None


def _lesion_mask(masks: np.ndarray, lesion: list[int] | None) -> np.ndarray:
    m = masks.reshape(len(masks), *masks.shape[-2:])  # (n, S, S) from (n, 1, S, S) or (n, S, S)
    hit = m > 0 if lesion is None else np.isin(m, lesion)
    return hit.astype(np.uint8)


def _split(
    store: SliceStore, split: str, lesion: list[int] | None, patients: set[str] | None = None
) -> Split:
    idx = store.indices(split, patients)
    if len(idx) == 0:
        raise StoreError(f"{store.root}: the {split} split has no slices")
    masks = None if store.masks is None else _lesion_mask(np.asarray(store.masks[idx]), lesion)
    return Split(
        images=np.asarray(store.images[idx], np.float32),
        labels=store.labels(idx),
        patients=np.array([store.rows[i]["patient"] for i in idx]),
        masks=masks,
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


def check_provenance(
    model: Path, config: dict[str, Any], rows: list[dict], synthetic: Path
) -> None:
    """The synthetic set must come from the model whose fairness was just checked.

    Otherwise a set sampled from another model (trained on other patients, perhaps this
    store's val/test patients) would enter the synthetic arms unchecked.

    Raises:
        StoreError: the manifest names another generator checksum than the model's.
    """
    weights = Path(model) / GENERATOR_FILE
    actual = sha256_file(weights) if weights.is_file() else config.get("generator_sha256")
    claimed = {str(r.get("model_sha256") or "") for r in rows} - {""}
    if actual and claimed and claimed != {actual}:
        other = sorted(claimed - {actual})[0]
        raise StoreError(
            f"{synthetic}: expected samples of the model in {model} (sha256 {actual[:12]}), "
            f"got samples of another model ({other[:12]}); sample again from this model"
        )


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
        MemorisationError: the copy rate exceeds ``memorisation_threshold`` (raised after
            writing the reports; it carries the summary).
    """
    if cfg.inception_weights:
        check_inception_weights(Path(cfg.inception_weights))
    started = time.perf_counter()
    store = SliceStore.open(data)
    config = read_config(model)
    fraction, seed = _train_settings(config)
    expected = train_patients(store, fraction, seed)
    check_fairness(store, _model_patients(config), expected)
    syn = load_synthetic(synthetic)
    check_provenance(model, config, syn.rows, synthetic)
    exp = experiment_data(store, expected, syn)
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
    net = RandomFeatures()
    feats = {
        name: extract_features(net, images)
        for name, images in (
            ("train", exp.train.images),
            ("val", exp.val.images),
            ("test", exp.test.images),
            ("synthetic", exp.synthetic),
        )
    }
    n_test = int(len(set(exp.test.patients)))
    gains = {
        name: gain_experiment(exp, cfg, device, Console(stderr=True), feats, name)
        for name in tasks_for(exp, cfg)
    }
    fid = fidelity(feats["train"], feats["test"], feats["synthetic"], cfg.k, cfg.seed, cfg.fidelity)
    if cfg.inception_weights:
        fid["inception_fid"] = inception_fid(
            Path(cfg.inception_weights), exp.train.images, exp.test.images, exp.synthetic
        )
    held_images = np.concatenate([exp.val.images, exp.test.images])
    held_feats = np.concatenate([feats["val"], feats["test"]])
    mem = memorisation(
        (exp.synthetic, feats["synthetic"]),
        (exp.train.images, feats["train"]),
        (held_images, held_feats),
        cfg.copy_quantile,
        cfg.near_duplicate_corr,
    )
    leakage = mem.leakage_rate if mem.leakage_rate > cfg.max_leakage else None
    answers = {name: decide(gain, n_test, leakage) for name, gain in gains.items()}
    summary = summarise(exp, cfg, gains, fid, mem, fraction, answers)
    with atomic_dir(out) as tmp:
        write_outputs(tmp, summary, exp, gains, fid, mem, training_logs, model, answers)
    if mem.copy_rate > cfg.memorisation_threshold:
        raise MemorisationError(
            summary,
            f"memorisation check failed: {mem.copy_rate:.1%} of synthetic slices are closer to a "
            f"training slice than {cfg.copy_quantile:.0%} of held-out real slices come "
            f"(threshold evaluate.memorisation_threshold = {cfg.memorisation_threshold:.1%}); "
            f"see the gallery in {out / 'report.html'}",
        )
    return summary


def tasks_for(exp: ExperimentData, cfg: EvaluateConfig) -> list[str]:
    """The tasks to run: ``evaluate.tasks``, or every registered task the store supports.

    Raises:
        StoreError: a task that needs masks was asked for and the store has none.
    """
    has_masks = exp.train.masks is not None
    if cfg.tasks is None:
        return [n for n in TASKS.names() if has_masks or not TASKS.get(n).needs_masks]
    for name in cfg.tasks:
        if TASKS.get(name).needs_masks and not has_masks:
            raise StoreError(
                f"evaluate.tasks: expected a slice store with masks for {name!r}, got one "
                "without (preprocess inputs with lesion masks, or drop the task)"
            )
    return list(dict.fromkeys(cfg.tasks))


def _rounded(ci: Interval) -> dict[str, float]:
    return {"value": round(ci.value, 4), "low": round(ci.low, 4), "high": round(ci.high, 4)}


def summarise(
    exp: ExperimentData,
    cfg: EvaluateConfig,
    gains: dict[str, GainResult],
    fid: dict,
    mem: Memorisation,
    fraction: float | None,
    answers: dict[str, Verdict],
) -> dict[str, Any]:
    """Everything the run measured (``metrics_detail.json``; the headline is drawn from it)."""
    rounded = {k: {m: round(v, 5) for m, v in d.items()} for k, d in fid.items()}
    first = next(iter(gains.values()))
    return {
        "fraction": fraction,
        "classifier": cfg.classifier,
        "seeds": len(first.seeds),
        "n_train_patients": int(len(set(exp.train.patients))),
        "n_test_patients": int(len(set(exp.test.patients))),
        "n_train_slices": int(len(exp.train.labels)),
        "n_test_slices": int(len(exp.test.labels)),
        "intervals_assessable": bool(
            stats.bootstrap_assessable(exp.test.labels, exp.test.patients, len(exp.class_names))
        ),
        "tasks": {name: _task_summary(gains[name], answers[name]) for name in gains},
        "fidelity": rounded,
        "memorisation": {
            **{k: round(v, 4) for k, v in mem.summary().items()},
            "threshold": cfg.memorisation_threshold,
            "passed": bool(mem.copy_rate <= cfg.memorisation_threshold),
            "leakage_between_splits": bool(mem.leakage_rate > cfg.max_leakage),
        },
        "synthetic_helps": any(a.verdict == HELPS for a in answers.values()),
    }


def _task_summary(gain: GainResult, answer: Verdict) -> dict[str, Any]:
    arms = {
        a: {
            **{m: round(ci.value, 4) for m, ci in gain.arm_ci[a].items()},
            **{f"{m}_low": round(ci.low, 4) for m, ci in gain.arm_ci[a].items()},
            **{f"{m}_high": round(ci.high, 4) for m, ci in gain.arm_ci[a].items()},
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
    return {
        "verdict": {
            "verdict": answer.verdict,
            "metric": answer.metric,
            "best_floor": answer.floor_name,
            "minimum_detectable_effect": round(answer.mde, 4),
            "text": answer.text,
        },
        "n_synthetic_used": gain.n_synthetic,
        "arms": arms,
        "floors": {n: {m: _rounded(ci) for m, ci in f.items()} for n, f in gain.floors.items()},
        "thresholds": {
            a: [None if d is None else round(float(d), 4) for d in ds]
            for a, ds in gain.decisions.items()
        },
        "gain": gains,
        "notes": list(gain.notes),
    }


def summary_table(summary: dict[str, Any], out: Path | str = "reports") -> Table:
    """A rich table of a run's headline figures, for the command line."""
    table = Table(
        title=f"augment evaluate: {summary['n_test_patients']} test patients, "
        f"{summary['seeds']} seed(s) per arm"
    )
    for col in ("task: arm / floor", "headline [95% CI]", "sd over seeds", "gain vs real [95% CI]"):
        table.add_column(col)
    texts = []
    for task, t in summary["tasks"].items():
        v = t["verdict"]
        m = v["metric"]
        table.add_row(f"[bold]{task}: {v['verdict'].upper()}[/bold]", m, "", "", end_section=False)
        for arm, values in t["arms"].items():
            g = t["gain"].get(f"{arm}_vs_real")
            gain = f"{g[m]:+.3f} [{g[f'{m}_low']:.3f}, {g[f'{m}_high']:.3f}]" if g else ""
            ci = f"{values[m]:.3f} [{values[f'{m}_low']:.3f}, {values[f'{m}_high']:.3f}]"
            table.add_row(f"  {arm}", ci, f"{values[f'{m}_std']:.3f}", gain)
        for name, values in t["floors"].items():
            f = values[m]
            table.add_row(f"  floor: {name}", f"{f['value']:.3f} [{f['low']:.3f}, {f['high']:.3f}]")
        table.add_section()
        texts.append(f"{task}: {v['text']}")
    mem = summary["memorisation"]
    gate = "passed" if mem["passed"] else "FAILED"
    table.caption = "\n".join(
        [*texts, f"Memorisation check {gate} (copy rate {mem['copy_rate']:.1%}).",
         f"Report: {Path(out) / 'report.html'}"]
    )  # fmt: skip
    return table
