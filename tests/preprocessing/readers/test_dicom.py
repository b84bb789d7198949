"""DICOM reader: ordering, rescale, photometry, orientation, multi-frame, codecs, skips."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import JPEGLSLossless, generate_uid

from augment.errors import InputError
from augment.preprocessing.readers.dicom import read_series, scan_dicom
from tests.preprocessing.badinputs import (
    SPACING,
    dicom_slice,
    make_dicom_corpus,
    phantom,
    write_dicom_series,
)


def _read_one(root):
    series, skipped = scan_dicom(root)
    assert len(series) == 1, skipped
    return read_series(series[0], "P1", "P1/series-0")


def test_series_is_ordered_by_position_not_name_or_instance_number(tmp_path):
    image, _ = phantom()
    write_dicom_series(tmp_path / "a" / "deep", image, SPACING, "PAT-1", shuffle_seed=3)
    vol = _read_one(tmp_path)
    np.testing.assert_allclose(vol.image[0], image, atol=0.51)
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.modality == "CT" and vol.patient == "P1"


@pytest.mark.parametrize(
    ("slope", "intercept", "monochrome1"),
    [(1.0, -1024.0, False), (2.0, 0.0, False), (1.0, 0.0, True)],
)
def test_rescale_signed_pixels_and_monochrome1(tmp_path, slope, intercept, monochrome1):
    image, _ = phantom()
    write_dicom_series(tmp_path, image, SPACING, "PAT-1", slope=slope, intercept=intercept,
                       monochrome1=monochrome1)  # fmt: skip
    vol = _read_one(tmp_path)
    np.testing.assert_allclose(vol.image[0], image, atol=slope / 2 + 1e-3)


def test_missing_rescale_is_identity(tmp_path):
    image, _ = phantom()
    paths = write_dicom_series(tmp_path, image, SPACING, "PAT-1", intercept=0.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path)
    np.testing.assert_allclose(_read_one(tmp_path).image[0], image, atol=0.51)


def test_sagittal_acquisition_reads_to_the_same_canonical_volume(tmp_path):
    image, _ = phantom()
    nz, _, nx = image.shape
    uid = generate_uid()
    for i in range(nx):
        # rows run inferior (down the image), columns run posterior; slices step along x.
        position = (-50.0 + i * SPACING[2], -40.0, -100.0 + (nz - 1) * SPACING[0])
        pixels = image[::-1, :, i]
        ds = dicom_slice(pixels, position, (SPACING[0], SPACING[1]), "PAT-1", uid, intercept=0.0)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(tmp_path / f"{(i * 7) % nx:03d}.dcm", enforce_file_format=True)
    vol = _read_one(tmp_path)
    np.testing.assert_allclose(vol.image[0], image, atol=0.51)
    assert vol.spacing == pytest.approx(SPACING)


def test_enhanced_multiframe_file(tmp_path):
    image, _ = phantom()
    ds = dicom_slice(image[0], (0, 0, 0), SPACING[1:], "PAT-1", generate_uid(), intercept=0.0)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing
    del ds.RescaleSlope, ds.RescaleIntercept
    order = np.random.default_rng(0).permutation(image.shape[0])
    ds.NumberOfFrames = image.shape[0]
    ds.PixelData = np.round((image[order] + 1000) / 2).astype(np.int16).tobytes()
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = list(SPACING[1:])
    shared.PixelValueTransformationSequence = Sequence([Dataset()])
    shared.PixelValueTransformationSequence[0].RescaleSlope = 2
    shared.PixelValueTransformationSequence[0].RescaleIntercept = -1000
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in order:
        item = Dataset()
        item.PlanePositionSequence = Sequence([Dataset()])
        item.PlanePositionSequence[0].ImagePositionPatient = [0, 0, float(z * SPACING[0])]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    vol = _read_one(tmp_path)
    np.testing.assert_allclose(vol.image[0], image, atol=1.01)
    assert vol.spacing == pytest.approx(SPACING)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
)
def test_compressed_syntaxes_decode_like_the_uncompressed_file(tmp_path, name):
    (tmp_path / "raw").mkdir()
    (tmp_path / "cmp").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "raw" / "a.dcm")
    shutil.copy(get_testdata_file(name), tmp_path / "cmp" / "a.dcm")
    np.testing.assert_array_equal(
        _read_one(tmp_path / "cmp").image, _read_one(tmp_path / "raw").image
    )


def test_jpeg_decodes(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    ds.PatientID = "PAT-1"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    ds.save_as(tmp_path / "a.dcm")
    vol = _read_one(tmp_path)
    assert vol.image.shape == (1, 1, ds.Rows, ds.Columns) and np.ptp(vol.image) > 0


def test_missing_decoder_names_the_package(tmp_path, monkeypatch):
    shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), tmp_path / "a.dcm")
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    series, _ = scan_dicom(tmp_path)
    with pytest.raises(InputError, match="pip install pylibjpeg-libjpeg"):
        read_series(series[0], "P1", "s")


def test_non_image_objects_are_skipped_with_reasons(tmp_path):
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "sr.dcm")
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    shutil.copy(get_testdata_file("DICOMDIR", read=False) or "", tmp_path / "DICOMDIR")
    expected = make_dicom_corpus(tmp_path / "corpus")
    series, skipped = scan_dicom(tmp_path, name_of=lambda p: p.relative_to(tmp_path).as_posix())
    reasons = dict(skipped)
    assert "structured report" in reasons["sr.dcm"]
    assert "RTSTRUCT" in reasons["rs.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    for folder in ("notdicom", "nopixels", "localizer"):
        (name,) = [n for n in reasons if n.startswith(f"corpus/{folder}/")]
        assert expected[folder] in reasons[name]
    assert all(not s.files[0].name.startswith("sr") for s in series)


@pytest.mark.parametrize("folder", ["duplicate", "gap", "mixed", "truncated"])
def test_broken_series_are_input_errors(tmp_path, folder):
    expected = make_dicom_corpus(tmp_path)
    series, skipped = scan_dicom(tmp_path / folder)
    if not series:  # a broken header is caught while scanning
        assert expected[folder] in skipped[0][1]
        return
    with pytest.raises(InputError, match=expected[folder]):
        read_series(series[0], "P1", "s")


@pytest.mark.parametrize(("bits", "stored", "signed"), [(16, 16, 1), (16, 12, 0), (8, 8, 0)])
def test_plain_pixel_fast_path_matches_pydicom(tmp_path, bits, stored, signed):
    image, _ = phantom()
    paths = write_dicom_series(tmp_path, image, SPACING, "PAT-1", intercept=-1024.0)
    for path in paths:  # re-encode with the parametrised pixel format
        ds = pydicom.dcmread(path)
        values = ds.pixel_array.astype(np.int64) + 1024  # 0 .. ~1400
        values = values // 8 if bits == 8 else values
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
        ds.PixelRepresentation = signed
        kind = f"{'i' if signed else 'u'}{bits // 8}"
        ds.PixelData = values.astype(kind).tobytes()
        ds.RescaleIntercept = -1024.0 if bits == 16 else -1024.0 / 8
        ds.save_as(path)
    series, _ = scan_dicom(tmp_path)
    assert all(info.offset is not None for info in series[0].infos)  # the fast path is taken
    slow = replace(series[0], infos=tuple(replace(i, offset=None) for i in series[0].infos))
    fast_vol, slow_vol = read_series(series[0], "P", "s"), read_series(slow, "P", "s")
    np.testing.assert_array_equal(fast_vol.image, slow_vol.image)
    assert fast_vol.spacing == slow_vol.spacing
