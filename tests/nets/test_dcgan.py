"""The DCGAN networks and the model directory (augment.nets.dcgan, augment.contracts.model_dir)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from augment.contracts.model_dir import (
    CONFIG_FILE,
    GENERATOR_FILE,
    load_generator,
    save_generator,
    sha256_file,
)
from augment.errors import StoreError
from augment.nets.dcgan import (
    DCGANSpec,
    Discriminator,
    Generator,
    LocalDiscriminator,
    SelfAttention,
    lesion_crops,
    recalibrate_batchnorm,
)
from augment.nets.device import resolve_device


def _tiny(**kw) -> DCGANSpec:
    base = {"image_size": 32, "nz": 8, "ngf": 4, "ndf": 4}
    base.update(kw)
    return DCGANSpec(**base)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
@pytest.mark.parametrize("projection", ["conv", "dense"])
def test_shapes_every_size(size: int, projection: str) -> None:
    spec = _tiny(image_size=size, projection=projection)
    g, d = Generator(spec), Discriminator(spec)
    out = g(torch.randn(2, spec.nz))
    assert out.shape == (2, 1, size, size)
    assert out.abs().max() <= 1.0
    assert d(out).shape == (2,)


@pytest.mark.parametrize("n_classes", [0, 3])
@pytest.mark.parametrize("mask_channels", [0, 2, 4])
@pytest.mark.parametrize("sn", [True, False])
@pytest.mark.parametrize("cond", ["concat", "cbn"])
def test_conditional_masks_spectral_norm(
    n_classes: int, mask_channels: int, sn: bool, cond: str
) -> None:
    spec = _tiny(
        n_classes=n_classes, mask_channels=mask_channels, spectral_norm=sn, g_conditioning=cond
    )
    g, d = Generator(spec), Discriminator(spec)
    y = torch.tensor([0, 2]) if n_classes else None
    out = g(torch.randn(2, spec.nz), y)
    assert out.shape == (2, 1 + mask_channels, 32, 32)
    logits = d(out, y)
    assert logits.shape == (2,) and torch.isfinite(logits).all()
    has_sn = any(hasattr(m, "parametrizations") for m in d.modules())
    assert has_sn == sn


@pytest.mark.parametrize("cond", ["concat", "cbn"])
def test_conditioning_changes_output(cond: str) -> None:
    spec = _tiny(n_classes=2, g_conditioning=cond)
    g, d = Generator(spec).eval(), Discriminator(spec)
    z = torch.randn(1, spec.nz).repeat(2, 1)
    out = g(z, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    x = out[:1].repeat(2, 1, 1, 1)
    logits = d(x, torch.tensor([0, 1]))  # same image, two classes: the projection term differs
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(ValueError, match="class ids"):
        g(z)


def test_init_normal_002() -> None:
    spec = _tiny(image_size=64, ngf=32, ndf=32, d_batchnorm=True, spectral_norm=False)
    for net in (Generator(spec), Discriminator(spec)):
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.weight.numel() > 2000:
                assert abs(m.weight.std().item() - 0.02) < 0.004
                assert abs(m.weight.mean().item()) < 0.004
            if isinstance(m, nn.BatchNorm2d):
                assert abs(m.weight.mean().item() - 1.0) < 0.02
    # With spectral norm the raw (original) weight is the one initialised.
    d = Discriminator(_tiny(image_size=64, ngf=32, ndf=32))
    big = d.features[2]
    assert abs(big.parametrizations.weight.original.std().item() - 0.02) < 0.004


def test_plain_dcgan_has_batchnorm_in_d_but_not_first_layer() -> None:
    d = Discriminator(_tiny(d_batchnorm=True, spectral_norm=False))
    kinds = [type(m).__name__ for m in d.features]
    assert kinds[:2] == ["Conv2d", "LeakyReLU"]
    assert "BatchNorm2d" in kinds
    assert not any(isinstance(m, nn.BatchNorm2d) for m in Discriminator(_tiny()).modules())


def test_spec_roundtrip_and_validation() -> None:
    spec = _tiny(n_classes=2, mask_channels=3, projection="dense", dropout=0.1)
    assert DCGANSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="image_size"):
        DCGANSpec(image_size=48)
    with pytest.raises(ValueError, match="unknown"):
        DCGANSpec.from_dict({**spec.to_dict(), "bogus": 1})


def _saved(tmp_path, **kw):
    spec = _tiny(**kw)
    g = Generator(spec)
    g.train()
    g(torch.randn(16, spec.nz), torch.zeros(16, dtype=torch.long) if spec.n_classes else None)
    extra = {
        "class_names": ["normal", "lesion"][: spec.n_classes] if spec.n_classes else [],
        "label_names": {"background": 0, "liver": 1, "lesion": 2} if spec.mask_channels else {},
        "mask_label_ids": [0, 1, 2] if spec.mask_channels else [],
        "spacing": [1.5, 2.0],
    }
    save_generator(tmp_path / "m", g, spec, extra)
    return g, spec


def test_save_load_roundtrip(tmp_path) -> None:
    g, spec = _saved(tmp_path, n_classes=2, mask_channels=3)
    loaded, info = load_generator(tmp_path / "m")
    assert not loaded.training
    assert info.spec == spec
    assert info.class_names == ["normal", "lesion"]
    assert info.label_names == {"background": 0, "liver": 1, "lesion": 2}
    assert info.spacing == (1.5, 2.0)
    assert info.checksum == sha256_file(tmp_path / "m" / GENERATOR_FILE)
    for k, v in g.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    z, y = torch.randn(4, spec.nz), torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        out = loaded(z, y)
        assert torch.equal(out, g.eval()(z, y))
    images, masks = info.split(out)
    assert images.shape == (4, 1, 32, 32) and images.dtype == np.float32
    assert masks is not None and masks.shape == (4, 32, 32) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1, 2}


def test_split_without_masks(tmp_path) -> None:
    _, spec = _saved(tmp_path)
    loaded, info = load_generator(tmp_path / "m")
    assert info.class_names == [] and info.label_names == {}
    images, masks = info.split(loaded(torch.randn(2, spec.nz)))
    assert masks is None and images.min() >= -1 and images.max() <= 1


def test_load_errors_name_directory(tmp_path) -> None:
    with pytest.raises(StoreError, match=CONFIG_FILE):
        load_generator(tmp_path / "nothing")
    _saved(tmp_path)
    cfg = json.loads((tmp_path / "m" / CONFIG_FILE).read_text())
    cfg["spec"]["ngf"] = 8  # weights no longer fit
    (tmp_path / "m" / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(StoreError, match="do not fit"):
        load_generator(tmp_path / "m")
    (tmp_path / "m" / GENERATOR_FILE).unlink()
    with pytest.raises(StoreError, match=GENERATOR_FILE):
        load_generator(tmp_path / "m")


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


def test_recalibrate_batchnorm_matches_train_mode() -> None:
    spec = _tiny()
    g = Generator(spec)
    with torch.no_grad():  # stale statistics, as an EMA copy would carry
        for m in g.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(3.0)
                m.running_var.fill_(0.01)
    z = torch.randn(64, spec.nz)
    with torch.no_grad():
        train_out = g.train()(z)
        stale = g.eval()(z)
        recalibrate_batchnorm(g, batches=16, batch_size=64)
        assert not g.training
        fresh = g(z)
    err_stale = (stale - train_out).pow(2).mean()
    err_fresh = (fresh - train_out).pow(2).mean()
    assert err_fresh < 0.1 * err_stale
    assert err_fresh < 0.1 * train_out.var()


def test_conditional_batchnorm_layout() -> None:
    """cbn: per-class gain N(1, 0.02) and bias 0 at every G batch norm, z not widened."""
    from augment.nets.dcgan import CondBatchNorm2d

    g = Generator(_tiny(n_classes=3, g_conditioning="cbn"))
    cbns = [m for m in g.modules() if isinstance(m, CondBatchNorm2d)]
    assert cbns and g.embed is None
    assert g.project.weight.shape[0] == 8  # nz in, not 2 * nz
    gains = torch.cat([m.gain.weight.flatten() for m in cbns])
    assert abs(gains.mean().item() - 1) < 0.01 and 0.005 < gains.std().item() < 0.05
    assert all(m.bias.weight.abs().max() == 0 for m in cbns)
    assert not any(isinstance(m, nn.BatchNorm2d) and m.affine for m in g.modules())
    with pytest.raises(ValueError, match="g_conditioning"):
        _tiny(g_conditioning="film")


def test_recalibrate_and_roundtrip_cbn(tmp_path) -> None:
    spec = _tiny(n_classes=2, mask_channels=2, g_conditioning="cbn")
    g = Generator(spec)
    z, y = torch.randn(64, spec.nz), torch.arange(64) % 2
    with torch.no_grad():
        train_out = g.train()(z, y)
        recalibrate_batchnorm(g, batches=16, batch_size=64)
        assert (g.eval()(z, y) - train_out).pow(2).mean() < 0.1 * train_out.var()
    save_generator(tmp_path, g, spec, {})
    loaded, info = load_generator(tmp_path)
    assert info.spec.g_conditioning == "cbn"
    with torch.no_grad():
        assert torch.allclose(loaded(z, y), g(z, y), atol=1e-6)


def test_old_spec_without_g_conditioning_loads_concat() -> None:
    d = _tiny(n_classes=2).to_dict()
    del d["g_conditioning"]
    assert DCGANSpec.from_dict(d).g_conditioning == "concat"


def test_minibatch_std_groups_do_not_mix_halves() -> None:
    """Groups are consecutive samples: a real half and a fake half never share a group."""
    from augment.nets.dcgan import minibatch_std

    h = torch.cat([torch.ones(8, 3, 4, 4), torch.randn(8, 3, 4, 4)])  # (16, 3, 4, 4)
    out = minibatch_std(h, 4)
    assert out.shape == (16, 4, 4, 4) and torch.equal(out[:, :3], h)
    assert out[:8, 3].max() < 1e-3 and out[8:, 3].min() > 0.1
    assert minibatch_std(torch.randn(6, 2, 4, 4), 4).shape == (6, 3, 4, 4)  # 4 -> 3 divides 6
    spec = _tiny(n_classes=2, mask_channels=2, mbstd_group=4)
    d = Discriminator(spec)
    assert d(torch.randn(8, 3, 32, 32), torch.arange(8) % 2).shape == (8,)


# --------------------------------------------------------------------------- options of #12


def _nets(spec: DCGANSpec, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return Generator(spec), Discriminator(spec)


def test_options_off_leave_todays_networks() -> None:
    """attention 0 and d_mask none build the networks an older spec (without the keys) does."""
    spec = _tiny(n_classes=2, mask_channels=2, g_conditioning="cbn", mbstd_group=4)
    old = spec.to_dict()
    del old["attention"], old["d_mask"]
    for new_net, old_net in zip(_nets(spec), _nets(DCGANSpec.from_dict(old)), strict=True):
        a, b = new_net.state_dict(), old_net.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
        assert not any(isinstance(m, SelfAttention) for m in new_net.modules())
    assert _nets(spec)[1].mask_branch is None


@pytest.mark.parametrize("where", [8, 16])
def test_attention_sits_where_asked_and_starts_as_identity(where: int) -> None:
    spec = _tiny(n_classes=2, mask_channels=2, attention=where)
    g, d = _nets(spec)
    plain_g, plain_d = _nets(_tiny(n_classes=2, mask_channels=2))
    for net, plain in ((g, plain_g), (d, plain_d)):
        attn = [m for m in net.modules() if isinstance(m, SelfAttention)]
        assert len(attn) == 1  # besides it, the same layers in the same order
        inner = {id(t) for t in attn[0].parameters()}
        rest = [t.shape for t in net.parameters() if id(t) not in inner]
        assert rest == [t.shape for t in plain.parameters()]
    seen: list[tuple[int, int]] = []
    for net in (g, d):
        for m in net.modules():
            if isinstance(m, SelfAttention):
                m.register_forward_hook(lambda _m, inp, _o: seen.append(tuple(inp[0].shape[2:])))
    y = torch.tensor([0, 1])
    d(g(torch.randn(2, spec.nz), y), y)
    assert seen == [(where, where)] * 2
    layer = SelfAttention(8)
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(layer(x), x)  # gamma = 0: the identity until trained
    layer.gamma.data.fill_(1.0)
    assert not torch.allclose(layer(x), x)
    with pytest.raises(ValueError, match="attention"):
        _tiny(attention=32)  # S/2 is the largest hidden resolution at 32x32


def test_mask_projection_scores_the_mask_by_class() -> None:
    spec = _tiny(n_classes=2, mask_channels=2, d_mask="projection")
    d = _nets(spec)[1]
    assert d.mask_branch is not None
    with torch.no_grad():  # a projection that is not near zero, so the test is not about noise
        d.mask_embed.weight.normal_(0, 1)  # type: ignore[union-attr]
    x = torch.randn(1, 3, 32, 32).repeat(2, 1, 1, 1)
    plain = x.clone()
    x_other = x.clone()
    x_other[:, 1:] = -x_other[:, 1:]  # same image, other mask
    y = torch.tensor([0, 1])
    d_plain = Discriminator(_tiny(n_classes=2, mask_channels=2))
    d_plain.load_state_dict({k: v for k, v in d.state_dict().items() if "mask_" not in k})
    extra = d(x, y) - d_plain(plain, y)  # the mask branch's term, per class
    extra_other = d(x_other, y) - d_plain(x_other, y)
    assert not torch.allclose(extra[0], extra[1])  # it depends on the class
    assert not torch.allclose(extra, extra_other)  # and on the mask
    with pytest.raises(ValueError, match="needs mask channels and classes"):
        _tiny(d_mask="projection")


def test_lesion_crops_centre_on_the_lesion_and_pass_gradients() -> None:
    x = torch.full((2, 3, 64, 64), -1.0)
    x[:, 1] = 1.0  # background channel wins everywhere...
    x[0, 1, 40:46, 10:16] = -1.0
    x[0, 2, 40:46, 10:16] = 1.0  # ...but a 6x6 lesion in sample 0, centred at (42.5, 12.5)
    x[0, 0, 40:46, 10:16] = 0.5
    x.requires_grad_(True)
    gen = torch.Generator().manual_seed(0)
    crops = lesion_crops(x, 1, [1], 16, gen)
    assert crops.shape == (2, 3, 16, 16)
    lesion = crops[0, 2] > 0
    ys, xs = torch.nonzero(lesion, as_tuple=True)
    assert lesion.sum() == 36 and 6 <= ys.float().mean() <= 9 and 6 <= xs.float().mean() <= 9
    assert not (crops[1, 2] > 0).any()  # no lesion: a random crop of background
    crops.sum().backward()
    assert x.grad is not None and x.grad[0].sum() == 3 * 16 * 16  # the crop's contents only
    edge = torch.full((1, 3, 64, 64), -1.0)
    edge[0, 2, 0:3, 60:64] = 1.0  # a lesion at the corner: the crop stays inside
    assert (lesion_crops(edge, 1, [1], 16)[0, 2] > 0).sum() == 12


def test_local_discriminator_is_class_conditional() -> None:
    spec = _tiny(image_size=64, n_classes=2, mask_channels=2, d_mask="local")
    torch.manual_seed(0)
    local = LocalDiscriminator(spec)
    assert local.crop == 16 and any(hasattr(m, "parametrizations") for m in local.modules())
    crops = torch.randn(1, 3, 16, 16).repeat(2, 1, 1, 1)
    out = local(crops, torch.tensor([0, 1]))
    assert out.shape == (2,) and not torch.allclose(out[0], out[1])
