"""NIfTI reader: canonical orientation, scaling, channels, masks and damaged files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from augment.errors import InputError
from augment.preprocessing.readers.nifti import (
    canonical_zyx,
    find_cases,
    read_label_names,
    read_nifti,
)
from tests.preprocessing.badinputs import (
    SPACING,
    phantom,
    write_decathlon,
    write_nifti,
    write_ras_nifti,
)


def test_lps_and_ras_files_read_to_the_same_canonical_volume(tmp_path):
    image, _ = phantom()
    a = read_nifti(write_nifti(tmp_path / "a.nii.gz", image, SPACING), "P1", "P1/series-0")
    b = read_nifti(write_ras_nifti(tmp_path / "b.nii", image, SPACING), "P1", "P1/series-0")
    np.testing.assert_allclose(a.image[0], image, atol=1e-4)
    np.testing.assert_allclose(b.image[0], image, atol=1e-4)
    assert a.spacing == pytest.approx(SPACING) and b.spacing == pytest.approx(SPACING)


def test_canonical_zyx_undoes_a_permuted_affine():
    rng = np.random.default_rng(0)
    zyx = rng.normal(size=(3, 4, 5))
    ras = zyx.transpose(2, 1, 0)[::-1, ::-1, :]  # (R, A, S) order
    # Store the voxels as (S, R, A): permute the axes and the affine's columns alike.
    data = ras.transpose(2, 0, 1)
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 3.0, 1.0, 2.0, 1.0
    out, spacing = canonical_zyx(data, affine)
    np.testing.assert_array_equal(out, zyx)
    assert spacing == (3.0, 2.0, 1.0)


def test_header_scaling_is_applied(tmp_path):
    image, _ = phantom()
    stored = np.round((image + 1024) / 2).astype(np.int16)
    img = nib.Nifti1Image(stored.transpose(2, 1, 0), np.diag([-2.0, -2.0, 5.0, 1.0]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "s.nii.gz")
    vol = read_nifti(tmp_path / "s.nii.gz", "P1", "s")
    np.testing.assert_allclose(vol.image[0], stored * 2.0 - 1024.0)


def test_4d_channels_are_all_read_or_chosen(tmp_path):
    image, _ = phantom()
    data = np.stack([image, image + 7], axis=-1).transpose(2, 1, 0, 3)  # (X, Y, Z, C)
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, -2.0, 5.0, 1.0])), tmp_path / "c.nii.gz")
    vol = read_nifti(tmp_path / "c.nii.gz", "P1", "c")  # every channel: none dropped
    assert vol.image.shape == (2, *image.shape) and vol.channels == ("0", "1")
    np.testing.assert_allclose(vol.image[1], image + 7, atol=1e-4)
    vol = read_nifti(tmp_path / "c.nii.gz", "P1", "c", channels=[1])
    np.testing.assert_allclose(vol.image[0], image + 7, atol=1e-4)
    with pytest.raises(InputError, match=r"expected channels \[2\], got 2 channel"):
        read_nifti(tmp_path / "c.nii.gz", "P1", "c", channels=[2])
    with pytest.raises(InputError, match=r"expected 3 channels \(T1, T2, FLAIR\)"):
        read_nifti(tmp_path / "c.nii.gz", "P1", "c", declared=("T1", "T2", "FLAIR"))


def test_decathlon_layout_groups_channel_files_and_pairs_masks(tmp_path):
    cases = {"A-1": phantom(seed=1), "B-2": phantom(seed=2)}
    write_decathlon(tmp_path, cases)
    write_nifti(tmp_path / "imagesTr" / "A-1_0001.nii.gz", cases["A-1"][0] + 5, SPACING)
    found = find_cases(tmp_path)
    assert [c.case for c in found] == ["A-1", "B-2"]
    assert [c.channel_ids for c in found] == [(0, 1), (0,)]
    assert all(c.mask is not None and c.mask.parent.name == "labelsTr" for c in found)
    assert read_label_names(tmp_path) == {"background": 0, "lesion": 1}
    vol = read_nifti(found[0].images, "P", "s", mask=found[0].mask)
    assert vol.image.shape[0] == 2  # the second channel file is read, not dropped
    np.testing.assert_allclose(vol.image[1], vol.image[0] + 5, atol=1e-3)
    np.testing.assert_array_equal(vol.mask, cases["A-1"][1])


def test_channel_suffixes_outside_nnunet_folders_are_cases(tmp_path):
    for name in ("pat_0000", "pat_0001"):  # two patients that happen to be numbered so
        write_nifti(tmp_path / f"{name}.nii.gz", phantom()[0], SPACING)
    assert [c.case for c in find_cases(tmp_path)] == ["pat_0000", "pat_0001"]


def test_a_missing_channel_file_or_count_is_a_reason_not_a_silent_drop(tmp_path):
    from augment.config import PreprocessConfig
    from augment.preprocessing.readers.nifti import NiftiReader

    cases = {"A-1": phantom(seed=1), "B-2": phantom(seed=2)}
    write_decathlon(tmp_path, cases)
    (tmp_path / "dataset.json").write_text(
        '{"labels": {"background": 0, "lesion": 1}, "channel_names": {"0": "T1", "1": "FLAIR"}}'
    )
    write_nifti(tmp_path / "imagesTr" / "A-1_0001.nii.gz", cases["A-1"][0], SPACING)
    write_nifti(tmp_path / "imagesTr" / "B-2_0002.nii.gz", cases["B-2"][0], SPACING)  # no _0001
    reader, cfg = NiftiReader(), PreprocessConfig()
    found = {f.raw_patient: f for f in reader.discover(tmp_path, cfg, str, map).found}
    vol = reader.read(found["A-1"].item, "P1", "s", str, cfg)
    assert vol.channels == ("T1", "FLAIR") and vol.image.shape[0] == 2
    with pytest.raises(InputError, match=r"a channel file is missing \(found _0000, _0002\)"):
        reader.read(found["B-2"].item, "P2", "s", str, cfg)


def test_mask_pattern(tmp_path):
    image, mask = phantom()
    write_nifti(tmp_path / "x.nii.gz", image, SPACING)
    write_nifti(tmp_path / "x_seg.nii.gz", mask, SPACING, dtype=np.uint8)
    found = find_cases(tmp_path, mask_pattern="{case}_seg.nii.gz")
    assert [(c.case, c.mask.name) for c in found] == [("x", "x_seg.nii.gz")]


@pytest.mark.parametrize(
    ("case", "match"),
    [("cut", "truncated"), ("garbage", "NIfTI"), ("shape", "mask of shape"), ("geom", "geometry"),
     ("zeroaffine", "affine"), ("nanaffine", "affine"), ("huge", "at most")],
)  # fmt: skip
def test_damaged_files_and_mismatched_masks_are_input_errors(tmp_path, case, match):
    from tests.preprocessing.badinputs import make_nifti_corpus

    make_nifti_corpus(tmp_path)
    with pytest.raises(InputError, match=match) as err:
        image = next((tmp_path / "imagesTr").glob(f"{case}_0000.nii*"))
        read_nifti(
            image, "P1", "s", mask=tmp_path / "labelsTr" / f"{case}.nii.gz", name="F123",
        )  # fmt: skip
    assert str(err.value).startswith("F123:")
    assert str(tmp_path) not in str(err.value) and f"{case}_0000" not in str(err.value)


def test_same_file_name_in_patient_folders_stays_apart(tmp_path):
    image, _ = phantom()
    for subject in ("sub-01", "sub-02", "sub-03"):
        (tmp_path / subject).mkdir()
        write_ras_nifti(tmp_path / subject / "ct.nii.gz", image, SPACING)
    write_ras_nifti(tmp_path / "unique.nii.gz", image, SPACING)
    cases = sorted(c.case for c in find_cases(tmp_path))
    assert cases == ["sub-01/ct", "sub-02/ct", "sub-03/ct", "unique"]
