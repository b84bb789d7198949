"""Generic file helpers: atomic writes, JSON reading, the Part 10 DICOM dataset skeleton."""
