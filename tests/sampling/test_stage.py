"""augment sample: exact class counts, seeded reproducibility, every format, nnU-Net/MONAI/DICOM
compatibility, merging with a real data set, and all-or-nothing output on failure."""

from __future__ import annotations

import errno
import gzip
import json
import re
import zipfile
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

from augment.cli import app
from augment.config import SampleConfig
from augment.contracts.model_dir import load_generator, save_generator
from augment.contracts.window import Window
from augment.errors import ConfigError, InputError, StoreError
from augment.nets.dcgan import DCGANSpec, Generator
from augment.sampling.draw import class_counts, generate, noise
from augment.sampling.formats import FORMATS as REGISTERED_FORMATS
from augment.sampling.formats import nnunet, npz, png
from augment.sampling.read import load_synthetic
from augment.sampling.stage import sample

CLASSES = ["normal", "lesion"]
LABELS = {"background": 0, "lesion": 1}
SPACING = (2.0, 1.5)  # (y, x) mm
WINDOW = {"kind": "abdomen", "center": 40.0, "width": 400.0, "low": -160.0, "high": 240.0}
FORMATS = list(REGISTERED_FORMATS.names())  # every registered format, end to end


def _model(root: Path, spec: DCGANSpec, **extra) -> Path:
    torch.manual_seed(0)
    generator = Generator(spec)
    # DCGAN's N(0, 0.02) init gives near-constant output: re-initialise so that samples differ
    # visibly and masks have both labels.
    for module in generator.modules():
        if isinstance(module, (torch.nn.ConvTranspose2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight)
    with torch.no_grad():
        generator.main[-2].weight.mul_(5)
    config = {"spacing": list(SPACING), "window": WINDOW, **extra}  # as augment train writes
    save_generator(root, generator, spec, config)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = DCGANSpec(image_size=32, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)
    root = tmp_path_factory.mktemp("model") / "dcgan"
    return _model(root, spec, class_names=CLASSES, label_names=LABELS)


@pytest.fixture(scope="module")
def plain_model_dir(tmp_path_factory) -> Path:
    spec = DCGANSpec(image_size=32, nz=8, ngf=8, ndf=8)
    return _model(tmp_path_factory.mktemp("plain") / "dcgan", spec)


def _cfg(**kw) -> SampleConfig:
    return SampleConfig(**{"n": 12, "batch_size": 5, "device": "cpu", **kw})


# --------------------------------------------------------------------------- nnU-Net's rules


def check_nnunet_dataset(root: Path) -> dict:
    """Every key and naming rule of nnU-Net v2's documented raw data set format."""
    ds = json.loads((root / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in ds, f"dataset.json lacks {key}"
    channels = ds["channel_names"]
    assert isinstance(channels, dict) and channels
    assert sorted(int(k) for k in channels) == list(range(len(channels)))
    assert all(isinstance(v, str) and v for v in channels.values())
    labels = ds["labels"]
    assert labels.get("background") == 0
    assert all(isinstance(v, int) for v in labels.values()), "region labels are not expected"
    assert sorted(labels.values()) == list(range(len(labels))), "label ids must be consecutive"
    ending = ds["file_ending"]
    assert ending == ".nii.gz"
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(ending) + "$")
    cases: dict[str, set[int]] = {}
    for path in (root / "imagesTr").iterdir():
        match = pattern.match(path.name)
        assert match, f"{path.name}: expected <case>_XXXX{ending}"
        cases.setdefault(match.group(1), set()).add(int(match.group(2)))
    assert all(ch == set(range(len(channels))) for ch in cases.values())
    assert ds["numTraining"] == len(cases)
    label_files = {p.name[: -len(ending)] for p in (root / "labelsTr").iterdir()}
    assert label_files == set(cases), "every image needs its label and vice versa"
    for case in cases:
        seg = nib.load(root / "labelsTr" / f"{case}{ending}")
        values = np.asanyarray(seg.dataobj)
        assert np.array_equal(values, np.round(values)), f"{case}: labels must be integers"
        assert set(np.unique(values).tolist()) <= set(labels.values())
        for ch in cases[case]:
            img = nib.load(root / "imagesTr" / f"{case}_{ch:04d}{ending}")
            assert img.shape == seg.shape, f"{case}: image and label shapes differ"
            assert np.allclose(img.affine, seg.affine), f"{case}: image and label geometry differ"
    return ds


# --------------------------------------------------------------------------- what is drawn


@pytest.mark.parametrize(
    ("n", "ratio"),
    [
        (10, None),
        (7, {"normal": 1, "lesion": 1}),
        (1000, {"normal": 1, "lesion": 3}),
        (5, {"lesion": 1}),
    ],
)
def test_class_counts_are_exact_largest_remainder(n, ratio):
    counts = class_counts(n, CLASSES, ratio)
    assert counts.sum() == n
    shares = np.array([(ratio or dict.fromkeys(CLASSES, 1)).get(c, 0) for c in CLASSES], float)
    quota = shares / shares.sum() * n
    assert np.all(np.abs(counts - quota) < 1)
    assert np.array_equal(counts, class_counts(n, CLASSES, ratio))  # deterministic


def test_class_counts_given_as_counts_are_kept():
    assert class_counts(1000, CLASSES, {"normal": 300, "lesion": 700}).tolist() == [300, 700]


def test_unknown_class_names_it_and_the_known_ones():
    with pytest.raises(ConfigError, match="'tumour'.*normal.*lesion"):
        class_counts(10, CLASSES, {"tumour": 1})


def test_unconditional_model_refuses_a_ratio():
    assert class_counts(9, [], None).tolist() == [9]
    with pytest.raises(ConfigError, match="unconditional"):
        class_counts(9, [], {"normal": 1})


def test_noise_row_depends_only_on_seed_and_index():
    batch = noise(3, np.arange(10), 16)
    alone = np.stack([noise(3, np.array([i]), 16)[0] for i in range(10)])
    assert np.array_equal(batch, alone)
    assert not np.array_equal(batch, noise(4, np.arange(10), 16))
    assert np.abs(noise(3, np.arange(50), 16, truncation=0.5)).max() <= 0.5


# --------------------------------------------------------------------------- reproducibility


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _without_uids(files: dict[str, bytes]) -> dict[str, bytes]:
    """DICOM files without their instance UIDs and the SEGs' creation dates and times (Type 1
    in a SEG), both new on every run."""
    out = {}
    for name, raw in files.items():
        if name.endswith(".dcm"):
            ds = pydicom.dcmread(BytesIO(raw))
            uids = [e for e in ds.iterall() if e.VR == "UI" and "Class" not in e.keyword]
            assert uids, f"{name}: no instance UIDs"
            stamps = [e for e in ds.iterall() if e.VR in ("DA", "TM", "DT") and e.value]
            assert not stamps or name.startswith("labels/"), f"{name}: a time stamp"
            for element in uids + stamps:
                element.value = ""
            ds.file_meta = pydicom.dataset.FileMetaDataset()  # its length follows the UIDs'
            raw = ds.PixelData + str(ds).encode()
        out[name] = raw
    return out


def test_dicom_uids_are_new_on_every_run(tmp_path, model_dir):
    sample(_cfg(format="dicom"), model_dir, tmp_path / "a")
    sample(_cfg(format="dicom"), model_dir, tmp_path / "b")
    first = sorted((tmp_path / "a").rglob("*.dcm"))[0]
    a = pydicom.dcmread(first)
    b = pydicom.dcmread(tmp_path / "b" / first.relative_to(tmp_path / "a"))
    assert a.PixelData == b.PixelData
    for key in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        assert a[key].value != b[key].value, key


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_seed_gives_byte_identical_files(tmp_path, model_dir, fmt):
    sample(_cfg(format=fmt), model_dir, tmp_path / "a")
    sample(_cfg(format=fmt), model_dir, tmp_path / "b")
    sample(_cfg(format=fmt, seed=1), model_dir, tmp_path / "c")
    a, b, c = (_files(tmp_path / x) for x in "abc")
    if fmt == "dicom":  # the pixels repeat; the UIDs (and SEG dates) are new on every run
        a, b, c = (_without_uids(files) for files in (a, b, c))
    assert a == b
    data = [k for k in a if k not in ("manifest.csv", "synthetic.json", "dataset.json")]
    if fmt == "dicom":  # an untrained model's label maps may coincide across seeds
        data = [k for k in data if k.startswith("images/")]
    assert data and all(a[k] != c[k] for k in data)


def test_files_carry_no_time_stamp(every_format):
    # Runs within one second would hide a time stamp from the byte-identity test above.
    raw = (every_format["nnunet"] / "imagesTr" / "syn_000000_0000.nii.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip MTIME is 0
    assert raw[3] == 0  # no FNAME field either
    with zipfile.ZipFile(every_format["npz"] / "samples.npz") as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    ds = pydicom.dcmread(every_format["dicom"] / "images" / "syn_000000.dcm")
    assert not ds.get("StudyDate") and not ds.get("ContentDate")


def test_manifest_row_regenerates_its_sample(tmp_path, model_dir):
    out = tmp_path / "syn"
    sample(_cfg(n=9, batch_size=4, class_ratio={"normal": 1, "lesion": 2}), model_dir, out)
    syn = load_synthetic(out)
    generator, info = load_generator(model_dir, "cpu")
    for k in (0, 5, 8):
        row = syn.rows[k]
        assert row["model_sha256"] == info.checksum
        image, mask = generate(
            generator, info, int(row["seed"]), np.array([int(row["noise_index"])]),
            np.array([int(row["class"])]),
        )  # fmt: skip
        stored = nnunet.read_nifti_slice(out / row["file"])
        assert np.allclose(
            Window.preset("abdomen", 40, 400, "HU").to_units(image[0]), stored, atol=1e-3
        )
        assert np.array_equal(mask[0], nnunet.read_nifti_slice(out / row["label_file"]))


def test_classes_come_in_exact_blocks(tmp_path, model_dir):
    sample(_cfg(n=10, class_ratio={"normal": 3, "lesion": 7}), model_dir, tmp_path / "s")
    syn = load_synthetic(tmp_path / "s")
    assert syn.classes.tolist() == [0] * 3 + [1] * 7
    assert [r["class_name"] for r in syn.rows] == ["normal"] * 3 + ["lesion"] * 7


# --------------------------------------------------------------------------- formats


@pytest.fixture(scope="module")
def every_format(tmp_path_factory, model_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    outs = {}
    for fmt in FORMATS:
        outs[fmt] = root / fmt
        sample(_cfg(format=fmt, png_bits=16 if fmt == "png" else 8), model_dir, outs[fmt])
    return outs


def test_every_format_reads_back_the_same_samples(every_format):
    ref = load_synthetic(every_format["npz"])
    assert ref.images.shape == (12, 1, 32, 32) and ref.images.dtype == np.float32
    assert ref.images.std() > 0.05 and ref.images.min() >= -1 and ref.images.max() <= 1
    tolerance = {"nnunet": 1e-4, "png": 1 / 65535 + 1e-6, "dicom": 1 / 2000 + 1e-6}
    for fmt, tol in tolerance.items():
        got = load_synthetic(every_format[fmt])
        assert np.abs(got.images - ref.images).max() <= tol, fmt
        assert np.array_equal(got.masks, ref.masks), fmt
        assert np.array_equal(got.classes, ref.classes), fmt
        assert got.class_names == CLASSES
    assert set(np.unique(ref.masks).tolist()) <= set(LABELS.values())


def test_every_file_says_it_is_synthetic(every_format):
    for fmt, root in every_format.items():
        for path in root.rglob("*"):
            if path.is_file() and path.parent != root:
                assert path.name.startswith("syn_"), (fmt, path)


def test_nnunet_output_passes_the_dataset_rules(every_format):
    ds = check_nnunet_dataset(every_format["nnunet"])
    assert ds["labels"] == LABELS and ds["channel_names"] == {"0": "CT"}
    assert len(ds["training"]) == 12


def test_nifti_geometry_and_units(every_format):
    root = every_format["nnunet"]
    img = nib.load(root / "imagesTr" / "syn_000000_0000.nii.gz")
    assert img.shape == (32, 32, 1) and img.get_data_dtype() == np.float32
    sy, sx = SPACING
    assert np.allclose(img.affine, np.diag([-sx, -sy, max(SPACING), 1]))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    hu = np.asanyarray(img.dataobj)
    assert hu.min() >= -160 - 1e-3 and hu.max() <= 240 + 1e-3  # the abdomen window in HU
    label = nib.load(root / "labelsTr" / "syn_000000.nii.gz")
    assert label.get_data_dtype() == np.uint8


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_nifti_writer_matches_nibabel_byte_for_byte(tmp_path, dtype):
    # The writer reuses one nibabel header per run; the result must be what nibabel writes.
    arr = (np.random.default_rng(0).random((5, 7)) * 50).astype(dtype)  # (y, x), not square
    ref = nib.Nifti1Image(
        np.ascontiguousarray(arr.T[:, :, None]), nnunet.slice_affine(SPACING, 3.0)
    )
    ref.header.set_xyzt_units("mm")
    ref.header.set_qform(ref.affine, code=1)
    ref.header.set_sform(ref.affine, code=1)
    assert gzip.decompress(nnunet.nifti_bytes(arr, SPACING, 3.0, dtype)) == ref.to_bytes()
    nnunet.write_nifti_slice(tmp_path / "a.nii.gz", arr, SPACING, 3.0, dtype)
    assert np.array_equal(nnunet.read_nifti_slice(tmp_path / "a.nii.gz"), arr)


def test_monai_reads_the_dataset_json(every_format):
    from monai.data import load_decathlon_datalist
    from monai.transforms import LoadImaged

    root = every_format["nnunet"]
    items = load_decathlon_datalist(root / "dataset.json", data_list_key="training")
    assert len(items) == 12 and all(Path(it["image"]).is_file() for it in items)
    loaded = LoadImaged(keys=["image", "label"])(items[3])
    assert tuple(loaded["image"].shape) == (32, 32, 1) == tuple(loaded["label"].shape)
    assert np.allclose(loaded["image"].pixdim[:2], SPACING[::-1])
    assert loaded["class"] == load_synthetic(root).classes[3]


def test_dicom_is_a_valid_unmistakable_secondary_capture(every_format):
    # The masks are DICOM Segmentations: tests/sampling/test_dicom_seg.py
    root = every_format["dicom"]
    files = sorted((root / "images").glob("*.dcm"))
    uids = set()
    for path in files:
        ds = pydicom.dcmread(path)  # no force: a proper Part 10 file
        pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.ConversionType == "SYN"
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod
        assert ds.BurnedInAnnotation == "NO"
        assert "SYNTHETIC" in ds.SeriesDescription
        assert str(ds.PatientName) == "SYNTHETIC^AUGMENT" and ds.PatientID == path.stem
        assert not any(elem.tag.is_private for elem in ds.iterall())
        assert ds.SOPInstanceUID.is_valid
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(files) == 12
    ds = pydicom.dcmread(files[0])
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = Window.preset("abdomen", 40, 400, "HU").to_units(
        load_synthetic(every_format["npz"]).images[0, 0]
    )
    assert np.abs(hu - expected).max() <= 0.11 and ds.RescaleType == "HU"


def test_png_bit_depths(every_format, tmp_path, model_dir):
    assert png.read_png(every_format["png"] / "images" / "syn_000000.png").dtype == np.uint16
    sample(_cfg(format="png"), model_dir, tmp_path / "p8")
    assert png.read_png(tmp_path / "p8" / "images" / "syn_000000.png").dtype == np.uint8


def test_unconditional_maskless_model(tmp_path, plain_model_dir):
    sample(_cfg(format="png"), plain_model_dir, tmp_path / "p")
    syn = load_synthetic(tmp_path / "p")
    assert syn.masks is None and syn.class_names == [] and (syn.classes == -1).all()
    assert not (tmp_path / "p" / "labels").exists()
    with pytest.raises(ConfigError, match="nnunet needs masks"):
        sample(_cfg(), plain_model_dir, tmp_path / "n")


def test_unconditional_model_with_masks_writes_nnunet(tmp_path):
    spec = DCGANSpec(image_size=32, mask_channels=2, nz=8, ngf=8, ndf=8)
    model = _model(tmp_path / "m", spec, label_names=LABELS)
    sample(_cfg(n=5), model, tmp_path / "s")
    ds = check_nnunet_dataset(tmp_path / "s")
    assert [e["class"] for e in ds["training"]] == [-1] * 5
    assert (load_synthetic(tmp_path / "s").classes == -1).all()


# --------------------------------------------------------------------------- bad input, failure


def test_existing_output_is_refused_unless_overwrite(tmp_path, model_dir):
    out = tmp_path / "syn"
    sample(_cfg(n=3), model_dir, out)
    with pytest.raises(FileExistsError):
        sample(_cfg(n=4), model_dir, out)
    assert len(load_synthetic(out).rows) == 3
    sample(_cfg(n=4, overwrite=True), model_dir, out)
    assert len(load_synthetic(out).rows) == 4


def test_missing_or_incompatible_model_dir(tmp_path, model_dir):
    with pytest.raises(StoreError, match="missing"):
        sample(_cfg(), tmp_path / "nowhere", tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    config["spec"]["ngf"] = 16  # the weights no longer fit
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "generator.safetensors").write_bytes(
        (model_dir / "generator.safetensors").read_bytes()
    )
    with pytest.raises(StoreError, match="do not fit"):
        sample(_cfg(), broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt", ["nnunet", "npz"])
def test_full_disk_midway_leaves_nothing_partial(tmp_path, model_dir, monkeypatch, fmt):
    out = tmp_path / "out" / "syn"
    sample(_cfg(n=3), model_dir, out)
    before = _files(out)
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    if fmt == "nnunet":
        real = nnunet.write_nifti_slice
        monkeypatch.setattr(nnunet, "write_nifti_slice", full_disk)
    else:
        real = npz.NpyStream.append
        monkeypatch.setattr(npz.NpyStream, "append", full_disk)
    with pytest.raises(OSError) as info:
        sample(_cfg(n=40, batch_size=4, format=fmt, overwrite=True), model_dir, out)
    assert info.value.errno == errno.ENOSPC
    assert _files(out) == before  # the old output is untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["syn"]  # no temporary left


def test_cli_full_disk_is_one_clear_line(tmp_path, model_dir, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nnunet, "write_nifti_slice", full_disk)
    result = CliRunner().invoke(app, _cli_args(tmp_path, model_dir))
    assert result.exit_code == 1 and "no space left" in result.output
    assert not (tmp_path / "syn").exists()


def _cli_args(tmp_path: Path, model_dir: Path, *more: str) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text("sample:\n  n: 6\n  batch_size: 4\n  device: cpu\n")
    out = str(tmp_path / "syn")
    return ["sample", "--model", str(model_dir), "--out", out, "--params", str(params), *more]


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--n", "0"], "sample.n"),
        (["--class", "tumour"], "unknown class 'tumour'"),
        (["--class-ratio", "normal=1,lesion"], "expected name=number"),
        (["--class", "normal", "--class-ratio", "normal=1"], "got both"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, model_dir, more, message):
    result = CliRunner().invoke(app, _cli_args(tmp_path, model_dir, *more))
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "syn").exists()


def test_cli_class_option_samples_that_class_only(tmp_path, model_dir):
    result = CliRunner().invoke(app, _cli_args(tmp_path, model_dir, "--class", "lesion"))
    assert result.exit_code == 0, result.output
    assert (load_synthetic(tmp_path / "syn").classes == 1).all()


def test_cli_nnunet_raw_names_the_folder_as_nnunet_expects(tmp_path, model_dir):
    raw = tmp_path / "nnUNet_raw"
    more = ("--nnunet-raw", str(raw), "--dataset-id", "7", "--dataset-name", "LiverSyn")
    result = CliRunner().invoke(app, _cli_args(tmp_path, model_dir, *more))
    assert result.exit_code == 0, result.output
    folder = raw / "Dataset007_LiverSyn"
    assert json.loads((folder / "dataset.json").read_text())["name"] == "Dataset007_LiverSyn"
    assert check_nnunet_dataset(folder) and not (tmp_path / "syn").exists()
    png = CliRunner().invoke(app, _cli_args(tmp_path, model_dir, *more, "--format", "png"))
    assert png.exit_code == 1 and "--nnunet-raw: expected sample.format nnunet" in png.output


# --------------------------------------------------------------------------- merge with real


def _real_set(root: Path, n: int = 6, labels: dict | None = None) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        affine = np.diag([1.5, 1.5, 5.0, 1.0])
        image = rng.normal(0, 100, (16, 16, 3)).astype(np.float32)
        label = (rng.random((16, 16, 3)) > 0.8).astype(np.uint8)
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels or LABELS,
        "numTraining": n,
        "file_ending": ".nii.gz",
        "name": "Dataset042_Real",
    }
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def test_merge_keeps_synthetic_cases_out_of_validation(tmp_path, model_dir):
    real = _real_set(tmp_path / "real")
    out = tmp_path / "merged"
    summary = sample(_cfg(n=7), model_dir, out, merge_with_real=real)
    assert summary["real_cases"] == 6
    ds = check_nnunet_dataset(out)
    assert ds["numTraining"] == 13 and ds["name"] == "Dataset042_Real"
    assert len(ds["training"]) == 13
    real_cases = {f"case_{i:03d}" for i in range(6)}
    syn_cases = {r["case"] for r in load_synthetic(out).rows}
    assert len(syn_cases) == 7
    folds = json.loads((out / "splits_final.json").read_text())
    assert len(folds) == 5
    assert sorted(c for f in folds for c in f["val"]) == sorted(real_cases)  # each once
    for fold in folds:
        assert not syn_cases & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == real_cases | syn_cases
        assert not set(fold["train"]) & set(fold["val"])
    src = real / "imagesTr" / "case_000_0000.nii.gz"
    assert (out / "imagesTr" / src.name).read_bytes() == src.read_bytes()


def test_merge_keeps_the_real_sets_own_folds(tmp_path, model_dir):
    real = _real_set(tmp_path / "real")
    own = [{"train": ["case_000", "case_001"], "val": ["case_002"]}]
    (real / "splits_final.json").write_text(json.dumps(own))
    sample(_cfg(n=2), model_dir, tmp_path / "m", merge_with_real=real)
    folds = json.loads((tmp_path / "m" / "splits_final.json").read_text())
    assert folds == [
        {"train": ["case_000", "case_001", "syn_000000", "syn_000001"], "val": ["case_002"]}
    ]


def test_merge_refuses_other_labels_or_a_bad_set(tmp_path, model_dir):
    other = _real_set(tmp_path / "other", labels={"background": 0, "liver": 1})
    with pytest.raises(ConfigError, match="labels"):
        sample(_cfg(), model_dir, tmp_path / "m", merge_with_real=other)
    bad = _real_set(tmp_path / "bad")
    (bad / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(InputError, match="case_002"):
        sample(_cfg(), model_dir, tmp_path / "m", merge_with_real=bad)
    with pytest.raises(ConfigError, match="nnunet"):
        sample(_cfg(format="png"), model_dir, tmp_path / "m", merge_with_real=bad)
    assert not (tmp_path / "m").exists()


def test_load_synthetic_names_a_directory_that_is_not_one(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path)):
        load_synthetic(tmp_path)
