"""``augment train``: dry run, resume, guards, splits, options, EMA, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.config import TrainConfig
from augment.contracts.model_dir import CHECKPOINT_FILE, CONFIG_FILE, GENERATOR_FILE, load_generator
from augment.contracts.slice_store import SliceStore, SliceStoreWriter, train_patients
from augment.errors import ConfigError, StoreError
from augment.training import data as data_mod
from augment.training import stage as train_mod
from augment.training.checkpoint import load_checkpoint
from augment.training.diffaug import diff_augment
from augment.training.loop import DivergenceError
from augment.training.losses import LOSSES
from augment.training.losses.hinge import HingeLoss
from augment.training.stage import train
from augment.training.step import Trainer

ROOT = Path(__file__).resolve().parents[2]


def make_store(
    root: Path,
    patients: int = 10,
    slices: int = 6,
    size: int = 32,
    masks: bool = True,
    poison: float | None = None,
) -> Path:
    """A SliceStore of ellipse 'bodies' with bright blob 'lesions' (label 1 when present).

    Args:
        poison: if set, every val/test pixel is this value in images.npy afterwards (NaN too).
    """
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    splits = ["train"] * (patients - 4) + ["val", "val", "test", "test"]
    with SliceStoreWriter(root, size=size, with_masks=masks) as w:
        for p in range(patients):
            imgs, msks, rows = [], [], []
            for z in range(slices):
                a, b = rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.8)
                body = (xx / a) ** 2 + (yy / b) ** 2 < 1
                img = np.where(body, 0.1 + 0.05 * rng.standard_normal(body.shape), -1.0)
                mask = body.astype(np.uint8)
                lesion = z % 2 == 1
                if lesion:
                    cy, cx = rng.uniform(-0.3, 0.3, 2)
                    blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.03
                    img = np.where(blob, 0.7, img)
                    mask[blob] = 2
                imgs.append(np.clip(img, -1, 1))
                msks.append(mask)
                rows.append(
                    {"patient": f"P{p:03d}", "source": f"p{p}.nii.gz", "z": z,
                     "label": int(lesion), "split": splits[p]}
                )  # fmt: skip
            w.add(np.stack(imgs), np.stack(msks) if masks else None, rows)
        w.meta.update(
            class_names=["normal", "lesion"],
            spacing=[1.5, 1.5],
            window={"center": 40, "width": 400},
            **({"label_ids": {"background": 0, "body": 1, "lesion": 2}} if masks else {}),
        )
    if poison is not None:
        store = SliceStore.open(root)
        held_out = store.indices("val").tolist() + store.indices("test").tolist()
        images = np.load(root / "images.npy", mmap_mode="r+")
        images[held_out] = poison
        images.flush()
        del images
    return root


def tiny(**kw) -> TrainConfig:
    base = dict(
        nz=8, ngf=8, ndf=8, steps=4, batch_size=8, log_every=2, sample_every=4,
        checkpoint_every=2, device="cpu", seed=0,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("s") / "slices")


def test_dry_run_end_to_end(store: Path, tmp_path: Path) -> None:
    summary = train(TrainConfig(device="cpu"), store, tmp_path / "m", dry_run=True)
    out = tmp_path / "m"
    assert summary["steps"] == 4 and np.isfinite(summary["loss_d"])
    for name in (GENERATOR_FILE, CONFIG_FILE, CHECKPOINT_FILE, "samples.png"):
        assert (out / name).is_file(), name
    assert list((out / "live").rglob("*.png")), "no sample grid logged"
    metrics = out / "live" / "plots" / "metrics" / "train"
    assert {p.stem for p in metrics.glob("*.tsv")} >= {"loss_d", "loss_g", "d_real", "d_fake"}
    g, info = load_generator(out)
    assert info.spec.image_size == 32 and info.spec.mask_channels == 3
    assert info.label_names == {"background": 0, "body": 1, "lesion": 2}
    assert info.class_names == ["normal", "lesion"] and info.spacing == (1.5, 1.5)
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["train_patients"] == [f"P{p:03d}" for p in range(6)]
    state = load_checkpoint(out / CHECKPOINT_FILE)  # weights_only=True inside
    assert state["step"] == 4 and len(state["rng"]) == 1


def test_cli_dry_run(store: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from augment.cli import app

    args = ["train", "--data", str(store), "--out", str(tmp_path / "m"), "--dry-run",
            "--device", "cpu", "--params", os.devnull]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m" / GENERATOR_FILE).is_file()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path / CHECKPOINT_FILE)
    return {f"{k}.{n}": t for k in ("G", "D", "G_ema") for n, t in state[k].items()}


def test_resume_matches_uninterrupted(store: Path, tmp_path: Path, monkeypatch) -> None:
    # one thread: auto picks the idle cores, which may differ between the two runs (other sums)
    cfg = tiny(steps=6, checkpoint_every=3, diffaug=["translation", "cutout", "color"], threads=1)
    train(cfg, store, tmp_path / "full")

    real_step, calls = Trainer.step, {"n": 0}

    def killed(self, next_batch):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 3, in the middle of step 5
            raise KeyboardInterrupt
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, store, tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_FILE)["step"] == 3
    monkeypatch.setattr(Trainer, "step", real_step)
    summary = train(cfg, store, tmp_path / "resumed", resume=True)
    assert summary["started_at"] == 3 and summary["steps"] == 6
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    g_full = load_generator(tmp_path / "full")[0].state_dict()
    g_resumed = load_generator(tmp_path / "resumed")[0].state_dict()
    for k in g_full:
        assert torch.equal(g_full[k], g_resumed[k]), k


def test_state_dir_resumes_an_interrupted_run_by_itself(
    store: Path, tmp_path: Path, monkeypatch
) -> None:
    """A killed run in --state-dir is picked up by a plain rerun; the result is the same model."""
    cfg = tiny(steps=6, checkpoint_every=3, threads=1)  # one thread: the same sums every run
    train(cfg, store, tmp_path / "full")
    state, out = tmp_path / "state", tmp_path / "model"
    real_step, calls = Trainer.step, {"n": 0}

    def killed(self, next_batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, store, out, state_dir=state)
    assert not out.exists()  # nothing half-made where the model goes (DVC deletes it anyway)
    (kept,) = [p for p in state.iterdir() if p.is_dir()]
    assert load_checkpoint(kept / CHECKPOINT_FILE)["step"] == 3
    monkeypatch.setattr(Trainer, "step", real_step)
    # another configuration is another run: it neither resumes nor touches the kept state
    other = train(tiny(steps=2, lr_g=1e-3, threads=1), store, tmp_path / "o", state_dir=state)
    assert other["started_at"] == 0 and kept.is_dir()
    summary = train(cfg, store, out, state_dir=state)
    assert summary["started_at"] == 3 and summary["steps"] == 6
    assert summary["model_dir"] == str(out)
    assert not kept.exists() and (state / "README.txt").is_file()
    for name in (GENERATOR_FILE, CONFIG_FILE, CHECKPOINT_FILE, "samples.png"):
        assert (out / name).is_file(), name
    assert (out / "live" / "plots" / "metrics").is_dir()
    full, resumed = _weights(tmp_path / "full"), _weights(out)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_resume_extends_steps(store: Path, tmp_path: Path) -> None:
    train(tiny(steps=2), store, tmp_path / "m")
    summary = train(tiny(steps=4), store, tmp_path / "m", resume=True)
    assert summary["started_at"] == 2 and summary["steps"] == 4


def test_resume_refuses_other_config_or_data(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    with pytest.raises(StoreError, match="missing"):
        train(tiny(), store, out, resume=True)
    train(tiny(steps=2), store, out)
    with pytest.raises(ConfigError, match="lr_g"):
        train(tiny(steps=4, lr_g=1e-3), store, out, resume=True)
    other = make_store(tmp_path / "other", patients=9)
    with pytest.raises(StoreError, match="training data differ"):
        train(tiny(steps=4), other, out, resume=True)
    with pytest.raises(ConfigError, match="fraction"):
        train(tiny(steps=4, fraction=0.5), store, out, resume=True)


def test_divergence_guard_keeps_last_good_checkpoint(store: Path, tmp_path: Path,
                                                     monkeypatch) -> None:  # fmt: skip
    out = tmp_path / "m"
    real_loss = HingeLoss.generator
    calls = {"n": 0}

    def poisoned(self, fake):
        calls["n"] += 1
        loss = real_loss(self, fake)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(HingeLoss, "generator", poisoned)
    cfg = tiny(steps=20, checkpoint_every=2, divergence_patience=3)
    with pytest.raises(DivergenceError, match=r"not finite for 3 steps.*step 2\)"):
        train(cfg, store, out)
    state = load_checkpoint(out / CHECKPOINT_FILE)
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())
    load_generator(out)  # the model directory of the good step still loads


def test_trains_on_train_split_only(tmp_path: Path) -> None:
    poisoned = make_store(tmp_path / "poisoned", poison=float("nan"))
    summary = train(tiny(steps=3), poisoned, tmp_path / "m")
    assert np.isfinite(summary["loss_d"]) and np.isfinite(summary["loss_g"])
    g, _ = load_generator(tmp_path / "m")
    assert all(torch.isfinite(p).all() for p in g.parameters())


def test_fraction_picks_seeded_patient_subset(store: Path, tmp_path: Path) -> None:
    s = SliceStore.open(store)
    a = train_patients(s, 0.5, seed=1)
    assert a == train_patients(s, 0.5, seed=1) and len(a) == 3
    assert set(a) <= set(s.patients("train"))
    assert {tuple(train_patients(s, 0.5, seed=k)) for k in range(10)} != {tuple(a)}
    assert train_patients(s, 1.0, seed=1) == s.patients("train")
    train(tiny(steps=2, fraction=0.5, seed=1), store, tmp_path / "m")
    assert json.loads((tmp_path / "m" / CONFIG_FILE).read_text())["train_patients"] == a


@pytest.mark.parametrize(
    "options",
    [
        *(
            {"loss": name, "n_critic": 2 if LOSSES.get(name).gradient_penalty else 1}
            for name in LOSSES.names()
        ),  # every registered loss trains end to end
        {"spectral_norm": False, "d_batchnorm": True},  # the plain DCGAN
        {"conditional": False, "with_masks": "no"},
        {"diffaug": ["translation", "cutout", "color"], "projection": "dense", "dropout": 0.2},
    ],
)
def test_options_run(store: Path, tmp_path: Path, options: dict) -> None:
    summary = train(tiny(steps=2, checkpoint_every=2, sample_every=2, **options), store,
                    tmp_path / "m")  # fmt: skip
    assert summary["steps"] == 2 and np.isfinite(summary["loss_d"])
    _, info = load_generator(tmp_path / "m")
    assert (info.spec.n_classes == 0) == (options.get("conditional") is False)
    assert (info.spec.mask_channels == 0) == (options.get("with_masks") == "no")


def test_store_without_masks(tmp_path: Path) -> None:
    plain = make_store(tmp_path / "plain", masks=False)
    train(tiny(steps=2), plain, tmp_path / "m")
    assert load_generator(tmp_path / "m")[1].spec.mask_channels == 0
    with pytest.raises(StoreError, match="no masks"):
        train(tiny(steps=2, with_masks="yes"), plain, tmp_path / "m2")


def test_ema_differs_and_follows(store: Path) -> None:
    s = SliceStore.open(store)
    cfg = tiny(ema_decay=0.9)
    data, info = data_mod.load_train_data(s, cfg)
    spec = train_mod._spec(cfg, s, data, info)
    trainer = Trainer(spec, cfg, torch.device("cpu"))
    rng = torch.Generator().manual_seed(0)
    next_batch = data_mod.batches(data, cfg, torch.device("cpu"), rng)

    def distance() -> float:
        pairs = zip(trainer.g_ema.parameters(), trainer.g.parameters(), strict=True)
        return sum((a - b).pow(2).sum().item() for a, b in pairs)

    def drift(start: list[torch.Tensor]) -> float:
        pairs = zip(trainer.g_ema.parameters(), start, strict=True)
        return sum((a - b).pow(2).sum().item() for a, b in pairs)

    start = [p.detach().clone() for p in trainer.g_ema.parameters()]
    assert distance() == 0
    for _ in range(5):
        trainer.step(next_batch)
    assert distance() > 0  # EMA lags the raw weights
    assert drift(start) > 0  # ... and moves towards them
    raw_moved = sum((p - s).pow(2).sum().item()
                    for p, s in zip(trainer.g.parameters(), start, strict=True))  # fmt: skip
    assert drift(start) < raw_moved
    with torch.no_grad():  # freeze the raw G: the EMA converges on it
        for _ in range(200):
            trainer.update_ema()
    assert distance() < 1e-6 * raw_moved


def test_eval_mode_samples_match_training(tmp_path: Path) -> None:
    """Eval-mode samples from the saved model look like train-mode samples, not noise."""
    store = make_store(tmp_path / "s", masks=False)
    train(tiny(steps=30, ngf=16, ndf=16, batch_size=16, ema_decay=0.9), store, tmp_path / "m")
    g, _ = load_generator(tmp_path / "m")
    z = torch.randn(256, g.spec.nz, generator=torch.Generator().manual_seed(3))
    y = torch.arange(256) % 2
    with torch.no_grad():
        eval_out = g(z, y)
        train_out = g.train()(z, y)
    # Per-sample agreement: the eval output of each z is close to its train-mode output.
    err = (eval_out - train_out).pow(2).mean().item()
    spread = train_out.var().item()
    assert err < 0.05 * spread, (err, spread)


def test_diffaug_moves_masks_with_images() -> None:
    torch.manual_seed(0)
    img = torch.rand(4, 1, 16, 16) * 2 - 1
    mask = (img > 0).float() * 2 - 1  # a mask channel that is a function of the image
    out = diff_augment(torch.cat([img, mask], 1), ["translation"], image_channels=1)
    assert torch.equal((out[:, :1] > 0).float() * 2 - 1, out[:, 1:])
    out = diff_augment(torch.cat([img, mask], 1), ["color"], image_channels=1)
    assert torch.equal(out[:, 1:], mask) and not torch.equal(out[:, :1], img)


def test_gloo_sync_batchnorm_matches_batchnorm() -> None:
    """The CPU cross-process batch norm computes what BatchNorm2d computes (one process)."""
    import torch.distributed as dist

    from augment.training.ddp import GlooSyncBatchNorm

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.BatchNorm2d(3)
        torch.nn.init.normal_(plain.weight, 1.0, 0.3)
        synced = GlooSyncBatchNorm(3)
        synced.load_state_dict(plain.state_dict())
        x = torch.randn(4, 3, 5, 5) * 2 + 1
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = plain(xa), synced(xb)
        torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
        w = torch.randn(4, 3, 5, 5)  # an arbitrary loss, so gradients are not trivially zero
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain.weight.grad, synced.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(plain.bias.grad, synced.bias.grad)
        torch.testing.assert_close(plain.running_mean, synced.running_mean)
        torch.testing.assert_close(plain.running_var, synced.running_var)
    finally:
        dist.destroy_process_group()


def _torchrun(store: Path, out: Path, extra: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(29500 + os.getpid() % 1000), "-m", "augment", "train",
           "--data", str(store), "--out", str(out), "--device", "cpu",
           "--params", os.devnull, *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_ddp_cpu_two_processes(store: Path, tmp_path: Path) -> None:
    result = _torchrun(store, tmp_path / "m", ["--dry-run"])
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "m" / CHECKPOINT_FILE)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    g, _ = load_generator(tmp_path / "m")
    assert all(torch.isfinite(p).all() for p in g.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_step_bf16(store: Path, tmp_path: Path) -> None:
    summary = train(tiny(steps=4, device="cuda"), store, tmp_path / "m")
    assert np.isfinite(summary["loss_d"])
    g, _ = load_generator(tmp_path / "m", device="cuda")
    assert next(g.parameters()).is_cuda


def test_outline_marks_region_borders_only() -> None:
    from augment.training.pictures import _outline, tiles

    masks = np.zeros((1, 8, 8), dtype=np.int64)
    masks[0, 2:6, 2:6] = 1
    edge = _outline(masks)[0]
    assert edge[2, 2:6].all() and edge[5, 2:6].all() and edge[2:6, 2].all()
    assert not edge[3:5, 3:5].any() and not edge[masks[0] == 0].any()
    rgb = tiles(np.zeros((1, 1, 8, 8)), masks, ncol=1)
    assert tuple(rgb[2, 2]) != tuple(rgb[3, 3]) and rgb.shape == (8, 8, 3)


def test_samples_figure_layout(store: Path, tmp_path: Path) -> None:
    """samples.png: one block per class, real beside synthetic, little empty space."""
    from PIL import Image

    train(tiny(steps=2), store, tmp_path / "m")
    with Image.open(tmp_path / "m" / "samples.png") as im:
        w, h = im.size
    s = 32  # tiny store slices; 2 classes x 3 rows of 8 tiles, real and synthetic
    assert 2 * 8 * s < w < 2 * 8 * s + 80 and 2 * 3 * s < h < 2 * 3 * s + 30


@pytest.mark.parametrize("hard", [False, True])
def test_mask_weight_and_hardening(store: Path, hard: bool) -> None:
    """D sees mask channels scaled by mask_weight; G's scores are hardened only if asked."""
    s = SliceStore.open(store)
    cfg = tiny(mask_weight=0.25, hard_masks=hard, diffaug=[])  # weighting alone, no DiffAugment
    data, info = data_mod.load_train_data(s, cfg)
    trainer = Trainer(train_mod._spec(cfg, s, data, info), cfg, torch.device("cpu"))
    x = torch.rand(2, 4, 32, 32) * 2 - 1  # image + 3 mask channels
    seen = trainer._aug(x)
    assert torch.equal(seen[:, :1], x[:, :1]) and torch.allclose(seen[:, 1:], 0.25 * x[:, 1:])
    masks = trainer._harden(x)[:, 1:]
    assert torch.equal(masks, x[:, 1:]) != hard
    if hard:
        assert ((masks.abs() - 1).abs() < 1e-5).all()  # one-hot in [-1, 1]


