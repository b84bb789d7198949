"""Preprocess: array functions, the patient split, privacy, layouts, bad inputs and the CLI."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from augment.config import PreprocessConfig, SplitConfig, WindowConfig
from augment.contracts.slice_store import SliceStore
from augment.contracts.volume import Volume
from augment.errors import ConfigError, InputError
from augment.preprocessing.arrays import (
    fit_square,
    output_geometry,
    process_volume,
    resize_slices,
    reslice,
    split_patients,
    window_range,
)
from augment.preprocessing.privacy import ENV_VAR, TOKEN, file_token, load_key
from augment.preprocessing.readers import READERS
from augment.preprocessing.stage import preprocess, skipped_record
from tests.preprocessing.badinputs import (
    IDENTIFIERS,
    SPACING,
    make_dicom_corpus,
    make_nifti_corpus,
    phantom,
    write_decathlon,
    write_demo,
)

N_PATIENTS = 6


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    # A fixed key, and no .augment/pseudonym.key written into the repository.
    monkeypatch.setenv(ENV_VAR, "test-key")


def _cfg(**kw) -> PreprocessConfig:
    return PreprocessConfig(**{"size": 32, "min_body_fraction": 0.0, **kw})


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The same patients as a DICOM tree and a Decathlon NIfTI set, with labels.csv."""
    return write_demo(tmp_path_factory.mktemp("demo"), N_PATIENTS)


# ---------------------------------------------------------------- array functions


def test_window_maps_its_ends_to_minus_one_and_one():
    cfg = _cfg(window=WindowConfig(center=40, width=400))
    window = window_range(np.zeros(1), cfg)
    low, high = window.low, window.high
    out = window.to_unit_range(np.array([-1000.0, low, 40.0, high, 3000.0]))
    np.testing.assert_allclose(out, [-1, -1, 0, 1, 1], atol=1e-6)
    preset = window_range(np.zeros(1), _cfg(window="abdomen"))
    assert (preset.low, preset.high, preset.units) == (low, high, "HU")


def test_percentile_window_follows_the_data():
    data = np.random.default_rng(0).normal(500, 100, 10_000)
    window = window_range(data, _cfg(window="percentile", percentiles=(1.0, 99.0)))
    low, high = window.low, window.high
    assert low == pytest.approx(np.percentile(data, 1)) and high == pytest.approx(
        np.percentile(data, 99)
    )


def test_reslice_axes_and_spacing():
    vol = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert reslice(vol, (5.0, 2.0, 1.0), "axial")[0].shape == (2, 3, 4)
    cor, sp = reslice(vol, (5.0, 2.0, 1.0), "coronal")
    assert cor.shape == (3, 2, 4) and sp == (5.0, 1.0)
    assert cor[0, 0, 0] == vol[-1, 0, 0]  # superior at the top
    sag, sp = reslice(vol, (5.0, 2.0, 1.0), "sagittal")
    assert sag.shape == (4, 2, 3) and sp == (5.0, 2.0)


def test_identity_resize_changes_nothing_and_masks_keep_their_labels():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(resize_slices(x, (16, 16), is_mask=False), x)
    m = rng.integers(0, 3, (3, 16, 16)).astype(np.uint8)
    small = resize_slices(m, (8, 8), is_mask=True)
    assert small.dtype == np.uint8 and set(np.unique(small)) <= {0, 1, 2}


def test_output_geometry_keeps_the_field_of_view_and_pixels_square():
    shape, spacing = output_geometry((100, 50), (1.0, 2.0), 64, None)
    assert shape == (64, 64) and spacing == pytest.approx((100 / 64, 100 / 64))
    shape, spacing = output_geometry((100, 100), (1.0, 1.0), 64, 2.0)
    assert shape == (50, 50) and spacing == (2.0, 2.0)
    padded = fit_square(np.ones((1, 50, 50)), 64, -1.0)
    assert padded.shape == (1, 64, 64) and padded.sum() == 50 * 50 - (64 * 64 - 50 * 50)


def test_body_filter_drops_air_slices():
    image, mask = phantom()
    image[:2] = -1000.0
    vol = Volume(image, SPACING, "P", "P/series-0", "CT", mask)
    out = process_volume(vol, _cfg(min_body_fraction=0.05))
    assert list(out.z) == list(range(2, image.shape[0]))
    assert out.images.shape == (image.shape[0] - 2, 1, 32, 32)
    assert out.masks.shape == (image.shape[0] - 2, 32, 32)
    assert out.images.min() >= -1 and out.images.max() <= 1


