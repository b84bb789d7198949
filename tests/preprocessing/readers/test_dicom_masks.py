"""DICOM masks: SEG (highdicom) and RTSTRUCT (pydicom) files read onto their series' grid.

The series are written with shuffled file names and, unless a test says otherwise, as sagittal
slices (rows running inferior, columns posterior, slices stepping along x): the reader sorts
them by position and turns them to the canonical (Z, Y, X) layout, and the mask must follow.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import RTStructureSetStorage, generate_uid
from skimage.measure import find_contours

from augment.config import PreprocessConfig
from augment.contracts.slice_store import SliceStore
from augment.errors import ConfigError, InputError
from augment.io.dicom import part10_dataset
from augment.preprocessing.privacy import ENV_VAR
from augment.preprocessing.readers.dicom import Series, read_series, scan_dicom
from augment.preprocessing.stage import preprocess
from tests.preprocessing.badinputs import SPACING, dicom_slice, phantom, write_decathlon

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "test-key")


def _planes(volume: np.ndarray, orientation: tuple[float, ...]) -> list[np.ndarray]:
    """The 2D planes of a canonical (Z, Y, X) volume as the files of a series store them."""
    if orientation == AXIAL:
        return list(volume)
    return [volume[::-1, :, i] for i in range(volume.shape[2])]  # rows: superior to inferior


def _plane_geometry(k: int, shape: tuple[int, ...], orientation: tuple[float, ...]):
    """(ImagePositionPatient, PixelSpacing) of plane ``k`` of a canonical volume."""
    nz = shape[0]
    if orientation == AXIAL:
        return (-50.0, -40.0, -100.0 + k * SPACING[0]), (SPACING[1], SPACING[2])
    return (-50.0 + k * SPACING[2], -40.0, -100.0 + (nz - 1) * SPACING[0]), (SPACING[0], SPACING[1])


def write_series(
    folder: Path,
    image: np.ndarray,
    patient: str,
    orientation=SAGITTAL,
    seed: int = 0,
    jitter: float = 0.0,
) -> list[Dataset]:
    """A CT series of a canonical (Z, Y, X) volume, files named in shuffled order; returns the
    datasets in plane order (what the mask writers take). ``jitter``: slice positions moved
    by this many mm along the normal, alternately back and forth (as scanners write them)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for k, pixels in enumerate(_planes(image, orientation)):
        position, spacing = _plane_geometry(k, image.shape, orientation)
        ds = dicom_slice(pixels, position, spacing, patient, series)
        ds.ImageOrientationPatient = list(orientation)
        if jitter:
            shift = jitter * (1 if k % 2 else -1) * np.cross(orientation[:3], orientation[3:])
            ds.ImagePositionPatient = [f"{v:.4f}" for v in np.add(position, shift)]
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        ds.PatientSex, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "F", "1200", "1", ""
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.SliceThickness = SPACING[2] if orientation == SAGITTAL else SPACING[0]
        datasets.append(ds)
    order = np.random.default_rng(seed).permutation(len(datasets))
    for n, k in enumerate(order):
        datasets[k].save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
    return datasets


def write_seg(
    path: Path,
    sources: list[Dataset],
    planes: list[np.ndarray],
    label: str = "Tumour",
    fractional: bool = False,
) -> hd.seg.Segmentation:
    """A DICOM SEG with one segment (binary, or fractional from float planes), by highdicom."""
    desc = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    pixels = np.stack(planes).astype(np.float32 if fractional else bool)
    kind = hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else "BINARY"
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=kind,
        segment_descriptions=[desc], max_fractional_value=255,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1", omit_empty_frames=bool(pixels.any()),
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def _item(**values) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _to_patient(ds: Dataset, rows_cols: np.ndarray) -> np.ndarray:
    """(n, 2) pixel (row, column) coordinates of image ``ds`` to (n, 3) LPS mm."""
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ps = [float(v) for v in ds.PixelSpacing]
    origin = np.array([float(v) for v in ds.ImagePositionPatient])
    return (
        origin
        + rows_cols[:, 1:2] * ps[1] * iop[None, :3]
        + rows_cols[:, 0:1] * ps[0] * iop[None, 3:]
    )


