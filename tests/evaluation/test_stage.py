"""The gain experiment and the stage on tiny arrays: fairness, honesty, the memorisation gate."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.config import ARMS, EvaluateConfig
from augment.contracts.slice_store import SliceStore, SliceStoreWriter
from augment.errors import AugmentError, StoreError
from augment.evaluation import experiment as gx
from augment.evaluation import stage as ev
from augment.evaluation.tasks import classification

S = 16
CPU = torch.device("cpu")


def _slice(label: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy disc; lesion slices (label 1) carry a bright spot."""
    yy, xx = np.mgrid[:S, :S] / S
    img = np.where((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < rng.uniform(0.08, 0.16), 0.0, -0.9)
    if label:
        cx, cy = rng.uniform(0.35, 0.65, 2)
        img = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 0.01, 0.8, img)
    return np.clip(img + rng.normal(0, 0.05, img.shape), -1, 1).astype(np.float32)


def _split(n_patients: int, per: int, seed: int, tag: str) -> gx.Split:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(per) % 2, n_patients)
    images = np.stack([_slice(int(c), rng) for c in labels])[:, None]  # (n, 1, S, S)
    patients = np.repeat([f"SECRET-{tag}-{i}" for i in range(n_patients)], per)
    return gx.Split(images, labels.astype(np.int64), patients)


def _data(synthetic: str = "good", seed: int = 0) -> gx.ExperimentData:
    train, val, test = (
        _split(4, 10, seed, "tr"),
        _split(2, 10, seed + 1, "va"),
        _split(5, 8, seed + 2, "te"),  # 5 patients: enough to call a gain significant
    )
    rng = np.random.default_rng(seed + 3)
    if synthetic == "copy":
        syn, syn_y = train.images.copy(), train.labels.copy()
    elif synthetic == "noise":
        syn = rng.uniform(-1, 1, (60, 1, S, S)).astype(np.float32)
        syn_y = rng.integers(0, 2, 60)
    else:
        syn_y = np.arange(60) % 2
        syn = np.stack([_slice(int(c), rng) for c in syn_y])[:, None]
    return gx.ExperimentData(train, val, test, syn, syn_y.astype(np.int64), ["normal", "lesion"])


def _cfg(**kw) -> EvaluateConfig:
    # The toy patients are noisy copies of one disc: near-duplicates only above 0.999 here.
    base = dict(
        seeds=2,
        steps=20,
        batch_size=16,
        bootstrap=100,
        memorisation_threshold=0.2,
        near_duplicate_corr=0.999,
    )
    return EvaluateConfig(**{**base, **kw})


def test_every_arm_trains_on_exactly_the_gan_patients_and_never_on_val_or_test(
    monkeypatch,
) -> None:
    data = _data()
    seen: list[tuple[np.ndarray, bool]] = []
    real_train = classification.train_classifier

    def spy(train, val, *args, **kwargs):
        seen.append((train.images.copy(), args[3]))  # args: n_classes, cfg, seed, classic, device
        assert val is data.val  # val is used for model selection only
        return real_train(train, val, *args, **kwargs)

    monkeypatch.setattr(classification, "train_classifier", spy)
    gain = gx.gain_experiment(
        data, _cfg(seeds=1, steps=10, workers=1, arms=list(ARMS)), CPU
    )  # spy sees all
    n = len(data.train.labels)
    held = np.concatenate([data.val.images, data.test.images]).reshape(-1, S * S)
    for images, _ in seen:
        assert np.array_equal(images[:n], data.train.images)  # the same real slices
        flat = images.reshape(len(images), 1, -1)
        assert not (flat == held[None]).all(axis=2).any()  # no val/test slice
    sizes = [len(images) for images, _ in seen]
    assert sizes == [n, n, n + gain.n_synthetic, n + gain.n_synthetic]
    assert gain.n_synthetic == n  # synthetic_ratio 1


def test_test_split_never_influences_training_or_model_selection() -> None:
    clean = _data()
    poisoned = _data()
    poisoned.test.images[:] = np.nan  # would break any training or selection that saw it
    cfg = _cfg(seeds=1, steps=20)
    a = gx.gain_experiment(clean, cfg, CPU)
    b = gx.gain_experiment(poisoned, cfg, CPU)
    assert a.val_curves == b.val_curves and a.best_epoch == b.best_epoch
    assert np.isfinite(a.probs["real"]).all() and np.isnan(b.probs["real"]).all()