# ---------------------------------------------------------------- the split


def _classes(n_pos: int, n_neg: int) -> dict[str, int]:
    return {f"p{i}": int(i < n_pos) for i in range(n_pos + n_neg)}


@pytest.mark.parametrize(("n_pos", "n_neg"), [(1, 2), (2, 2), (5, 7), (30, 10), (3, 0)])
def test_split_puts_each_patient_in_exactly_one_split(n_pos, n_neg):
    classes = _classes(n_pos, n_neg)
    split = split_patients(classes, SplitConfig(), seed=0)
    assert set(split) == set(classes) and set(split.values()) <= {"train", "val", "test"}
    assert split == split_patients(classes, SplitConfig(), seed=0)
    if len(classes) >= 3:  # few patients: every split still gets one
        assert set(split.values()) == {"train", "val", "test"}


def test_split_is_stratified_and_seeded():
    classes = _classes(20, 30)
    split = split_patients(classes, SplitConfig(train=0.6, val=0.2, test=0.2), seed=1)
    for name, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        members = [p for p, s in split.items() if s == name]
        assert len(members) == round(50 * share)
        assert sum(classes[p] for p in members) == round(20 * share)
    others = [split_patients(classes, SplitConfig(), seed=s) for s in range(2, 6)]
    assert any(o != split for o in others)


# ---------------------------------------------------------------- the stage


def _all_output_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_dicom_and_nifti_layouts_give_the_same_store(demo, tmp_path):
    cfg = _cfg(labels_from="csv")
    preprocess(cfg, [demo / "dicom"], tmp_path / "d", labels_csv=demo / "labels.csv")
    preprocess(cfg, [demo / "nifti"], tmp_path / "n", labels_csv=demo / "labels.csv")
    d, n = SliceStore.open(tmp_path / "d"), SliceStore.open(tmp_path / "n")
    assert [(r["patient"], r["z"], r["label"], r["split"]) for r in d.rows] == [
        (r["patient"], r["z"], r["label"], r["split"]) for r in n.rows
    ]
    # DICOM stores whole HU: 0.5 HU of rounding, 1/200 of the abdomen window, at most.
    np.testing.assert_allclose(d.images.astype(np.float32), n.images, atol=0.01)
    assert d.masks is None and n.masks is not None
    assert d.meta["input_format"] == "dicom" and n.meta["input_format"] == "nifti"


def test_no_identifier_reaches_the_outputs_or_the_log(demo, tmp_path, capsys):
    meta = preprocess(_cfg(labels_from="csv"), [demo / "dicom"], tmp_path / "d",
                      labels_csv=demo / "labels.csv")  # fmt: skip
    text = _all_output_bytes(tmp_path / "d") + capsys.readouterr().out.encode()
    for value in [*IDENTIFIERS.values(), "PHANTOM", "Doe", "Jane", str(demo)]:
        assert value.encode() not in text, value
    assert meta["volumes_read"] == N_PATIENTS
    assert all(r["source"].startswith(r["patient"] + "/series-")
               for r in SliceStore.open(tmp_path / "d").rows)  # fmt: skip


def test_mask_labels_splits_and_determinism(demo, tmp_path):
    cfg = _cfg(min_lesion_pixels=5)
    preprocess(cfg, [demo / "nifti"], tmp_path / "a")
    preprocess(cfg.model_copy(update={"workers": 2}), [demo / "nifti"], tmp_path / "b")
    a, b = SliceStore.open(tmp_path / "a"), SliceStore.open(tmp_path / "b")
    assert a.rows == b.rows and np.array_equal(a.images, b.images)
    lesion = np.count_nonzero(a.masks, axis=(1, 2, 3))
    np.testing.assert_array_equal(a.labels(), (lesion >= 5).astype(int))
    per_patient = {}
    for r in a.rows:
        per_patient.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in per_patient.values())
    assert {s for (s,) in per_patient.values()} == {"train", "val", "test"}
    assert a.meta["label_ids"] == {"background": 0, "lesion": 1}
    assert a.meta["spacing"] == pytest.approx([48 / 32, 40 / 27], abs=1e-3)


