"""augment export --format monai-bundle: MONAI's own bundle tools verify, load and run the bundle,
and running it writes the files ``augment sample`` writes from the model directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from augment.cli import app
from augment.config import SampleConfig
from augment.contracts.model_dir import load_generator
from augment.errors import ConfigError, StoreError
from augment.export import EXPORTS, export
from augment.nets.dcgan import DCGANSpec, Generator
from augment.sampling.read import load_synthetic
from augment.sampling.stage import sample
from tests.sampling.test_stage import CLASSES, LABELS, _model

bundle_tools = pytest.importorskip("monai.bundle")
# MONAI's verify_metadata validates with jsonschema (an optional dependency of MONAI)
pytest.importorskip("jsonschema", reason="verify_metadata needs jsonschema")

# MONAI's bundle metadata schema, the file metadata.json names in "schema", copied verbatim
# (7340 characters) from https://project-monai.github.io/schema/meta_schema_20240725.json, which
# serves the MONAI-extra-test-data 0.8.1 release file: verify_metadata reads it offline.
SCHEMA = Path(__file__).with_name("meta_schema_20240725.json")
SPEC = DCGANSpec(image_size=32, mask_channels=2, n_classes=2, nz=8, ngf=8, ndf=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model") / "dcgan"
    return _model(root, SPEC, class_names=CLASSES, label_names=LABELS, steps=40)


@pytest.fixture(scope="module")
def bundle(model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "augment_dcgan"
    export(model_dir, out)
    return out


@pytest.fixture(scope="module")
def plain_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plain")
    spec = DCGANSpec(image_size=32, channels=2, nz=8, ngf=8, ndf=8)  # MR-like: two sequences
    mr = {"kind": "percentile", "units": "", "percentiles": [0.5, 99.5]}
    model = _model(root / "dcgan", spec, windows=[mr, mr], channels=["T1", "FLAIR"])
    export(model, root / "bundle")
    return root / "bundle"


def _files(bundle: Path) -> tuple[str, str]:
    return str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")


def _verify_metadata(meta_file: str, tmp_path: Path) -> None:
    schema = tmp_path / SCHEMA.name
    shutil.copy(SCHEMA, schema)  # present: MONAI skips the download and validates against it
    bundle_tools.verify_metadata(meta_file=meta_file, filepath=str(schema))


# --------------------------------------------------------------------------- MONAI's checks


def test_layout_is_a_bundle(bundle):
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt",
                 "docs/README.md", "LICENSE"):  # fmt: skip
        assert (bundle / name).is_file(), name
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["schema"].endswith(SCHEMA.name)
    assert "augment" in meta["required_packages_version"]
    assert "synthetic" in meta["intended_use"]
    readme = (bundle / "docs" / "README.md").read_text()
    assert "synthetic" in readme and "augment" in readme and "importable" in readme


def test_metadata_passes_monai_verify_metadata(bundle, plain_bundle, tmp_path):
    _verify_metadata(_files(bundle)[0], tmp_path)
    _verify_metadata(_files(plain_bundle)[0], tmp_path)


def test_verify_metadata_is_a_real_check(bundle, tmp_path):
    # The schema rejects a metadata file without a key it requires: the check is real.
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    del meta["required_packages_version"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="required"):
        _verify_metadata(str(broken), tmp_path)


def test_net_in_out_passes_monai_verify_net_in_out(bundle, plain_bundle):
    meta, config = _files(bundle)
    y = {"y": torch.zeros(1, dtype=torch.long)}  # the "class" input: verify feeds "image" only
    bundle_tools.verify_net_in_out(
        net_id="network_def", meta_file=meta, config_file=config, device="cpu",
        extra_forward_args=y,
    )  # fmt: skip
    meta, config = _files(plain_bundle)
    bundle_tools.verify_net_in_out(
        net_id="network_def", meta_file=meta, config_file=config, device="cpu"
    )


def test_verify_net_in_out_catches_a_wrong_output_format(bundle):
    meta, config = _files(bundle)
    wrong = {"_meta_#network_data_format#outputs#pred#num_channels": SPEC.out_channels + 1}
    with pytest.raises(ValueError, match="output channel number"):
        bundle_tools.verify_net_in_out(
            net_id="network_def", meta_file=meta, config_file=config, device="cpu",
            extra_forward_args={"y": torch.zeros(1, dtype=torch.long)}, **wrong,
        )  # fmt: skip


def test_monai_load_returns_the_trained_generator(bundle, model_dir):
    net = bundle_tools.load(
        name=bundle.name, bundle_dir=str(bundle.parent), workflow_type="inference", device="cpu"
    )
    assert isinstance(net, Generator)
    trained, _ = load_generator(model_dir)
    got, want = net.state_dict(), trained.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------- running it


def _run(bundle: Path, out: Path, **override) -> None:
    bundle_tools.run(
        config_file=_files(bundle)[1], bundle_root=str(bundle), output_dir=str(out), **override
    )


def _refused(bundle: Path, out: Path, error: type[Exception], match: str, **override) -> None:
    # MONAI wraps what a component raises in a RuntimeError; augment's error is its cause.
    with pytest.raises(RuntimeError, match="sample_bundle") as raised:
        _run(bundle, out, **override)
    assert isinstance(raised.value.__cause__, error)
    assert match in str(raised.value.__cause__)


def test_run_writes_what_augment_sample_writes(bundle, model_dir, tmp_path):
    settings = {"num_samples": 7, "seed": 3, "sample#format": "npz", "sample#batch_size": 4}
    _run(bundle, tmp_path / "from_bundle", **settings)
    cfg = SampleConfig(n=7, seed=3, format="npz", batch_size=4, device="cpu")  # same batches:
    sample(cfg, model_dir, tmp_path / "direct")  # conv sums may round otherwise in other batches
    for name in ("samples.npz", "manifest.csv", "synthetic.json"):
        direct = (tmp_path / "direct" / name).read_bytes()
        assert (tmp_path / "from_bundle" / name).read_bytes() == direct, name
    synthetic = load_synthetic(tmp_path / "from_bundle")
    assert synthetic.images.shape == (7, 1, 32, 32)
    assert synthetic.masks is not None and synthetic.masks.shape == (7, 32, 32)
    assert sorted(set(synthetic.classes.tolist())) == [0, 1]


def test_run_defaults_to_nnunet_with_masks(bundle, tmp_path):
    _run(bundle, tmp_path / "synthetic", num_samples=4)
    synthetic = load_synthetic(tmp_path / "synthetic")
    assert (tmp_path / "synthetic" / "dataset.json").is_file()
    assert synthetic.images.shape == (4, 1, 32, 32)
    assert synthetic.images.min() >= -1 and synthetic.images.max() <= 1


def test_run_unconditional_multichannel_defaults_to_npz(plain_bundle, tmp_path):
    _run(plain_bundle, tmp_path / "synthetic", num_samples=3)
    synthetic = load_synthetic(tmp_path / "synthetic")
    assert (tmp_path / "synthetic" / "samples.npz").is_file()
    assert synthetic.images.shape == (3, 2, 32, 32) and synthetic.masks is None
    meta = json.loads((plain_bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "image: T1",
        "1": "image: FLAIR",
    }


def test_run_refuses_weights_changed_after_export(bundle, tmp_path):
    changed = tmp_path / "bundle"
    shutil.copytree(bundle, changed)
    state = torch.load(changed / "models" / "model.pt", weights_only=True)
    state["main.0.running_mean"] = state["main.0.running_mean"] + 1
    torch.save(state, changed / "models" / "model.pt")
    _refused(changed, tmp_path / "out", StoreError, "changed after export", num_samples=2)
    assert not (tmp_path / "out").exists()


def test_run_refuses_bad_sample_settings(bundle, tmp_path):
    _refused(bundle, tmp_path / "out", ConfigError, "batch_size", **{"sample#batch_size": 0})


@pytest.mark.slow
def test_monai_command_line_runs_the_bundle(bundle, tmp_path):
    pytest.importorskip("fire", reason="python -m monai.bundle needs fire")
    out = tmp_path / "synthetic"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", _files(bundle)[1]]
    command += ["--bundle_root", str(bundle), "--num_samples", "3", "--output_dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_synthetic(out).images.shape == (3, 1, 32, 32)


# --------------------------------------------------------------------------- export itself


def test_names_monai_would_run_are_refused(tmp_path):
    model = _model(tmp_path / "dcgan", SPEC, class_names=["normal", "$boom"], label_names=LABELS)
    with pytest.raises(StoreError, match="boom"):
        export(model, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_command_line(model_dir, tmp_path):
    runner = CliRunner()
    out = tmp_path / "bundle"
    args = ["export", "--model", str(model_dir), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "models" / "model.pt").is_file()
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output
    assert "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    wrong = runner.invoke(app, [*args, "--overwrite", "--format", "onnx"])
    assert wrong.exit_code == 1 and "monai-bundle" in wrong.output
    missing = runner.invoke(
        app, ["export", "--model", str(tmp_path / "no"), "--out", str(out) + "2"]
    )
    assert missing.exit_code == 1 and "not a model directory" in missing.output


def test_help_lists_every_export_format():
    text = " ".join(CliRunner().invoke(app, ["export", "--help"]).output.split())
    assert "Example: augment export" in text
    for name in EXPORTS.names():
        assert name in text
