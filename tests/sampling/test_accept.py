"""``augment sample --accept consistent``: keep only samples whose mask agrees with their class."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from augment.cli import app
from augment.contracts.model_dir import ModelInfo, load_generator, save_generator
from augment.contracts.synthetic_set import MANIFEST, META
from augment.errors import ConfigError, StoreError
from augment.nets.dcgan import DCGANSpec, Generator
from augment.sampling.draw import ACCEPT_CAP, candidate_indices, generate
from augment.sampling.formats import nnunet
from augment.sampling.stage import sample, summary_table
from augment.training.consistency import lesion_pixels, matches_class
from tests.sampling.test_stage import CLASSES, LABELS, SPACING, WINDOW, _cfg, _files

SPEC = DCGANSpec(image_size=32, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)


def _class_blind_generator() -> Generator:
    """A generator whose class embedding is zero: G(z | normal) == G(z | lesion)."""
    torch.manual_seed(0)
    g = Generator(SPEC)
    for module in g.modules():  # visible, varied samples (DCGAN's init is near-constant)
        if isinstance(module, torch.nn.ConvTranspose2d):
            torch.nn.init.kaiming_normal_(module.weight)
    with torch.no_grad():
        g.main[-2].weight.mul_(5)
        assert g.embed is not None
        g.embed.weight.zero_()
    return g.eval()


def _config(min_pixels: int) -> dict:
    return {
        "spacing": list(SPACING), "window": WINDOW, "class_names": CLASSES,
        "label_names": LABELS, "mask_label_ids": [0, 1],
        "lesion_rule": {"lesion_ids": [1], "min_lesion_pixels": min_pixels},
    }  # fmt: skip


def _lesion_counts(g: Generator, n: int = 256) -> np.ndarray:
    """Lesion pixels of class 1's first n candidates (what the filter draws, in order)."""
    info = ModelInfo(Path("."), SPEC, _config(1), "", CLASSES, LABELS, SPACING)
    idx = candidate_indices(1, 2, 0, n)
    _, masks = generate(g, info, 0, idx, np.ones(n, np.int64))
    assert masks is not None
    return lesion_pixels(masks, [1])


@pytest.fixture(scope="module")
def blind(tmp_path_factory) -> tuple[Path, int]:
    """A class-blind model whose lesion rule about a quarter of its samples meet."""
    g = _class_blind_generator()
    counts = _lesion_counts(g)
    threshold = int(np.quantile(counts, 0.75)) + 1
    share = float((counts >= threshold).mean())
    assert 0.05 < share < 0.5, "the fixture needs a rule that some, not most, samples meet"
    root = tmp_path_factory.mktemp("blind") / "dcgan"
    save_generator(root, g, SPEC, _config(threshold))
    return root, threshold


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / MANIFEST, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_class_blind_generator_gets_a_low_rate_and_only_agreeing_samples(blind, tmp_path):
    model, threshold = blind
    out = tmp_path / "s"
    summary = sample(_cfg(n=8, class_ratio={"lesion": 1}, accept="consistent"), model, out)
    rate = summary["acceptance"]["rate"]["lesion"]
    assert 0 < rate < 0.5  # most draws of a generator that ignores its class are rejected
    kept, drawn = summary["acceptance"]["kept"]["lesion"], summary["acceptance"]["drawn"]["lesion"]
    assert kept == 8 and drawn > kept and rate == pytest.approx(kept / drawn, abs=1e-4)
    rows = _manifest(out)
    masks = np.stack([nnunet.read_nifti_slice(out / r["label_file"]) for r in rows]).astype(int)
    classes = np.array([int(r["class"]) for r in rows])
    assert matches_class(masks, classes, [1], threshold).all()
    meta = json.loads((out / META).read_text())
    assert meta["acceptance"] == summary["acceptance"]
    assert meta["mask_agrees_with_class"] == {"lesion": 1.0}
    table = summary_table(summary)
    assert [c.header for c in table.columns][-1] == "draws accepted"


def test_kept_samples_regenerate_from_their_manifest_row(blind, tmp_path):
    model, _ = blind
    out = tmp_path / "s"
    sample(_cfg(n=6, class_ratio={"lesion": 1}, accept="consistent"), model, out)
    generator, info = load_generator(model, "cpu")
    rows = _manifest(out)
    noise_idx = [int(r["noise_index"]) for r in rows]
    assert noise_idx == sorted(noise_idx) and len(set(noise_idx)) == len(noise_idx)
    assert noise_idx != list(range(len(rows)))  # rejected draws leave gaps
    for r in rows:
        _, mask = generate(generator, info, int(r["seed"]), np.array([int(r["noise_index"])]),
                           np.array([int(r["class"])]))  # fmt: skip
        assert mask is not None
        assert np.array_equal(mask[0], nnunet.read_nifti_slice(out / r["label_file"]))


def test_same_seed_same_files_and_the_same_draws_whatever_the_batch_size(blind, tmp_path):
    model, _ = blind
    cfg = {"n": 6, "class_ratio": {"lesion": 1}, "accept": "consistent"}
    sample(_cfg(**cfg), model, tmp_path / "a")
    sample(_cfg(**cfg), model, tmp_path / "b")
    sample(_cfg(**cfg, batch_size=3), model, tmp_path / "c")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    # Another batch size keeps the same draws (pixels may differ in the last float bits).
    assert _manifest(tmp_path / "a") == _manifest(tmp_path / "c")


def test_a_class_that_never_agrees_fails_with_one_line_and_writes_nothing(blind, tmp_path):
    model, _ = blind
    g, _ = load_generator(model, "cpu")
    never = tmp_path / "never"
    save_generator(never, g, SPEC, _config(32 * 32 + 1))  # no sample can meet the rule
    with pytest.raises(StoreError, match=rf"0 of {ACCEPT_CAP * 4} 'lesion' samples") as err:
        sample(_cfg(n=4, class_ratio={"lesion": 1}, accept="consistent"), never, tmp_path / "s")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "s").exists()


def test_default_keeps_every_draw_as_before(blind, tmp_path):
    model, _ = blind
    summary = sample(_cfg(n=8), model, tmp_path / "a")
    sample(_cfg(n=8, accept="all"), model, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert "acceptance" not in summary
    assert "acceptance" not in json.loads((tmp_path / "a" / META).read_text())
    rows = _manifest(tmp_path / "a")
    assert [int(r["noise_index"]) for r in rows] == list(range(8))  # case i is noise index i


def test_a_model_without_lesion_rule_is_refused(tmp_path):
    g = _class_blind_generator()
    root = tmp_path / "dcgan"
    save_generator(root, g, SPEC, {"spacing": list(SPACING), "window": WINDOW,
                                   "class_names": CLASSES, "label_names": LABELS})  # fmt: skip
    with pytest.raises(ConfigError, match="lesion rule"):
        sample(_cfg(accept="consistent"), root, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_cli_accept_option_reports_the_rate(blind, tmp_path):
    model, _ = blind
    result = CliRunner().invoke(app, [
        "sample", "--n", "4", "--model", str(model), "--out", str(tmp_path / "s"),
        "--class", "lesion", "--accept", "consistent", "--device", "cpu", "--batch-size", "8",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "draws accepted" in result.output
    assert "acceptance" in json.loads((tmp_path / "s" / META).read_text())