def test_rerun_refuses_an_existing_store_or_replaces_it_whole(demo, tmp_path):
    out = tmp_path / "s"
    preprocess(_cfg(), [demo / "nifti"], out)
    (out / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        preprocess(_cfg(size=64), [demo / "nifti"], out)
    assert SliceStore.open(out).size == 32  # untouched
    preprocess(_cfg(size=64, overwrite=True), [demo / "nifti"], out)
    assert not (out / "stale.txt").exists() and SliceStore.open(out).size == 64
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no spool or temporary left


def test_bad_dicom_inputs_are_skipped_with_one_line_reasons(tmp_path):
    expected = make_dicom_corpus(tmp_path / "in")
    meta = preprocess(_cfg(labels_from="csv"), [tmp_path / "in"], tmp_path / "out",
                      labels_csv=_all_labelled(tmp_path))  # fmt: skip
    reasons = " | ".join(s["reason"] for s in meta["skipped"])
    for fragment in expected.values():
        assert fragment in reasons, fragment
    assert all("\n" not in s["reason"] for s in meta["skipped"])
    assert {s["input"][0] for s in meta["skipped"]} == {"F", "l"}  # file tokens, labels CSV
    assert meta["volumes_read"] == 1
    saved = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert saved["skipped"] == meta["skipped"]


def test_every_file_of_a_skipped_series_has_its_own_entry(tmp_path):
    make_dicom_corpus(tmp_path / "in")
    meta = preprocess(_cfg(labels_from="csv"), [tmp_path / "in"], tmp_path / "out",
                      labels_csv=_all_labelled(tmp_path))  # fmt: skip
    key = load_key(None)
    files = {file_token(p, tmp_path / "in", key): p
             for p in (tmp_path / "in").rglob("*") if p.is_file()}  # fmt: skip
    entries = [s for s in meta["skipped"] if s["input"] != "labels CSV"]
    tokens = [s["input"] for s in entries]
    assert len(tokens) == len(set(tokens))  # one entry per file
    unrecorded = {files[t].parent.name for t in set(files) - set(tokens)}
    assert unrecorded == {"good"}  # every file but the read series' has its reason
    assert not any(TOKEN.match(s["reason"]) for s in entries)  # no other file's token in front
    gap = [s["reason"] for s in entries if files[s["input"]].parent.name == "gap"]
    assert len(gap) > 1 and all("gap" in r for r in gap)


def _all_labelled(tmp_path: Path) -> Path:
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "patient,class\nGOOD-1,0\nDUP-1,1\nGAP-1,0\nMIX-1,1\nCUT-1,0\nIOP-1,1\nSLOPE-1,0\n"
        "PROJECTION-1,0\nMOSAIC-1,1\nsagittal-1,0\noblique-1,1\nZERO-1,0\nJ2K-1,1\n"
    )
    return csv


def test_nothing_readable_still_records_every_skipped_file(demo, tmp_path):
    # labels_from: mask on DICOM (no masks): every series is skipped; no store, but a record.
    out = tmp_path / "data" / "slices"
    with pytest.raises(InputError, match="every skipped input with its reason") as err:
        preprocess(_cfg(), [demo / "dicom"], out)
    record = skipped_record(out)
    assert str(record) in str(err.value) and not out.exists()
    text = record.read_text()
    n_files = sum(1 for p in (demo / "dicom").rglob("*") if p.is_file())
    entries = json.loads(text)["skipped"]
    assert len(entries) == n_files and all(e["input"].startswith("F") for e in entries)
    assert "PHANTOM" not in text and str(demo) not in text  # tokens, never ids or paths
    preprocess(_cfg(), [demo / "nifti"], out)  # a run that stores removes the stale record
    assert not record.exists() and (out / "meta.json").is_file()


def _mr_set(root: Path, channel_name: str | None = "T2", n: int = 4) -> Path:
    """MR-like volumes (arbitrary units, background about 0) with 3 empty slices at each end."""
    rng = np.random.default_rng(0)
    for i in range(n):
        image, mask = phantom((12, 24, 20), seed=i, lesion=i % 2 == 0)
        mr = np.where(image > -500, 600 - 0.5 * image, 0.0) + np.abs(rng.normal(0, 5, image.shape))
        mr[:3] = mr[-3:] = np.abs(rng.normal(0, 5, (3, 24, 20)))  # beyond the head: noise only
        mask[:3] = mask[-3:] = 0
        write_decathlon(root, {f"MR-{i}": (mr.astype(np.float32), mask)}, SPACING)
    if channel_name:
        (root / "dataset.json").write_text(json.dumps(
            {"labels": {"background": 0, "lesion": 1}, "channel_names": {"0": channel_name}}
        ))  # fmt: skip
    return root


