"""The skeleton of a Part 10 DICOM file, shared by the phantom and the synthetic writers."""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian


def part10_dataset(sop_class: str, sop_uid: str) -> Dataset:
    """An empty DICOM Part 10 data set: file meta (Explicit VR Little Endian) and SOP identity."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    return ds
