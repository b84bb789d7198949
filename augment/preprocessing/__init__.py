"""Preprocessing: DICOM / NIfTI volumes to the patient-split slice store."""