def test_balance_classes_draws_classes_equally(store: Path) -> None:
    s = SliceStore.open(store)
    data, _ = data_mod.load_train_data(s, tiny())
    data.labels = (torch.arange(len(data)) % 6 == 0).long()  # 1 lesion : 5 normal
    rng = torch.Generator().manual_seed(0)
    for balance, share in ((False, 1 / 6), (True, 0.5)):
        cfg = tiny(batch_size=2000, balance_classes=balance)
        _, y = data_mod.batches(data, cfg, torch.device("cpu"), rng)()
        assert abs(y.float().mean().item() - share) < 0.05, (balance, y.float().mean())


def test_batchnorm_recalibration_uses_the_class_mix_training_used():
    from augment.config import TrainConfig
    from augment.nets.dcgan import DCGANSpec
    from augment.training.loop import _class_mix

    spec = DCGANSpec(image_size=32, n_classes=2, nz=8, ngf=8, ndf=8)
    labels = torch.tensor([0] * 9 + [1])
    balanced = _class_mix(TrainConfig(balance_classes=True), spec, labels)
    natural = _class_mix(TrainConfig(balance_classes=False), spec, labels)
    assert balanced[0] == balanced[1]
    assert natural.tolist() == [9.0, 1.0]
    assert _class_mix(TrainConfig(), DCGANSpec(image_size=32), labels) is None