def write_rtstruct(
    path: Path, sources: list[Dataset], polygons: list[list[np.ndarray]], name: str = "Tumour"
) -> Dataset:
    """An RT structure set with one ROI; ``polygons[k]`` are (n, 2) (row, column) contours on
    source image k."""
    ref = sources[0]
    ds = part10_dataset(RTStructureSetStorage, generate_uid())
    ds.Modality, ds.PatientID, ds.StudyInstanceUID = "RTSTRUCT", ref.PatientID, ref.StudyInstanceUID
    ds.SeriesInstanceUID, ds.StructureSetLabel = generate_uid(), "test"

    def image_ref(src: Dataset) -> Dataset:
        return _item(ReferencedSOPClassUID=src.SOPClassUID,
                     ReferencedSOPInstanceUID=src.SOPInstanceUID)  # fmt: skip

    series = _item(SeriesInstanceUID=ref.SeriesInstanceUID,
                   ContourImageSequence=Sequence([image_ref(s) for s in sources]))  # fmt: skip
    study = _item(ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                  ReferencedSOPInstanceUID=ref.StudyInstanceUID,
                  RTReferencedSeriesSequence=Sequence([series]))  # fmt: skip
    ds.ReferencedFrameOfReferenceSequence = Sequence([_item(
        FrameOfReferenceUID=ref.FrameOfReferenceUID, RTReferencedStudySequence=Sequence([study])
    )])  # fmt: skip
    ds.StructureSetROISequence = Sequence([_item(
        ROINumber=1, ReferencedFrameOfReferenceUID=ref.FrameOfReferenceUID, ROIName=name,
        ROIGenerationAlgorithm="MANUAL",
    )])  # fmt: skip
    contours = []
    for src, shapes in zip(sources, polygons, strict=True):
        for polygon in shapes:
            points = _to_patient(src, np.asarray(polygon, dtype=float))
            contours.append(_item(
                ContourImageSequence=Sequence([image_ref(src)]),
                ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(points),
                ContourData=[f"{v:.4f}" for v in points.ravel()],
            ))  # fmt: skip
    ds.ROIContourSequence = Sequence([_item(
        ReferencedROINumber=1, ROIDisplayColor=[255, 0, 0], ContourSequence=Sequence(contours)
    )])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def _outlines(plane: np.ndarray) -> list[np.ndarray]:
    """Closed (row, column) outlines of a binary plane, half-way between pixel centres."""
    return [c - 1 for c in find_contours(np.pad(plane.astype(float), 1), 0.5)]


def _outlines_of(mask: np.ndarray) -> list[list[np.ndarray]]:
    """The outlines of each sagittal plane of a canonical mask."""
    return [_outlines(p) for p in _planes(mask, SAGITTAL)]


def _read(root: Path):
    def name_of(path: Path) -> str:
        return path.relative_to(root).as_posix()

    series, skipped = scan_dicom(root, name_of)
    assert len(series) == 1, skipped
    return read_series(series[0], "P1", "P1/series-0", name_of), skipped


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ---------------------------------------------------------------- SEG


@pytest.mark.parametrize("orientation", [SAGITTAL, AXIAL])
def test_seg_mask_equals_the_source_mask_in_canonical_order(tmp_path, orientation):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1", orientation, seed=3)
    write_seg(tmp_path / "seg" / "seg.dcm", sources, _planes(mask, orientation))
    vol, skipped = _read(tmp_path)
    assert skipped == []
    np.testing.assert_allclose(vol.image[0], image, atol=0.51)
    assert vol.mask is not None and vol.mask.dtype == np.uint8
    np.testing.assert_array_equal(vol.mask, mask)


def test_seg_with_frames_on_every_other_slice_maps_them_by_source_image(tmp_path):
    image, mask = phantom()
    sparse = np.zeros_like(mask)
    sparse[2:6, 8:16, 4:16:4] = 1  # on sagittal planes 4, 8 and 12 only: 8 mm apart
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=6)
    write_seg(tmp_path / "seg.dcm", sources, _planes(sparse, SAGITTAL))  # empty frames left out
    vol, _ = _read(tmp_path)
    np.testing.assert_array_equal(vol.mask, sparse)


def test_seg_of_a_series_with_uneven_slice_positions_maps_frames_by_source_image(tmp_path):
    image, mask = phantom()
    # Off by 0.04 mm: the series still reads (within the gap tolerance), but its slices are no
    # regular grid, so only the frames' source image references place them.
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=8, jitter=0.04)
    write_seg(tmp_path / "seg.dcm", sources, _planes(mask, SAGITTAL))
    vol, _ = _read(tmp_path)
    np.testing.assert_array_equal(vol.mask, mask)


