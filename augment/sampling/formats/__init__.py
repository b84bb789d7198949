"""Sample formats: the registry (light: names and help only; formats load on use).

A format is a :class:`augment.sampling.formats.base.SampleFormat`: how one synthetic case is
written and read back, and what the set needs besides (nnU-Net's ``dataset.json``). Adding a
format is one new file in this package plus one line below; ``sample.format`` accepts exactly
these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from augment.registry import Entry, Registry

if TYPE_CHECKING:
    from augment.sampling.formats.base import SampleFormat

FORMATS: Registry[type[SampleFormat]] = Registry(
    "sample format",
    {
        "nnunet": Entry(
            "augment.sampling.formats.nnunet:NnunetFormat",
            "nnU-Net v2 raw data set (NIfTI per case, dataset.json), read by MONAI too",
        ),
        "png": Entry("augment.sampling.formats.png:PngFormat", "8- or 16-bit greyscale PNG"),
        "npz": Entry("augment.sampling.formats.npz:NpzFormat", "one numpy samples.npz"),
        "dicom": Entry(
            "augment.sampling.formats.dicom:DicomFormat",
            "DICOM Secondary Capture images marked synthetic, masks as DICOM SEG (highdicom)",
        ),
    },
)