def test_mr_gets_percentiles_and_its_own_body_filter(tmp_path):
    meta = preprocess(_cfg(min_body_fraction=0.05), [_mr_set(tmp_path / "mr")], tmp_path / "o")
    assert meta["modality"] == "MR" and meta["window"]["kind"] == "percentile"
    assert "MR: window percentile (auto)" in meta["window_choice"]
    assert "Otsu" in meta["window_choice"]
    images = SliceStore.open(tmp_path / "o").images
    assert len(images) == 4 * 6  # the empty slices beyond the head are dropped
    white = (images >= 0.999).mean()
    assert white < 0.05  # no flat white heads (the dark background is -1)
    # The CT settings, asked for by name, clip MR and keep the empty slices as "normal".
    cfg = _cfg(min_body_fraction=0.05, window="abdomen", body_threshold=-500.0)
    meta = preprocess(cfg, [tmp_path / "mr"], tmp_path / "ct")
    images = SliceStore.open(tmp_path / "ct").images
    assert len(images) == 4 * 12  # 6 empty slices per volume kept, each a "normal" slice
    assert (images >= 0.999).mean() > max(0.15, 4 * white)  # every tissue pixel clipped white
    assert meta["window_choice"].startswith("MR: window abdomen, body above -500")


def test_modality_from_the_intensities_when_nothing_says(demo, tmp_path):
    meta = preprocess(_cfg(), [_mr_set(tmp_path / "mr", channel_name=None)], tmp_path / "a")
    assert meta["modality"] == "MR" and meta["channels"] == ["image"]  # unnamed: by its kind
    meta = preprocess(_cfg(), [demo / "nifti"], tmp_path / "b")  # air at -1000: CT
    assert meta["modality"] == "CT" and meta["window"]["kind"] == "abdomen"
    assert meta["channels"] == ["CT"]
    assert meta["window_choice"] == "CT: window abdomen (auto), body above -500 (auto)"


