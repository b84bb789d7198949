"""Pseudonyms: keyed, stable, and the key's sources in order."""

from __future__ import annotations

import re
import stat

import pytest

from augment.errors import InputError
from augment.preprocessing.privacy import ENV_VAR, file_token, load_key, locate, pseudonym


def test_pseudonym_is_keyed_stable_and_shaped():
    a, b = b"key-a", b"key-b"
    assert pseudonym("PHANTOM-0001", a) == pseudonym("PHANTOM-0001", a)
    assert pseudonym("PHANTOM-0001 ", a) == pseudonym("PHANTOM-0001", a)  # DICOM padding
    assert pseudonym("PHANTOM-0001", a) != pseudonym("PHANTOM-0001", b)
    assert pseudonym("PHANTOM-0001", a) != pseudonym("PHANTOM-0002", a)
    assert re.fullmatch(r"P[0-9a-f]{10}", pseudonym("PHANTOM-0001", a))


def test_key_file_first_then_env_then_created_file(tmp_path):
    key_file = tmp_path / "k.key"
    key_file.write_text("00ff\n")
    assert load_key(key_file, env={ENV_VAR: "from-env"}, cwd=tmp_path) == b"\x00\xff"
    assert load_key(None, env={ENV_VAR: "from-env"}, cwd=tmp_path) == b"from-env"
    created = load_key(None, env={}, cwd=tmp_path)
    path = tmp_path / ".augment" / "pseudonym.key"
    assert path.is_file() and len(created) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(None, env={}, cwd=tmp_path) == created  # reused, not rewritten


def test_missing_or_empty_key_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_key(tmp_path / "absent.key", env={})
    (tmp_path / "empty.key").write_text("")
    with pytest.raises(InputError, match="empty"):
        load_key(tmp_path / "empty.key", env={})


def test_locate_finds_the_file_behind_a_token(tmp_path):
    (tmp_path / "Doe_Jane").mkdir()
    target = tmp_path / "Doe_Jane" / "IM0001.dcm"
    target.write_bytes(b"x")
    (tmp_path / "other.dcm").write_bytes(b"y")
    token = file_token(target, tmp_path, b"k")
    assert "Doe" not in token
    assert locate(token, [tmp_path], b"k") == target
    assert locate(token, [tmp_path], b"another key") is None


def test_library_warnings_name_the_file_by_token_and_quote_no_values(tmp_path, monkeypatch):
    import warnings

    import pydicom

    from augment.config import PreprocessConfig
    from augment.preprocessing.privacy import InputWarning
    from augment.preprocessing.stage import preprocess
    from tests.preprocessing.badinputs import SPACING, phantom, write_dicom_series

    monkeypatch.setenv(ENV_VAR, "test-key")
    image, _ = phantom()
    secret = tmp_path / "in" / "SMITH_JOHN_1999"
    for i, path in enumerate(write_dicom_series(secret, image[:4], SPACING, "PAT-SECRET-9")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = "1.2.840.SECRET.99"  # invalid UI: pydicom's warning quotes it
        ds.PatientBirthDate = "19991399"  # an invalid date, quoted too if read
        ds.save_as(path, enforce_file_format=True)
        assert i < 4
    (tmp_path / "labels.csv").write_text("patient,class\nPAT-SECRET-9,1\n")
    cfg = PreprocessConfig(labels_from="csv", size=32, workers=1, min_body_fraction=0.0,
                           split={"train": 1.0, "val": 0.0, "test": 0.0})  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preprocess(cfg, [tmp_path / "in"], tmp_path / "out", labels_csv=tmp_path / "labels.csv")
    ours = [w for w in caught if issubclass(w.category, InputWarning)]
    assert ours, "the reader's library warnings were swallowed instead of re-emitted"
    for w in caught:
        text = str(w.message)
        for leak in ("SECRET", "1999", "SMITH", str(tmp_path)):
            assert leak not in text, text
    assert all(re.match(r"^F[0-9a-f]+: ", str(w.message)) for w in ours)


def test_the_public_demo_key_pseudonymises_phantoms_only(tmp_path, monkeypatch):
    from augment.config import PhantomsConfig, PreprocessConfig
    from augment.phantoms.stage import make_phantoms
    from augment.preprocessing.stage import preprocess
    from tests.preprocessing.badinputs import SPACING, phantom, write_decathlon, write_dicom_series

    monkeypatch.setenv(ENV_VAR, "augment-demo-phantoms")
    make_phantoms(PhantomsConfig(patients=4, size=48, slices=6), tmp_path / "ph")
    cfg = PreprocessConfig(size=32, labels_from="csv", workers=1)
    for layout in ("nifti", "dicom"):
        preprocess(cfg, [tmp_path / "ph" / layout], tmp_path / f"ok-{layout}",
                   labels_csv=tmp_path / "ph" / "labels.csv")  # fmt: skip
    image, mask = phantom()
    write_decathlon(tmp_path / "real" / "nifti", {"case1": (image, mask)}, SPACING)
    write_dicom_series(tmp_path / "real" / "dicom", image, SPACING, "REAL-1")
    (tmp_path / "labels.csv").write_text("patient,class\ncase1,1\nREAL-1,0\n")
    for layout in ("nifti", "dicom"):
        with pytest.raises(InputError, match="public demo key"):
            preprocess(cfg, [tmp_path / "real" / layout], tmp_path / f"no-{layout}",
                       labels_csv=tmp_path / "labels.csv")  # fmt: skip
        assert not (tmp_path / f"no-{layout}").exists()
