"""Input readers: the registry (light: names and help only; readers load on use).

A reader is a :class:`augment.preprocessing.readers.base.Reader`: it finds the volumes under an
input root and reads one into a :class:`~augment.contracts.volume.Volume`. With
``preprocess.format: auto`` the first reader, in the order below, that claims a root's files
reads it. Adding a reader is one new file in this package plus one line below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augment.registry import Entry, Registry

if TYPE_CHECKING:
    from augment.preprocessing.readers.base import Reader

READERS: Registry[type[Reader]] = Registry(
    "input format",
    {
        "nifti": Entry(
            "augment.preprocessing.readers.nifti:NiftiReader",
            "NIfTI volumes (.nii, .nii.gz): Decathlon, nnU-Net raw or plain folders",
        ),
        "dicom": Entry(
            "augment.preprocessing.readers.dicom:DicomReader",
            "DICOM series in any nesting and file naming (pydicom + pylibjpeg)",
        ),
    },
)
