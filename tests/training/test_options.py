"""Every GAN loss with every mask check in D, and self-attention, train (issue #12's options)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from augment.config import TrainConfig
from augment.contracts.model_dir import load_generator
from augment.contracts.slice_store import SliceStore
from augment.errors import ConfigError
from augment.nets.dcgan import SelfAttention
from augment.training import data as data_mod
from augment.training import stage as train_mod
from augment.training.losses import LOSSES
from augment.training.stage import train
from augment.training.step import Trainer
from tests.training.test_stage import make_store, tiny

D_MASKS = ["none", "projection", "local"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("s") / "slices")


def _trainer(store: Path, cfg: TrainConfig) -> tuple[Trainer, Callable[[], tuple[Tensor, Tensor]]]:
    s = SliceStore.open(store)
    data, info = data_mod.load_train_data(s, cfg)
    torch.manual_seed(cfg.seed)
    trainer = Trainer(train_mod._spec(cfg, s, data, info), cfg, torch.device("cpu"))
    rng = torch.Generator().manual_seed(0)
    return trainer, data_mod.batches(data, cfg, torch.device("cpu"), rng)


def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _moved(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(module.parameters(), before, strict=True))


@pytest.mark.parametrize("d_mask", D_MASKS)
@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_trains_with_every_mask_check(store: Path, loss: str, d_mask: str) -> None:
    gp = LOSSES.get(loss).gradient_penalty
    cfg = tiny(loss=loss, d_mask=d_mask, n_critic=2 if gp else 1)
    trainer, next_batch = _trainer(store, cfg)
    assert trainer.spec.d_mask == d_mask
    assert (trainer.d_local is not None) == (d_mask == "local")
    g0, d0 = _snapshot(trainer.g), _snapshot(trainer.d)
    local0 = _snapshot(trainer.d_local) if trainer.d_local is not None else []
    for _ in range(3):
        m = trainer.step(next_batch)
        assert torch.isfinite(m).all(), m
    assert _moved(trainer.g, g0) and _moved(trainer.d, d0)  # G and D learn
    if trainer.d_local is not None:
        assert _moved(trainer.d_local, local0)
    if d_mask == "projection":
        assert trainer.d.mask_branch is not None


def test_plain_dcgan_with_local_discriminator(store: Path) -> None:
    """The Radford DCGAN (BCE, batch norm in D, separate real/fake passes) takes the option."""
    cfg = tiny(loss="bce", spectral_norm=False, d_batchnorm=True, beta1=0.5, d_mask="local")
    trainer, next_batch = _trainer(store, cfg)
    assert trainer.separate
    local0 = _snapshot(trainer.d_local)  # type: ignore[arg-type]
    for _ in range(2):
        assert torch.isfinite(trainer.step(next_batch)).all()
    assert _moved(trainer.d_local, local0)  # type: ignore[arg-type]


def test_generator_learns_from_the_local_discriminator(store: Path) -> None:
    """G's step includes the local D's term: G's gradient differs with and without it."""
    grads = []
    for d_mask in ("none", "local"):
        cfg = tiny(d_mask=d_mask, diffaug=[])
        trainer, next_batch = _trainer(store, cfg)  # the same G and D (the local D is built last)
        torch.manual_seed(1)  # the same noise in both steps
        trainer.step(next_batch)
        grads.append(
            torch.cat([p.grad.flatten() for p in trainer.g.parameters() if p.grad is not None])
        )
    assert not torch.allclose(grads[0], grads[1])


@pytest.mark.parametrize("where", [8, 16])
def test_attention_trains_and_gamma_leaves_zero(store: Path, where: int) -> None:
    cfg = tiny(attention=where)
    trainer, next_batch = _trainer(store, cfg)
    layers = [m for net in (trainer.g, trainer.d) for m in net.modules()
              if isinstance(m, SelfAttention)]  # fmt: skip
    assert len(layers) == 2 and all(float(m.gamma.detach()) == 0 for m in layers)
    for _ in range(4):
        assert torch.isfinite(trainer.step(next_batch)).all()
    assert all(float(m.gamma.detach()) != 0 for m in layers)
    g = trainer.g.eval()
    z, y = torch.randn(4, cfg.nz), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        trained = g(z, y)
        layers[0].gamma.zero_()
        assert not torch.allclose(g(z, y), trained)  # the layer now changes G's output


def test_options_reach_the_model_directory_and_resume(store: Path, tmp_path: Path) -> None:
    cfg = tiny(steps=2, d_mask="local", attention=16, checkpoint_every=2, sample_every=2)
    train(cfg, store, tmp_path / "m")
    g, info = load_generator(tmp_path / "m")
    assert info.spec.d_mask == "local" and info.spec.attention == 16
    assert sum(isinstance(m, SelfAttention) for m in g.modules()) == 1
    summary = train(cfg.model_copy(update={"steps": 4}), store, tmp_path / "m", resume=True)
    assert summary["steps"] == 4 and np.isfinite(summary["loss_d"])


def test_the_local_discriminator_crops_around_the_stores_lesion_labels(
    tmp_path: Path, monkeypatch
) -> None:
    import json

    store = make_store(tmp_path / "s")  # label ids: background 0, body 1, lesion 2
    meta = json.loads((store / "meta.json").read_text())
    meta["params"] = {"lesion_labels": [2], "min_lesion_pixels": 5}
    (store / "meta.json").write_text(json.dumps(meta))
    seen = []
    real_step = Trainer.step

    def spy(self, next_batch):
        seen.append(list(self.lesion_channels))
        return real_step(self, next_batch)

    monkeypatch.setattr(Trainer, "step", spy)
    train(tiny(steps=1, d_mask="local", checkpoint_every=1, sample_every=1), store, tmp_path / "m")
    assert seen == [[2]]  # the lesion's mask channel, not the body's


def test_mask_checks_need_masks_and_classes(tmp_path: Path) -> None:
    plain = make_store(tmp_path / "plain", masks=False)
    for d_mask in ("projection", "local"):
        with pytest.raises(ConfigError, match="d_mask"):
            train(tiny(steps=2, d_mask=d_mask), plain, tmp_path / d_mask)


def test_ddp_cpu_two_processes_with_local_discriminator_attention_growth_r1(
    store: Path, tmp_path: Path
) -> None:
    from tests.training.test_stage import _torchrun

    params = tmp_path / "params.yaml"
    params.write_text(
        "train:\n  d_mask: local\n  attention: 16\n  grow_from: 8\n  r1_weight: 1.0\n"
    )
    result = _torchrun(store, tmp_path / "m", ["--dry-run", "--params", str(params)])
    assert result.returncode == 0, result.stderr[-3000:]
    _, info = load_generator(tmp_path / "m")
    assert info.spec.d_mask == "local" and info.spec.attention == 16
    assert info.spec.progressive == 8  # DDP with layers unused at some resolutions