def test_fractional_seg_counts_where_at_least_half(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=4)
    probability = np.where(mask == 1, 0.7, 0.0).astype(np.float32)
    probability[:, 0, :] = 0.3  # a faint band that must not count
    write_seg(tmp_path / "seg.dcm", sources, _planes(probability, SAGITTAL), fractional=True)
    vol, _ = _read(tmp_path)
    np.testing.assert_array_equal(vol.mask, mask)


def test_seg_without_source_references_is_placed_by_geometry(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=5)
    seg = write_seg(tmp_path / "seg.dcm", sources, _planes(mask, SAGITTAL))
    for frame in seg.PerFrameFunctionalGroupsSequence:  # frames say only where they lie
        del frame.DerivationImageSequence
    del seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    pydicom.Dataset.save_as(seg, tmp_path / "seg.dcm")
    vol, _ = _read(tmp_path)
    np.testing.assert_array_equal(vol.mask, mask)


def test_seg_off_the_series_grid_is_refused(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    # The same planes at 1 mm pixels instead of 2 mm: highdicom alone would take every other
    # SEG pixel (an integer scale factor), which is a resampling, not the series' grid.
    fine = write_series(tmp_path / "other", image, "PAT-1")
    for ds in fine:
        ds.PixelSpacing = [float(v) / 2 for v in ds.PixelSpacing]
    seg = write_seg(tmp_path / "seg.dcm", fine, _planes(mask, SAGITTAL))
    for frame in seg.PerFrameFunctionalGroupsSequence:
        del frame.DerivationImageSequence
    seg.ReferencedSeriesSequence[0].SeriesInstanceUID = sources[0].SeriesInstanceUID
    del seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    pydicom.Dataset.save_as(seg, tmp_path / "seg.dcm")
    for path in (tmp_path / "other").iterdir():
        path.unlink()
    with pytest.raises(InputError, match=r"^seg\.dcm: expected a SEG on its series' grid"):
        _read(tmp_path)


# ---------------------------------------------------------------- RTSTRUCT


def test_rtstruct_outlines_give_back_the_source_mask(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=7)
    write_rtstruct(tmp_path / "rs.dcm", sources, _outlines_of(mask))
    vol, skipped = _read(tmp_path)
    assert skipped == []
    np.testing.assert_array_equal(vol.mask, mask)


def test_rtstruct_point_rois_are_no_labels(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1", seed=2)
    rs = write_rtstruct(tmp_path / "rs.dcm", sources, _outlines_of(mask))
    ref = rs.StructureSetROISequence[0]
    rs.StructureSetROISequence.append(_item(
        ROINumber=2, ReferencedFrameOfReferenceUID=ref.ReferencedFrameOfReferenceUID,
        ROIName="Marker", ROIGenerationAlgorithm="MANUAL",
    ))  # fmt: skip
    point = _item(ContourGeometricType="POINT", NumberOfContourPoints=1,
                  ContourData=[f"{v:.4f}" for v in sources[3].ImagePositionPatient])  # fmt: skip
    rs.ROIContourSequence.insert(0, _item(
        ReferencedROINumber=2, ROIDisplayColor=[0, 255, 0], ContourSequence=Sequence([point])
    ))  # fmt: skip
    rs.save_as(tmp_path / "rs.dcm", enforce_file_format=True)
    series, _ = scan_dicom(tmp_path)
    assert dict(series[0].label_ids) == {"tumour": 1}
    np.testing.assert_array_equal(read_series(series[0], "P1", "s").mask, mask)


def test_rtstruct_disc_is_rasterised_within_a_pixel(tmp_path):
    image, _ = phantom(shape=(6, 64, 56), lesion=False)
    sources = write_series(tmp_path / "ct", image, "PAT-1", AXIAL)
    angles = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    radius = 21.0  # mm: 10.5 pixels of 2 mm
    centre = (30.3, 25.6)  # (row, column), off the pixel grid
    circle = np.column_stack([centre[0] + np.sin(angles) * radius / SPACING[1],
                              centre[1] + np.cos(angles) * radius / SPACING[2]])  # fmt: skip
    write_rtstruct(tmp_path / "rs.dcm", sources, [[circle] if k % 2 else [] for k in range(6)])
    vol, _ = _read(tmp_path)
    rows, cols = np.mgrid[:64, :56]
    disc = ((rows - centre[0]) * SPACING[1]) ** 2 + ((cols - centre[1]) * SPACING[2]) ** 2
    for k in range(6):
        if k % 2:
            assert _dice(vol.mask[k] == 1, disc <= radius**2) > 0.95
        else:
            assert not vol.mask[k].any()


def test_rtstruct_inner_contour_is_a_hole(tmp_path):
    image, _ = phantom(lesion=False)
    sources = write_series(tmp_path / "ct", image, "PAT-1", AXIAL)
    square = np.array([[2, 2], [2, 17], [21, 17], [21, 2]], dtype=float)
    hole = np.array([[8, 7], [8, 12], [15, 12], [15, 7]], dtype=float)
    write_rtstruct(tmp_path / "rs.dcm", sources, [[square, hole]] + [[]] * 7)
    vol, _ = _read(tmp_path)
    expected = np.zeros((24, 20), bool)
    expected[2:22, 2:18] = True
    expected[8:16, 7:13] = False
    np.testing.assert_array_equal(vol.mask[0] == 1, expected)


# ---------------------------------------------------------------- several masks, labels


def test_masks_of_one_series_are_merged_and_names_become_label_ids(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    organ = np.zeros_like(mask)
    organ[2:6, 4:20, 3:17] = 1  # encloses the lesion
    write_seg(tmp_path / "organ.dcm", sources, _planes(organ, SAGITTAL), label="Liver")
    write_rtstruct(tmp_path / "rs.dcm", sources, _outlines_of(mask),
                   name=" TUMOUR ")  # fmt: skip
    series, _ = scan_dicom(tmp_path)
    assert len(series[0].masks) == 2
    assert dict(series[0].label_ids) == {"liver": 1, "tumour": 2}
    vol = read_series(series[0], "P1", "s")
    np.testing.assert_array_equal(vol.mask, np.where(mask == 1, 2, organ))  # higher id on top
    vol = read_series(series[0], "P1", "s", lesion_labels=[1])  # the lesion label drawn last
    np.testing.assert_array_equal(vol.mask, organ)


# ---------------------------------------------------------------- missing references


def test_mask_of_a_series_not_in_the_input_is_skipped_with_its_reason(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "elsewhere", image, "PAT-1")
    write_seg(tmp_path / "in" / "seg.dcm", sources, _planes(mask, SAGITTAL))
    write_rtstruct(tmp_path / "in" / "rs.dcm", sources, _outlines_of(mask))
    write_series(tmp_path / "in" / "ct", image, "PAT-1")  # another series of the patient
    series, skipped = scan_dicom(tmp_path / "in", name_of=lambda p: p.name)
    assert series[0].masks == ()
    assert dict(skipped) == {
        "seg.dcm": "segmentation object (SEG) refers to a series that is not in the input",
        "rs.dcm": "RT structure set (RTSTRUCT) refers to a series that is not in the input",
    }


def test_seg_without_referenced_series_is_skipped_with_its_reason(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    seg = write_seg(tmp_path / "seg.dcm", sources, _planes(mask, SAGITTAL))
    del seg.ReferencedSeriesSequence
    pydicom.Dataset.save_as(seg, tmp_path / "seg.dcm")
    _, skipped = scan_dicom(tmp_path, name_of=lambda p: p.name)
    assert skipped == [("seg.dcm", "segmentation object (SEG) refers to no image series "
                                   "(no ReferencedSeriesSequence), skipped")]  # fmt: skip


def test_seg_on_an_image_not_in_the_series_is_refused(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    seg = write_seg(tmp_path / "seg.dcm", sources, _planes(mask, SAGITTAL))
    refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    refs.append(_item(ReferencedSOPClassUID=refs[0].ReferencedSOPClassUID,
                      ReferencedSOPInstanceUID=generate_uid()))  # fmt: skip
    pydicom.Dataset.save_as(seg, tmp_path / "seg.dcm")
    with pytest.raises(InputError, match=r"^seg\.dcm: .*SEG\) refers to 1 image\(s\) not in its"):
        _read(tmp_path)


def test_contour_on_an_image_not_in_the_series_is_refused(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    rs = write_rtstruct(tmp_path / "rs.dcm", sources, _outlines_of(mask))
    image_ref = rs.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0]
    image_ref.ReferencedSOPInstanceUID = generate_uid()
    rs.save_as(tmp_path / "rs.dcm")  # no preamble: read like pydicom's own test RTSTRUCT
    with pytest.raises(InputError, match=r"^rs\.dcm: a contour refers to an image not in its"):
        _read(tmp_path)


def test_contour_between_slices_is_refused(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    rs = write_rtstruct(tmp_path / "rs.dcm", sources, _outlines_of(mask))
    contour = rs.ROIContourSequence[0].ContourSequence[0]
    points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
    points[:, 0] += SPACING[2] / 2  # half a slice step along x, the sagittal slices' normal
    contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
    rs.save_as(tmp_path / "rs.dcm")
    with pytest.raises(InputError, match=r"^rs\.dcm: expected contours on the planes .* 1\.00 mm"):
        _read(tmp_path)


# ---------------------------------------------------------------- end to end


def test_preprocess_with_seg_and_rtstruct_gives_the_nifti_store(tmp_path):
    cases, lines = {}, []
    for i in range(4):
        pid = f"PAT-{i}"
        image, mask = phantom(seed=i, lesion=i != 3)
        cases[pid] = (image, mask)
        sources = write_series(tmp_path / "dicom" / pid / "ct", image, pid, seed=i)
        planes = _planes(mask, SAGITTAL)
        if i == 2:
            write_rtstruct(tmp_path / "dicom" / pid / "rs.dcm", sources,
                           [_outlines(p) for p in planes])  # fmt: skip
        else:
            write_seg(tmp_path / "dicom" / pid / "seg.dcm", sources, planes)
        lines.append(pid)
    write_decathlon(tmp_path / "nifti", cases, SPACING)
    cfg = PreprocessConfig(size=32, min_body_fraction=0.0, min_lesion_pixels=5)
    meta = preprocess(cfg, [tmp_path / "dicom"], tmp_path / "d")
    preprocess(cfg, [tmp_path / "nifti"], tmp_path / "n")
    d, n = SliceStore.open(tmp_path / "d"), SliceStore.open(tmp_path / "n")
    assert meta["skipped"] == [] and meta["label_ids"] == {"background": 0, "tumour": 1}
    assert d.masks is not None and n.masks is not None
    np.testing.assert_array_equal(d.masks, n.masks)
    assert [(r["patient"], r["z"], r["label"], r["split"]) for r in d.rows] == [
        (r["patient"], r["z"], r["label"], r["split"]) for r in n.rows
    ]
    lesion = np.count_nonzero(d.masks, axis=(1, 2, 3))
    np.testing.assert_array_equal(d.labels(), (lesion >= 5).astype(int))
    assert 0 < d.labels().sum() < len(d.rows)


def test_several_names_ask_which_are_lesions(tmp_path):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    write_seg(tmp_path / "seg.dcm", sources, _planes(mask, SAGITTAL), label="GTV")
    write_seg(tmp_path / "body.dcm", sources, _planes(image > -500, SAGITTAL), label="Body")
    cfg = PreprocessConfig(size=32, min_body_fraction=0.0)
    with pytest.raises(ConfigError, match=r"\{'body': 1, 'gtv': 2\}.*lesion_labels"):
        preprocess(cfg, [tmp_path], tmp_path / "out")


def test_series_without_masks_keeps_none(tmp_path):
    image, _ = phantom()
    write_series(tmp_path, image, "PAT-1")
    series, _ = scan_dicom(tmp_path)
    assert isinstance(series[0], Series) and series[0].masks == ()
    assert read_series(series[0], "P1", "s").mask is None


@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_truncated_masks_are_refused_with_a_reason(tmp_path, kind):
    image, mask = phantom()
    sources = write_series(tmp_path / "ct", image, "PAT-1")
    path = tmp_path / "mask.dcm"
    if kind == "seg":
        write_seg(path, sources, _planes(mask, SAGITTAL))
    else:
        write_rtstruct(path, sources, _outlines_of(mask))
    whole = path.read_bytes()
    # 152..155: inside the 4-byte length of the file meta's first OB element (pydicom raises
    # struct.error there); then cuts through the data set, its sequences and the pixel data.
    cuts = [152, 154, *(int(f * len(whole)) for f in np.linspace(0.05, 0.98, 25))]
    for cut in cuts:
        path.write_bytes(whole[:cut])
        series, skipped = scan_dicom(tmp_path, name_of=lambda p: p.name)
        if not series[0].masks:
            assert [n for n, _ in skipped] == ["mask.dcm"] and "\n" not in skipped[0][1]
            continue
        with pytest.raises(InputError, match=r"^mask\.dcm: [^\n]+$"):
            read_series(series[0], "P1", "s", lambda p: p.name)
