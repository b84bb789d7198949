"""Progressive growing and R1, the issue #12 candidates added last: schedule, networks, runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from augment.contracts.model_dir import load_generator
from augment.errors import ConfigError
from augment.nets.dcgan import DCGANSpec, Discriminator, Generator
from augment.training.losses import LOSSES
from augment.training.stage import train
from augment.training.step import growth_level, growth_steps
from tests.training.test_options import _trainer
from tests.training.test_stage import make_store, tiny


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("s") / "slices")  # 32 x 32, masks, two classes


def test_growth_schedule() -> None:
    cfg = tiny(grow_from=16, grow_steps=100, steps=400)
    at = {step: growth_level(cfg, 64, step) for step in (0, 99, 100, 125, 150, 199, 200, 250, 399)}
    assert at == {
        0: (16, 1.0), 99: (16, 1.0),  # the first resolution alone
        100: (32, 0.0), 125: (32, 0.5), 150: (32, 1.0), 199: (32, 1.0),  # fade in, then alone
        200: (64, 0.0), 250: (64, 1.0), 399: (64, 1.0),
    }  # fmt: skip
    assert growth_steps(cfg, 64) == 250
    assert growth_level(tiny(), 64, 0) == (64, 1.0) and growth_steps(tiny(), 64) == 0


def _nets(progressive: int) -> tuple[Generator, Discriminator]:
    spec = DCGANSpec(64, mask_channels=3, n_classes=2, ngf=8, ndf=8, g_conditioning="cbn",
                     mbstd_group=4, progressive=progressive)  # fmt: skip
    torch.manual_seed(0)
    return Generator(spec).eval(), Discriminator(spec).eval()


def test_growing_generator_outputs_and_fade() -> None:
    g, _ = _nets(16)
    assert sorted(g.to_image) == ["16", "32"]
    z, y = torch.randn(4, 100), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        full = g(z, y)
        at16 = g(z, y, res=16)
        assert at16.shape == (4, 4, 16, 16) and at16.abs().max() <= 1
        # alpha 0: only the upsampled image of the resolution below; 1: only the new block.
        up16 = torch.nn.functional.interpolate(at16, scale_factor=2.0, mode="nearest")
        torch.testing.assert_close(g(z, y, res=32, alpha=0.0), up16)
        half = g(z, y, res=32, alpha=0.5)
        torch.testing.assert_close(half, torch.lerp(up16, g(z, y, res=32), 0.5))
        # The 16-px image does not depend on the blocks above it; the full image not on the
        # extra image layers.
        for m in list(g.main)[-3:]:
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.add_(1.0)
        torch.testing.assert_close(g(z, y, res=16), at16)
        assert not torch.allclose(g(z, y), full)
        g.to_image["32"].weight.add_(1.0)
        g.to_image["16"].weight.add_(1.0)
        before = g(z, y)
        g.to_image["32"].weight.add_(1.0)
        torch.testing.assert_close(g(z, y), before)
    with pytest.raises(ValueError, match="res"):
        g(z, y, res=8)


def test_growing_discriminator_enters_at_its_resolution_and_fades() -> None:
    _, d = _nets(16)
    assert sorted(d.from_image) == ["16", "32"]
    x16, y = torch.rand(4, 4, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        out = d(x16, y)
        assert out.shape == (4,)
        # A 16-px input does not pass through the two stages that take 64 and 32 px.
        first = [m for m in d.features if isinstance(m, torch.nn.Conv2d)][:2]
        for conv in first:
            conv.parametrizations.weight.original.add_(1.0)
        torch.testing.assert_close(d(x16, y), out)
        # alpha 0 at 32 px: D sees only the 16-px average of its input.
        x32 = torch.rand(4, 4, 32, 32) * 2 - 1
        torch.testing.assert_close(
            d(x32, y, alpha=0.0), d(torch.nn.functional.avg_pool2d(x32, 2), y)
        )
        assert not torch.allclose(d(x32, y, alpha=1.0), d(x32, y, alpha=0.0))
    with pytest.raises(ValueError, match="px"):
        d(torch.zeros(2, 4, 8, 8), torch.tensor([0, 1]))


def test_growing_run_scores_only_the_grown_generator(store: Path, tmp_path: Path) -> None:
    cfg = tiny(grow_from=8, grow_steps=4, steps=14, d_mask="local", fidelity_every=2,
               sample_every=2, checkpoint_every=4, fidelity_samples=64)  # fmt: skip
    summary = train(cfg, store, tmp_path / "m")
    assert summary["steps"] == 14
    record = json.loads((tmp_path / "m" / "config.json").read_text())["fidelity"]
    # 8 -> 16 -> 32 px: 4 + 4 + 2 steps before the full generator is finished.
    assert [h["step"] for h in record["curve"]] == [10, 12, 14]
    g, info = load_generator(tmp_path / "m")
    assert info.spec.progressive == 8
    assert g(torch.randn(2, cfg.nz), torch.tensor([0, 1])).shape[-1] == 32
    grids = sorted((tmp_path / "m" / "live").rglob("*.png"))
    assert len(grids) == 7  # every 2 steps, at the resolution of the moment, shown at 32 px
    from PIL import Image

    assert {Image.open(p).size for p in grids} == {(8 * 32, 8 * 32)}


@pytest.mark.parametrize("loss", LOSSES.names())
def test_growing_trainer_steps_at_every_level(store: Path, loss: str) -> None:
    plain = {"spectral_norm": False, "d_batchnorm": True} if loss == "bce" else {}  # Radford's D
    gp = LOSSES.get(loss).gradient_penalty
    cfg = tiny(grow_from=8, grow_steps=2, steps=8, loss=loss, n_critic=2 if gp else 1,
               r1_weight=0 if gp else 1.0, r1_every=1, d_mask="local", **plain)  # fmt: skip
    trainer, next_batch = _trainer(store, cfg)
    seen = []
    for _ in range(6):
        seen.append(trainer.level())
        assert torch.isfinite(trainer.step(next_batch)).all()
    assert [r for r, _ in seen] == [8, 8, 16, 16, 32, 32]
    assert trainer.grown


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"grow_from": 32}, "train.grow_from"),  # not below the store's 32 px
        ({"grow_from": 12}, "train.grow_from"),
        ({"grow_from": 8, "grow_steps": 10, "steps": 20}, "train.grow_steps"),  # 25 needed
        ({"grow_from": 8, "compile": True}, "compile"),
        ({"grow_from": 8, "d_mask": "projection"}, "projection"),
    ],
)
def test_growth_settings_refused_by_name(store: Path, tmp_path: Path, opts, match) -> None:
    with pytest.raises(ConfigError, match=match):
        train(tiny(steps=opts.pop("steps", 40), grow_steps=opts.pop("grow_steps", 4), **opts),
              store, tmp_path / "m")  # fmt: skip


def test_r1_is_lazy_and_adds_a_positive_penalty(store: Path, monkeypatch) -> None:
    losses = []
    for r1 in (0.0, 10.0):
        trainer, next_batch = _trainer(store, tiny(r1_weight=r1, r1_every=2, diffaug=[]))
        torch.manual_seed(1)
        losses.append(float(trainer.step(next_batch)[0]))
    assert losses[1] > losses[0]  # the same D, batch and noise, plus gamma/2 * |grad|^2

    calls = []
    real_grad = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(1)
        return real_grad(*args, **kwargs)

    trainer, next_batch = _trainer(store, tiny(r1_weight=1.0, r1_every=2, d_mask="local"))
    monkeypatch.setattr(torch.autograd, "grad", counting)
    for _ in range(5):
        assert torch.isfinite(trainer.step(next_batch)).all()
    assert len(calls) == 3  # D steps 0, 2 and 4
    state = trainer.state_dict()
    assert state["d_steps"] == 5
    fresh, _ = _trainer(store, tiny(r1_weight=1.0, r1_every=2, d_mask="local"))
    fresh.load_state_dict(state)
    assert fresh.d_steps == 5  # a resumed run keeps the lazy clock
