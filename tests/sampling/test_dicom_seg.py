"""augment sample --format dicom: the masks are DICOM Segmentations (highdicom) of their
synthetic Secondary Capture images, they read back exactly, and they say they are synthetic."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from augment import __version__
from augment.contracts.model_dir import load_generator
from augment.contracts.synthetic_set import MANIFEST
from augment.contracts.window import Window
from augment.errors import StoreError
from augment.nets.dcgan import DCGANSpec
from augment.sampling.draw import generate
from augment.sampling.formats.base import SampleRun
from augment.sampling.formats.dicom import DicomFormat, Segment, coded_property
from augment.sampling.read import load_synthetic
from augment.sampling.stage import sample
from tests.sampling.test_stage import CLASSES, SPACING, _cfg, _model

# Label ids with a gap (2 is unused): segment k must still be the k-th foreground label.
LABELS = {"background": 0, "liver": 1, "tumour": 3}
PATIENT_MODULE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
    "DeidentificationMethod",
)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    spec = DCGANSpec(image_size=32, mask_channels=3, n_classes=2, nz=8, ngf=8, ndf=8)
    root = tmp_path_factory.mktemp("model") / "dcgan"
    lesion_rule = {"lesion_ids": [3], "min_lesion_pixels": 1}
    return _model(
        root, spec, class_names=CLASSES, label_names=LABELS, mask_label_ids=[0, 1, 3],
        lesion_rule=lesion_rule, slice_thickness=2.5,
    )  # fmt: skip


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, model_dir) -> Path:
    out = tmp_path_factory.mktemp("syn") / "dicom"
    sample(_cfg(format="dicom", n=8, batch_size=3), model_dir, out)
    return out


def _generated_masks(model_dir: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """The masks the manifest rows regenerate, straight from the generator."""
    generator, info = load_generator(model_dir, "cpu")
    masks = [
        generate(
            generator, info, int(r["seed"]), np.array([int(r["noise_index"])]),
            np.array([int(r["class"])]),
        )[1][0]
        for r in rows
    ]  # fmt: skip
    return np.stack(masks)


def _label_map(seg: hd.seg.Segmentation, source_uid: str) -> np.ndarray:
    """The SEG's pixels as label ids, mapped by segment label (independently of the reader)."""
    numbers = seg.get_pixels_by_source_instance([source_uid], combine_segments=True, relabel=False)[
        0
    ]
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint8)
    for n in seg.segment_numbers:
        lut[n] = LABELS[seg.get_segment_description(n).segment_label]
    return lut[numbers]


def test_every_file_reads_back_and_each_seg_holds_its_image_mask_exactly(synthetic, model_dir):
    syn = load_synthetic(synthetic)
    expected = _generated_masks(model_dir, syn.rows)
    assert len(np.unique(expected)) == 3, "the test model should draw every label"
    assert np.array_equal(syn.masks, expected)
    for k, row in enumerate(syn.rows):
        image = pydicom.dcmread(synthetic / row["file"])  # no force: proper Part 10 files
        raw = pydicom.dcmread(synthetic / row["label_file"])
        for ds in (image, raw):
            pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert image.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert raw.SOPClassUID == pydicom.uid.SegmentationStorage
        seg = hd.seg.segread(synthetic / row["label_file"])
        again = hd.seg.Segmentation.from_dataset(raw)  # highdicom's own round trip
        assert seg.SOPInstanceUID == again.SOPInstanceUID != image.SOPInstanceUID
        # It references its own image, and nothing else.
        refs = raw.ReferencedSeriesSequence
        assert len(refs) == 1 and refs[0].SeriesInstanceUID == image.SeriesInstanceUID
        assert [r.ReferencedSOPInstanceUID for r in refs[0].ReferencedInstanceSequence] == [
            image.SOPInstanceUID
        ]
        assert {uid for *_, uid in seg.get_source_image_uids()} == {image.SOPInstanceUID}
        assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
        assert np.array_equal(_label_map(seg, image.SOPInstanceUID), expected[k])
        assert list(raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
                    ) == list(image.PixelSpacing) == list(SPACING)  # fmt: skip


def test_seg_is_as_synthetic_as_its_image(synthetic):
    for image_path in sorted((synthetic / "images").glob("*.dcm")):
        image = pydicom.dcmread(image_path)
        seg = pydicom.dcmread(synthetic / "labels" / image_path.name)
        for key in PATIENT_MODULE:
            assert seg[key].value == image[key].value, key  # the same patient module
        assert str(seg.PatientName) == "SYNTHETIC^AUGMENT" and seg.PatientID == image_path.stem
        assert seg.PatientIdentityRemoved == "YES"
        assert seg.StudyInstanceUID == image.StudyInstanceUID
        assert seg.SeriesInstanceUID != image.SeriesInstanceUID
        assert "SYNTHETIC" in seg.SeriesDescription and "SYNTHETIC" in seg.StudyDescription
        assert seg.ContentLabel == "SYNTHETIC" and "SYNTHETIC" in seg.ContentDescription
        assert seg.ImageComments == image.ImageComments
        assert seg.ImageComments.startswith("SYNTHETIC")
        assert seg.BurnedInAnnotation == image.BurnedInAnnotation == "NO"
        assert not seg.get("AccessionNumber") and not seg.get("StudyDate")
        assert not seg.get("InstitutionName")
        assert not any(element.tag.is_private for element in seg.iterall())


