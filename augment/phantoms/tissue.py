"""Tissue classes and their CT numbers (portal venous phase)."""

from __future__ import annotations

from enum import IntEnum

HU_MIN, HU_MAX = -1024.0, 3071.0  # what a 12-bit CT with intercept -1024 can store
INTERCEPT = -1024.0
INSTITUTION = "Augment Demo Hospital"
_Box = tuple[slice, slice, slice]
_LESION_DRAW = 0x1E51  # tag of the stream that picks the lesion patients


class Tissue(IntEnum):
    """Tissue classes of the label volume that the HU volume is made from."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    VISCERAL_FAT = 4
    LIVER = 5
    SPLEEN = 6
    KIDNEY_CORTEX = 7
    KIDNEY_MEDULLA = 8
    URINE = 9
    AORTA = 10
    VEIN = 11
    PORTAL = 12
    CANCELLOUS = 13
    CORTICAL = 14
    DISC = 15
    CSF = 16
    RIB = 17
    CARTILAGE = 18
    LUNG = 19
    BOWEL_WALL = 20
    FLUID = 21
    GAS = 22
    STOOL = 23
    PANCREAS = 24
    HEART = 25
    BILE = 26


# (mean HU, patient-to-patient jitter, texture amplitude); portal venous phase.
_HU: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000, 0, 0),
    Tissue.SKIN: (40, 5, 4),
    Tissue.FAT: (-100, 8, 8),
    Tissue.MUSCLE: (55, 5, 6),
    Tissue.VISCERAL_FAT: (-95, 8, 12),
    Tissue.LIVER: (100, 10, 5),
    Tissue.SPLEEN: (110, 8, 5),
    Tissue.KIDNEY_CORTEX: (175, 15, 6),
    Tissue.KIDNEY_MEDULLA: (125, 15, 6),
    Tissue.URINE: (12, 4, 3),
    Tissue.AORTA: (175, 20, 4),
    Tissue.VEIN: (135, 15, 4),
    Tissue.PORTAL: (160, 15, 4),
    Tissue.CANCELLOUS: (220, 40, 30),
    Tissue.CORTICAL: (850, 120, 40),
    Tissue.DISC: (85, 8, 6),
    Tissue.CSF: (15, 4, 3),
    Tissue.RIB: (480, 80, 40),
    Tissue.CARTILAGE: (130, 20, 10),
    Tissue.LUNG: (-860, 25, 35),
    Tissue.BOWEL_WALL: (75, 10, 6),
    Tissue.FLUID: (15, 8, 4),
    Tissue.GAS: (-995, 0, 3),
    Tissue.STOOL: (-120, 40, 160),
    Tissue.PANCREAS: (90, 10, 10),
    Tissue.HEART: (140, 15, 5),
    Tissue.BILE: (8, 4, 3),
}
_LESION_ORGANS = {  # organ -> tissues a lesion in it may cover
    Tissue.LIVER: (Tissue.LIVER,),
    Tissue.SPLEEN: (Tissue.SPLEEN,),
    Tissue.KIDNEY_CORTEX: (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA),
}


_LUNG_ONTO = (
    Tissue.VISCERAL_FAT, Tissue.LIVER, Tissue.SPLEEN, Tissue.BOWEL_WALL, Tissue.FLUID,
    Tissue.GAS, Tissue.STOOL, Tissue.PANCREAS, Tissue.PORTAL, Tissue.VEIN, Tissue.BILE,
)  # fmt: skip