def test_model_spacing_is_the_median_when_inputs_had_different_spacings(tmp_path):
    from augment.contracts.slice_store import SliceStore, SliceStoreWriter
    from augment.training.loop import slice_spacing

    rows = [
        {"patient": f"P{i}", "source": "s", "z": 0, "label": 0, "split": "train",
         "spacing_y": sy, "spacing_x": sx}
        for i, (sy, sx) in enumerate([(0.7, 0.7), (0.8, 0.9), (1.5, 1.5)])
    ]  # fmt: skip
    with SliceStoreWriter(tmp_path / "mixed", size=4, with_masks=False) as w:
        w.add(np.zeros((3, 4, 4)), None, rows)
        w.meta["spacing"] = None  # what preprocess records for differing inputs
    assert slice_spacing(SliceStore.open(tmp_path / "mixed")) == [0.8, 0.9]
    with SliceStoreWriter(tmp_path / "one", size=4, with_masks=False) as w:
        w.add(np.zeros((3, 4, 4)), None, rows)
        w.meta["spacing"] = [2.0, 3.0]
    assert slice_spacing(SliceStore.open(tmp_path / "one")) == [2.0, 3.0]


def test_a_fresh_run_refuses_an_existing_model(store: Path, tmp_path: Path) -> None:
    train(tiny(steps=2), store, tmp_path / "m")
    with pytest.raises(FileExistsError, match="--resume to continue it or --overwrite"):
        train(tiny(steps=2), store, tmp_path / "m")
    summary = train(tiny(steps=2, overwrite=True), store, tmp_path / "m")
    assert summary["steps"] == 2