def test_same_seed_same_results_and_seeds_are_paired_across_arms() -> None:
    data, cfg = _data(), _cfg(seeds=2, steps=10)
    a, b = gx.gain_experiment(data, cfg, CPU), gx.gain_experiment(data, cfg, CPU)
    for arm in a.arms:
        assert np.array_equal(a.probs[arm], b.probs[arm])
    assert not np.array_equal(a.probs["real"][0], a.probs["real"][1])
    assert a.seeds == [0, 1]


def test_worker_processes_give_the_same_models_as_one_process() -> None:
    data, cfg = _data(), _cfg(seeds=2, steps=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker runs
    try:
        alone = gx.gain_experiment(data, cfg.model_copy(update={"workers": 1}), CPU)
    finally:
        torch.set_num_threads(threads)
    forked = gx.gain_experiment(data, cfg.model_copy(update={"workers": 2}), CPU)
    for arm in alone.arms:
        assert np.array_equal(alone.probs[arm], forked.probs[arm]), arm
    assert alone.val_curves == forked.val_curves


def test_gains_are_paired_differences_of_arm_means() -> None:
    data = _data()
    gain = gx.gain_experiment(data, _cfg(), CPU)
    g = gain.gains["real_synthetic_vs_real"]["auc"]
    means = {a: np.mean(gain.per_seed[a]["auc"]) for a in ("real_synthetic", "real")}
    assert g.value == pytest.approx(means["real_synthetic"] - means["real"])
    assert g.low <= g.value <= g.high
    assert gain.arms == ["real", "real_classic", "real_synthetic"]  # the default arms
    assert set(gain.gains) == {
        "real_classic_vs_real", "real_synthetic_vs_real", "real_synthetic_vs_real_classic"
    }  # fmt: skip


def test_every_arm_asked_for_is_trained_and_compared() -> None:
    gain = gx.gain_experiment(_data(), _cfg(seeds=1, arms=list(reversed(ARMS))), CPU)
    assert gain.arms == list(ARMS)  # in the canonical order, whatever order they were asked in
    assert set(gain.gains) == {f"{a}_vs_{b}" for a, b in gx.COMPARISONS}


@pytest.mark.parametrize("arms", [["real"], ["real_synthetic"], ["real", "real", "real_synthetic"]])
def test_arms_without_the_headline_pair_are_refused(arms: list[str]) -> None:
    with pytest.raises(ValueError, match="including real and real_synthetic"):
        EvaluateConfig(arms=arms)


def test_noise_generator_has_large_fid_and_no_gain(tmp_path: Path) -> None:
    summary = ev.run(_data("noise"), _cfg(seeds=2, steps=20), CPU, {}, None, tmp_path / "r")
    fid = summary["fidelity"]
    assert fid["synthetic"]["fid"] > 5 * fid["baseline"]["fid"]
    assert fid["synthetic"]["precision"] < fid["baseline"]["precision"]
    task = summary["tasks"]["classification"]
    gain = task["gain"]["real_synthetic_vs_real"]
    assert not (gain["auc_significant"] and gain["auc"] > 0)
    assert summary["synthetic_helps"] is False
    assert task["verdict"]["verdict"] in ("cannot tell", "hurts", "did not learn")
    assert summary["memorisation"]["passed"] is True
    report = (tmp_path / "r" / "report.html").read_text()
    assert html.escape(task["verdict"]["text"]) in report


def test_copying_generator_fails_the_gate_after_writing_the_report(tmp_path: Path) -> None:
    out = tmp_path / "reports"
    with pytest.raises(AugmentError, match="memorisation check failed"):
        ev.run(_data("copy"), _cfg(seeds=1, steps=10), CPU, {}, None, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["memorisation_passed"] is False
    assert metrics["copy_rate"] == 1.0
    assert "Memorisation check FAILED" in (out / "report.html").read_text()


def test_outputs_are_complete_self_contained_and_free_of_patient_keys(tmp_path: Path) -> None:
    logs = {"loss_g": [(0.0, 2.0), (10.0, 1.5)], "loss_d": [(0.0, 0.7), (10.0, 0.6)]}
    model = tmp_path / "model"
    tsv = model / "live" / "plots" / "metrics" / "train" / "loss_g.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("timestamp\tstep\tloss_g\n1\t0\t2.0\n2\t10\t1.5\n")
    out = tmp_path / "reports"
    ev.run(_data(), _cfg(), CPU, logs, model, out, fraction=0.5)
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {
        "metrics.json",
        "metrics_detail.json",
        "report.html",
        "plots/gain_classification.csv",
        "plots/train/train/loss_g.tsv",
    } <= names
    assert {f"plots/roc/{a}.csv" for a in EvaluateConfig().arms} <= names
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and 'src="http' not in page
    for path in out.rglob("*"):
        if path.is_file():
            assert "SECRET" not in path.read_text(errors="ignore"), path
    metrics = json.loads((out / "metrics_detail.json").read_text())
    task = metrics["tasks"]["classification"]
    assert metrics["fraction"] == 0.5 and list(task["arms"]) == EvaluateConfig().arms
    assert set(task["floors"]) == {"intensity_share", "mean_intensity", "body_share",
                                   "linear_probe"}  # fmt: skip
    assert set(metrics["tasks"]) == {"classification"}  # the toy store has no masks
    headline = json.loads((out / "metrics.json").read_text())
    assert (
        len(headline) <= 8 and headline["classification"]["verdict"] == task["verdict"]["verdict"]
    )
    assert not list(tmp_path.glob(".reports*"))  # the temporary directory is gone


def test_unconditional_synthetic_set_skips_the_synthetic_arms() -> None:
    data = _data()
    data.synthetic_labels[:] = -1
    gain = gx.gain_experiment(data, _cfg(seeds=1, steps=10), CPU)
    assert gain.arms == ["real", "real_classic"] and gain.notes


def test_read_training_logs_tolerates_absence(tmp_path: Path) -> None:
    assert ev.read_training_logs(tmp_path / "nothing") == {}
    root = tmp_path / "live" / "plots" / "metrics"
    root.mkdir(parents=True)
    (root / "loss_d.tsv").write_text("timestamp\tstep\tloss_d\n5\t0\t0.7\n6\t50\t0.4\n")
    (root / "empty.tsv").write_text("")
    assert ev.read_training_logs(tmp_path) == {"loss_d": [(0.0, 0.7), (50.0, 0.4)]}


# --------------------------------------------------------------------------- with a store


def _store(tmp_path: Path) -> SliceStore:
    rng = np.random.default_rng(0)
    rows, images = [], []
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for p in range(n):
            for z in range(4):
                rows.append(
                    {
                        "patient": f"{split}{p}",
                        "source": "x",
                        "z": z,
                        "label": z % 2,
                        "split": split,
                    }
                )
                images.append(_slice(z % 2, rng))
    with SliceStoreWriter(tmp_path / "slices", size=S, with_masks=False) as w:
        w.add(np.stack(images), None, rows)
        w.meta["class_names"] = ["normal", "lesion"]
    return SliceStore.open(tmp_path / "slices")


def test_check_fairness_rejects_leaks_and_other_subsets(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ev.check_fairness(store, ["train0", "train1"], ["train0", "train1"])
    ev.check_fairness(store, None, ["train0"])
    with pytest.raises(StoreError, match="val/test"):
        ev.check_fairness(store, ["train0", "test1"], ["train0"])
    with pytest.raises(StoreError, match="train.fraction"):
        ev.check_fairness(store, ["train0", "train2"], ["train0", "train1"])


class _Syn:
    def __init__(self, images, classes, class_names):
        self.images, self.classes, self.class_names = images, classes, class_names
        self.masks = None
        self.rows: list[dict] = []  # a hand-made set: no manifest, so no model checksum


def test_experiment_data_takes_only_the_gan_patients_and_maps_class_names(tmp_path) -> None:
    store = _store(tmp_path)
    syn = _Syn(
        np.zeros((6, 1, S, S), np.float32), np.array([0, 1, 0, 1, -1, 0]), ["lesion", "normal"]
    )
    data = ev.experiment_data(store, ["train0", "train2"], syn)
    assert set(data.train.patients) == {"train0", "train2"} and len(data.train.labels) == 8
    assert set(data.test.patients) == {"test0", "test1"}
    assert list(data.synthetic_labels) == [1, 0, 1, 0, -1, 1]  # by name, not by position
    with pytest.raises(StoreError, match="shape"):
        ev.experiment_data(store, ["train0"], _Syn(np.zeros((2, 1, 8, 8)), [0, 1], []))
    with pytest.raises(StoreError, match="tumour"):
        ev.experiment_data(store, ["train0"], _Syn(syn.images, syn.classes, ["normal", "tumour"]))


def _model_dir(tmp_path: Path, patients: list[str], fraction: float = 1.0) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    config = {"spec": {}, "train_patients": patients, "train_config": {"fraction": fraction}}
    (model / "config.json").write_text(json.dumps(config))
    return model


def test_stage_fails_on_a_model_trained_on_test_patients(tmp_path: Path, monkeypatch) -> None:
    store = _store(tmp_path)
    model = _model_dir(tmp_path, ["train0", "train1", "train2", "test0"])
    monkeypatch.setattr("augment.evaluation.stage.load_synthetic", lambda p: pytest.fail("read"))
    with pytest.raises(StoreError, match="val/test"):
        ev.evaluate(_cfg(), store.root, model, tmp_path / "syn", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_copying_generator_exits_1_with_the_report_written(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from augment.cli import app

    store = _store(tmp_path)
    train_idx = store.indices("train")
    copies = _Syn(np.asarray(store.images[train_idx], np.float32), store.labels(train_idx), [])
    monkeypatch.setattr("augment.evaluation.stage.load_synthetic", lambda p: copies)
    model = _model_dir(tmp_path, store.patients("train"))
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {seeds: 1, steps: 10, bootstrap: 100, batch_size: 8}\n")
    out = tmp_path / "reports"
    args = ["evaluate", "--data", str(store.root), "--model", str(model), "--synthetic"]
    args += [str(tmp_path / "syn"), "--out", str(out), "--params", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "memorisation check failed" in result.output
    assert (out / "report.html").is_file()
    assert json.loads((out / "metrics_detail.json").read_text())["fraction"] == 1.0


def test_synthetic_set_of_another_model_is_refused(tmp_path: Path) -> None:
    model = _model_dir(tmp_path, ["train0"])
    (model / "generator.safetensors").write_bytes(b"weights of this model")
    from augment.contracts.model_dir import sha256_file

    own = sha256_file(model / "generator.safetensors")
    config = json.loads((model / "config.json").read_text())
    ev.check_provenance(model, config, [{"model_sha256": own}] * 3, tmp_path / "syn")
    with pytest.raises(StoreError, match="another model"):
        ev.check_provenance(model, config, [{"model_sha256": "0" * 64}], tmp_path / "syn")


def test_one_subject_under_several_patient_ids_is_reported_as_leakage(tmp_path: Path) -> None:
    # Held-out "patients" that are the training patients again (a one-subject set, repeated
    # scans): the relative copy gate's threshold rises with them, the absolute one does not.
    data = _data("copy")
    rng = np.random.default_rng(7)
    for split in (data.val, data.test):
        twin = data.train.images[rng.integers(0, len(data.train.images), len(split.images))]
        split.images[:] = np.clip(twin + rng.normal(0, 0.01, twin.shape), -1, 1)
    with pytest.raises(AugmentError, match="memorisation check failed"):
        ev.run(data, _cfg(seeds=1, steps=10), CPU, {}, None, tmp_path / "r")
    detail = json.loads((tmp_path / "r" / "metrics_detail.json").read_text())
    assert detail["memorisation"]["leakage_between_splits"] is True
    assert detail["memorisation"]["leakage_rate"] > 0.9
    assert detail["tasks"]["classification"]["verdict"]["verdict"] == "leakage between splits"
    assert "near-duplicates of training slices" in (tmp_path / "r" / "report.html").read_text()


def test_distinct_patients_are_not_leakage(tmp_path: Path) -> None:
    summary = ev.run(_data(), _cfg(seeds=1, steps=10), CPU, {}, None, tmp_path / "r")
    assert summary["memorisation"]["leakage_between_splits"] is False
    assert summary["tasks"]["classification"]["verdict"]["verdict"] != "leakage between splits"
