"""Stage configs: defaults, params.yaml sections, overrides and one-line errors."""

from pathlib import Path

import pytest

from augment.config import STAGES, PreprocessConfig, TrainConfig, load, read_params
from augment.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_file_is_valid_for_every_stage():
    sections = read_params(REPO / "params.yaml")
    assert set(sections) == set(STAGES)
    for name, cls in STAGES.items():
        load(cls, name, REPO / "params.yaml")


def test_missing_params_file_gives_defaults(tmp_path):
    cfg = load(TrainConfig, "train", tmp_path / "absent.yaml")
    assert cfg == TrainConfig()


def test_option_overrides_params_and_none_does_not(tmp_path):
    p = _params(tmp_path, "train:\n  steps: 10\n  batch_size: 8\n")
    cfg = load(TrainConfig, "train", p, {"steps": 99, "batch_size": None})
    assert (cfg.steps, cfg.batch_size) == (99, 8)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  stpes: 10\n", "unknown key train.stpes"),
        ("train:\n  steps: many\n", "train.steps"),
        ("train:\n  steps: 0\n", "train.steps: input should be greater than or equal to 1"),
        ("train:\n  loss: l2\n", "train.loss"),
        ("preprocess:\n  split: {train: 0.5, val: 0.2, test: 0.2}\n", "must be 1"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_values_name_the_key_on_one_line(tmp_path, text, needle):
    p = _params(tmp_path, text)
    section = "preprocess" if "preprocess" in text else "train"
    cls = PreprocessConfig if section == "preprocess" else TrainConfig
    with pytest.raises(ConfigError) as err:
        load(cls, section, p)
    message = str(err.value)
    assert needle in message
    assert str(p) in message
    assert "\n" not in message


def test_explicit_window_is_accepted(tmp_path):
    p = _params(tmp_path, "preprocess:\n  window: {center: 40, width: 400}\n")
    cfg = load(PreprocessConfig, "preprocess", p)
    assert (cfg.window.center, cfg.window.width) == (40, 400)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("train:\n  lr_g: .inf\n", "train.lr_g"),
        ("train:\n  lr_d: .nan\n", "train.lr_d"),
        ("train: [1, 2]\n", "train: expected a mapping of keys, got list"),
        ("trian:\n  steps: 10\n", "unknown section 'trian'; did you mean 'train'?"),
        ("train:\n  device: [" + ", ".join(["x" * 50] * 200) + "]\n", "..."),
    ],
)
def test_hostile_params_are_refused_on_one_short_line(tmp_path, text, needle):
    p = _params(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(TrainConfig, "train", p)
    message = str(err.value)
    assert needle in message and "\n" not in message and len(message) < 300


def test_user_sections_of_their_own_are_left_alone(tmp_path):
    # The templates keep their data paths in a `data:` section for dvc.yaml's templating.
    p = _params(tmp_path, "data:\n  nifti: raw\ntrain:\n  steps: 5\n")
    assert load(TrainConfig, "train", p).steps == 5


def test_an_option_is_blamed_as_the_option_not_as_the_params_file(tmp_path):
    p = _params(tmp_path, "train:\n  steps: 5\n")
    with pytest.raises(ConfigError) as err:
        load(TrainConfig, "train", p, {"batch_size": 0})
    assert str(err.value).startswith("--batch-size (train.batch_size):")
    assert str(p) not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load(PreprocessConfig, "preprocess", p, {"axis": "diagonal"})
    assert "literal" not in str(err.value) and "'axial'" in str(err.value)