def test_segments_name_and_code_the_model_labels(synthetic, model_dir):
    seg = hd.seg.segread(sorted((synthetic / "labels").glob("*.dcm"))[0])
    _, info = load_generator(model_dir, "cpu")
    described = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert seg.segment_numbers == [1, 2]  # one per foreground label, ids 1 and 3
    assert [d.segment_label for d in described] == ["liver", "tumour"]
    liver, tumour = described
    assert liver.segmented_property_category == codes.SCT.AnatomicalStructure
    assert liver.segmented_property_type == codes.SCT.Liver
    assert tumour.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    assert tumour.segmented_property_type == codes.SCT.Lesion  # no CID 7151 "Tumour"
    for d in described:
        assert d.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        algorithm = d.algorithm_identification[0]
        assert algorithm.AlgorithmName == "augment" and algorithm.AlgorithmVersion == __version__
        assert info.checksum in algorithm.AlgorithmParameters


@pytest.mark.parametrize(
    ("name", "lesion", "category", "kind"),
    [
        ("liver", False, "AnatomicalStructure", "Liver"),
        ("portal_vein", False, "AnatomicalStructure", "PortalVein"),
        ("adipose tissue", False, "Tissue", "AdiposeTissue"),
        ("lesion", True, "MorphologicallyAbnormalStructure", "Lesion"),
        ("edema", False, "MorphologicallyAbnormalStructure", "Edema"),
        ("blob", False, "Tissue", "Tissue"),
        ("3", True, "MorphologicallyAbnormalStructure", "Lesion"),
    ],
)
def test_coded_property(name, lesion, category, kind):
    got = coded_property(Segment(1, name, lesion))
    assert got == (getattr(codes.SCT, category), getattr(codes.cid7151, kind))


def _run(model_dir: Path, root: Path) -> SampleRun:
    _, info = load_generator(model_dir, "cpu")
    window = Window.preset("abdomen", 40, 400, "HU")
    return SampleRun(cfg=_cfg(format="dicom"), info=info, window=window, root=root, width=6)


def test_empty_mask_gets_a_seg_that_reads_back_as_background(tmp_path, model_dir):
    run, fmt = _run(model_dir, tmp_path), DicomFormat()
    fmt.prepare(run)
    image = np.linspace(-1, 1, 32 * 32, dtype=np.float32).reshape(1, 32, 32)
    only_tumour = np.zeros((32, 32), np.uint8)
    only_tumour[4:9, 20:30] = 3
    masks = [np.zeros((32, 32), np.uint8), only_tumour]
    rows = []
    for i, mask in enumerate(masks):
        fmt.write_case(run, i, image, mask, 0)
        file, label_file = fmt.files(run, run.case(i))
        rows.append({"file": file, "label_file": label_file})
    empty, tumour = (pydicom.dcmread(tmp_path / r["label_file"]) for r in rows)
    assert empty.NumberOfFrames == tumour.NumberOfFrames == 2  # a frame per segment, none omitted
    assert (
        not hd.seg.Segmentation.from_dataset(empty)
        .get_pixels_by_source_instance(
            [pydicom.dcmread(tmp_path / rows[0]["file"]).SOPInstanceUID], combine_segments=True
        )
        .any()
    )
    meta = {"label_names": LABELS}
    _, got = fmt.read(tmp_path, rows, meta, run.window)
    assert got is not None and np.array_equal(got, np.stack(masks))


def test_a_mask_label_the_model_does_not_make_is_refused(tmp_path, model_dir):
    run, fmt = _run(model_dir, tmp_path), DicomFormat()
    fmt.prepare(run)
    mask = np.full((32, 32), 2, np.uint8)  # the gap in the label ids
    with pytest.raises(ValueError, match=r"expected label ids in \[1, 3\], got \{2\}"):
        fmt.write_case(run, 0, np.zeros((1, 32, 32), np.float32), mask, 0)


def test_a_seg_of_another_image_is_refused(tmp_path, synthetic):
    broken = tmp_path / "broken"
    shutil.copytree(synthetic, broken)
    first, second = sorted((broken / "labels").glob("*.dcm"))[:2]
    first.write_bytes(second.read_bytes())
    with pytest.raises(StoreError, match=rf"{first.name}: expected a segmentation of"):
        load_synthetic(broken)


def test_manifest_names_a_seg_per_image(synthetic):
    header, *lines = (synthetic / MANIFEST).read_text().splitlines()
    assert header.split(",")[1:3] == ["file", "label_file"]
    for line in lines:
        case, file, label_file = line.split(",")[:3]
        assert (file, label_file) == (f"images/{case}.dcm", f"labels/{case}.dcm")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not found")
def test_dciodvfy_finds_no_error(synthetic):
    for path in sorted(synthetic.rglob("*.dcm")):
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)