def test_a_store_mixing_ct_and_mr_is_refused(demo, tmp_path):
    with pytest.raises(InputError, match=r"one kind of image per store, got 6 CT, 4 MR volumes"):
        preprocess(_cfg(), [demo / "nifti", _mr_set(tmp_path / "mr")], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_bad_nifti_inputs_are_skipped_with_reasons(tmp_path):
    expected = make_nifti_corpus(tmp_path / "in")
    meta = preprocess(_cfg(), [tmp_path / "in"], tmp_path / "out")
    reasons = [s["reason"] for s in meta["skipped"]]
    assert len(reasons) == 2 * len(expected)  # one entry per file: the image and its mask
    for fragment in expected.values():
        assert any(fragment in r for r in reasons), fragment
    assert meta["volumes_read"] == 2


def test_strict_stops_at_the_first_bad_input(tmp_path):
    make_nifti_corpus(tmp_path / "in")
    with pytest.raises(InputError, match="--strict"):
        preprocess(_cfg(strict=True), [tmp_path / "in"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_naming_missing_patients_and_unlabelled_volumes(demo, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("patient,class\nPHANTOM-0000,1\nPHANTOM-0001,normal\nNOBODY-9,0\n")
    meta = preprocess(_cfg(labels_from="csv"), [demo / "nifti"], tmp_path / "out", labels_csv=csv)
    reasons = [s["reason"] for s in meta["skipped"]]
    unlabelled = sum("no class in the labels CSV" in r for r in reasons)
    assert unlabelled == 2 * (N_PATIENTS - 2)  # an entry for the image and one for the mask
    assert any("1 patients have no readable input" in r for r in reasons)
    assert "NOBODY" not in json.dumps(meta)
    csv.write_text("patient,class\nPHANTOM-0000,tumour\n")
    with pytest.raises(InputError, match="expected a class in"):
        preprocess(_cfg(labels_from="csv"), [demo / "nifti"], tmp_path / "o2", labels_csv=csv)


def test_labels_option_must_match_labels_from(demo, tmp_path):
    with pytest.raises(ConfigError, match="--labels"):
        preprocess(_cfg(labels_from="csv"), [demo / "nifti"], tmp_path / "out")
    with pytest.raises(ConfigError, match="labels_from"):
        preprocess(_cfg(), [demo / "nifti"], tmp_path / "out", labels_csv=demo / "labels.csv")


def test_empty_or_unreadable_input_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="got none"):
        preprocess(_cfg(labels_from="csv"), [tmp_path / "empty"], tmp_path / "o", tmp_path / "x")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_text("no")
    with pytest.raises(InputError, match="not DICOM"):
        preprocess(_cfg(), [tmp_path / "junk"], tmp_path / "o")


def test_cli_prints_one_line_and_exits_1_on_empty_input(tmp_path):
    from augment.cli import app

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        app, ["preprocess", "--input", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
              "--params", os.devnull],
    )  # fmt: skip
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and "error:" in result.output


def test_cli_runs_the_stage(demo, tmp_path):
    from augment.cli import app

    result = CliRunner().invoke(
        app, ["preprocess", "-i", str(demo / "dicom"), "--out", str(tmp_path / "o"), "--size", "32",
              "--labels", str(demo / "labels.csv"), "--labels-from", "csv",
              "--params", os.devnull],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert SliceStore.open(tmp_path / "o").images.shape[1:] == (1, 32, 32)


def test_organ_and_tumour_masks_need_lesion_labels(tmp_path):
    # Decathlon-style organ (1) + tumour (2): "any non-zero pixel" would call every organ slice
    # a lesion slice, so preprocess asks which labels are positive.
    cases = {}
    for i in range(3):
        image, _ = phantom(seed=i, lesion=False)
        mask = np.zeros(image.shape, np.uint8)
        mask[:, 6:18, 4:16] = 1  # the organ, in every slice
        mask[2:4, 8:14, 6:12] = 2  # the tumour, in slices 2 and 3
        cases[f"case{i}"] = (image, mask)
    root = write_decathlon(tmp_path / "in", cases)
    (root / "dataset.json").write_text(
        '{"labels": {"0": "background", "1": "organ", "2": "tumour"}}'
    )
    with pytest.raises(ConfigError, match="lesion_labels"):
        preprocess(_cfg(), [root], tmp_path / "out")
    preprocess(_cfg(lesion_labels=[2], min_lesion_pixels=1), [root], tmp_path / "out")
    store = SliceStore.open(tmp_path / "out")
    positive = sorted({r["z"] for r in store.rows if r["label"] == 1})
    assert positive == [2, 3]
    assert set(np.unique(store.masks)) == {0, 1, 2}  # the masks keep every label


@pytest.mark.parametrize("name", READERS.names())
def test_every_registered_reader_ingests_its_layout_end_to_end(demo, tmp_path, name):
    # The demo fixture holds one folder per built-in reader, named as the reader.
    layout = demo / name
    assert layout.is_dir(), f"add a {name} layout to the demo fixture"
    meta = preprocess(
        _cfg(format=name, labels_from="csv"), [layout], tmp_path / "out",
        labels_csv=demo / "labels.csv",
    )  # fmt: skip
    assert meta["volumes_read"] == N_PATIENTS and not meta["skipped"]
    assert SliceStore.open(tmp_path / "out").images.shape[0] > 0


def test_summary_counts_the_patients_behind_each_class():
    """'train slices, lesion (from N patients)': N is who has such slices, not the split's size."""
    from rich.console import Console

    from augment.contracts.slice_store import slice_counts
    from augment.preprocessing.stage import summary_table

    rows = [{"split": "train", "label": 0, "patient": p} for p in ("A", "A", "B", "C")]
    rows += [{"split": "train", "label": 1, "patient": "A"}, {"split": "test", "label": 0,
             "patient": "D"}]  # fmt: skip
    meta = {"volumes_read": 4, "window_choice": "CT: abdomen", "files_skipped": 0, "skipped": [],
            "class_names": ["normal", "lesion"], "counts": slice_counts(rows)}  # fmt: skip
    console = Console(record=True, width=120)
    console.print(summary_table(meta))
    text = console.export_text()
    assert re.search(r"train patients\s*│\s*3", text), text
    assert re.search(r"train slices, normal \(from 3 patients\)\s*│\s*4", text), text
    assert re.search(r"train slices, lesion \(from 1 patients\)\s*│\s*1", text), text
    assert re.search(r"test slices, normal \(from 1 patients\)\s*│\s*1", text), text
