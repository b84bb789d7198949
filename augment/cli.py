"""The ``augment`` command: one thin command per pipeline stage.

Each command reads its section of ``params.yaml`` (``--params``), lets options override it,
and hands a validated config to the stage's function. Errors that are the input's fault are
printed on one line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from augment import __version__
from augment.config import (
    EvaluateConfig,
    PhantomsConfig,
    PreprocessConfig,
    SampleConfig,
    TrainConfig,
    load,
)
from augment.errors import AugmentError
from augment.preprocessing.readers import READERS
from augment.sampling.formats import FORMATS
from augment.training.losses import LOSSES


class _Group(TyperGroup):
    """Typer's command group, adding to every option's help its ``params.yaml`` key and default.

    Options are grouped in the help: those a ``params.yaml`` section holds ("Settings"), and the
    paths and run options that live on the command line only.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and cmd_name in SECTIONS and not getattr(cmd, "_keys_shown", False):
            _show_keys(cmd, *SECTIONS[cmd_name])
            setattr(cmd, "_keys_shown", True)  # noqa: B010 - typer's Command has no such field
        return cmd


app = typer.Typer(
    cls=_Group,
    name="augment",
    help="Synthetic training data for medical imaging: preprocess, train, sample, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ParamsOpt = Annotated[
    Path | None,
    typer.Option(
        "--params",
        help="Parameter file; the stage reads its own section. [default: params.yaml if present]",
    ),
]
# Options preprocess and check share (check reports what preprocess would do with them).
LabelsOpt = Annotated[
    Path | None, typer.Option("--labels", help="CSV of patient,class (labels_from: csv).")
]
KeyFileOpt = Annotated[
    Path | None, typer.Option("--key-file", help="Secret key for pseudonyms (default: see docs).")
]
SliceSizeOpt = Annotated[int | None, typer.Option(help="Slice size S (32, 64, 128, 256).")]
WorkersOpt = Annotated[int | None, typer.Option(help="Parallel volume readers.")]
SplitSeedOpt = Annotated[int | None, typer.Option(help="Seed of the patient split.")]
LabelsFromOpt = Annotated[
    str | None, typer.Option("--labels-from", help="Slice classes from 'mask' or 'csv'.")
]
InputFormatOpt = Annotated[
    str | None, typer.Option("--format", help="Input format: auto, or " + READERS.help())
]
DEFAULT_PARAMS = Path("params.yaml")
# The params.yaml section each command reads, and its config model.
SECTIONS: dict[str, tuple[str, Any]] = {
    "phantoms": ("phantoms", PhantomsConfig),
    "check": ("preprocess", PreprocessConfig),
    "preprocess": ("preprocess", PreprocessConfig),
    "train": ("train", TrainConfig),
    "sample": ("sample", SampleConfig),
    "evaluate": ("evaluate", EvaluateConfig),
}
_KEY_OF = {"fmt": "format", "classes": "class_ratio"}  # option names that differ from their key


def _show_keys(cmd: Any, section: str, model: Any) -> None:
    """Append each option's params.yaml key and default to its help, and group the options."""
    for param in cmd.params:  # typer's click (vendored in typer >= 0.2x): options by their kind
        if param.param_type_name != "option" or param.name in (None, "params", "help"):
            continue
        key = _KEY_OF.get(param.name, param.name)
        field = model.model_fields.get(key)
        if field is None:
            param.rich_help_panel = "Paths and run"
            continue
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None else default
        param.help = f"{param.help or ''} (params.yaml: {section}.{key}; default: {shown})"
        param.rich_help_panel = f"Settings (params.yaml section {section})"


_state: dict[str, bool] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"augment {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print version.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a stage function, turning user-caused errors into one clear line."""
    if _state["debug"]:
        return fn(*args, **kwargs)
    try:
        return fn(*args, **kwargs)
    except AugmentError as exc:
        raise _fail(str(exc)) from None
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        raise _fail(f"{name}{exc.strerror or exc}") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        # numpy reports a short write (a full disk while saving an array) without an errno
        short = exc.errno is None and re.search(r"\d+ requested and \d+ written", str(exc))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or short:
            full = "no space left on the device (or quota exceeded)"
            raise _fail(f"{where or 'output: '}{full}") from None
        if exc.errno == errno.EROFS:
            advice = "read-only file system: choose an output folder you can write"
            raise _fail(f"{where}{advice}") from None
        raise


def _show(table: Any) -> None:
    """Print a stage's summary table: every stage's summary goes here, to stderr."""
    from rich.console import Console

    Console(stderr=True).print(table)


def _config(cls: Any, section: str, params: Path | None, **overrides: Any) -> Any:
    # params.yaml is optional; a file named with --params must exist (a typo is not "defaults").
    if params is not None and not params.exists():
        raise _fail(f"--params {params}: no such file")
    return _run(load, cls, section, params or DEFAULT_PARAMS, overrides)


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("data/phantoms"),
    patients: Annotated[int | None, typer.Option(help="Number of patients.")] = None,
    size: Annotated[int | None, typer.Option(help="In-plane matrix size.")] = None,
    slices: Annotated[int | None, typer.Option(help="Slices per volume.")] = None,
    prevalence: Annotated[
        float | None, typer.Option(help="Share of patients with lesions.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    params: ParamsOpt = None,
) -> None:
    """Write the demo data set: CT-like phantoms as DICOM series and NIfTI (MSD layout).

    Example: augment phantoms --out data/phantoms --patients 16 --seed 0
    """
    cfg = _config(
        PhantomsConfig, "phantoms", params,
        patients=patients, size=size, slices=slices, prevalence=prevalence, seed=seed,
    )  # fmt: skip
    from augment.phantoms.stage import make_phantoms, summary_table

    _show(summary_table(_run(make_phantoms, cfg, out)))


@app.command()
def preprocess(
    inputs: Annotated[
        list[Path], typer.Option("--input", "-i", help="Input root (repeatable): DICOM or NIfTI.")
    ],
    out: Annotated[Path, typer.Option("--out", help="SliceStore directory.")] = Path("data/slices"),
    labels: LabelsOpt = None,
    key_file: KeyFileOpt = None,
    size: SliceSizeOpt = None,
    workers: WorkersOpt = None,
    strict: Annotated[
        bool | None, typer.Option("--strict/--no-strict", help="Stop at the first bad input.")
    ] = None,
    seed: SplitSeedOpt = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--no-overwrite", help="Replace an existing store at --out."),
    ] = None,
    labels_from: LabelsFromOpt = None,
    fmt: InputFormatOpt = None,
    window: Annotated[
        str | None,
        typer.Option(
            help="Intensity window: auto, abdomen, lung, brain, bone or percentile "
            "(a center/width of your own: params.yaml)."
        ),
    ] = None,
    lesion_labels: Annotated[
        list[int] | None,
        typer.Option(
            "--lesion-labels", help="Mask label id that makes a slice a lesion slice (repeat)."
        ),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Turn DICOM series and NIfTI volumes into a patient-split SliceStore.

    Example: augment preprocess --input data/phantoms/dicom --out data/slices --size 64
    """
    cfg = _config(
        PreprocessConfig, "preprocess", params,
        size=size, workers=workers, strict=strict, seed=seed, labels_from=labels_from,
        format=fmt, overwrite=overwrite, window=window, lesion_labels=lesion_labels or None,
    )  # fmt: skip
    from augment.preprocessing.stage import preprocess as run_preprocess
    from augment.preprocessing.stage import summary_table

    _show(
        summary_table(_run(run_preprocess, cfg, inputs, out, labels_csv=labels, key_file=key_file))
    )


@app.command()
def check(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="Input roots: DICOM or NIfTI, as --input.", metavar="INPUT"),
    ] = None,
    more: Annotated[
        list[Path] | None, typer.Option("--input", "-i", help="Input root (repeatable).")
    ] = None,
    labels: LabelsOpt = None,
    key_file: KeyFileOpt = None,
    size: SliceSizeOpt = None,
    workers: WorkersOpt = None,
    seed: SplitSeedOpt = None,
    labels_from: LabelsFromOpt = None,
    fmt: InputFormatOpt = None,
    estimate: Annotated[
        bool,
        typer.Option("--estimate/--no-estimate", help="Time a few DCGAN steps (train section)."),
    ] = True,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report here as JSON.")
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """What preprocess would read, skip and store, and train's time; writes nothing.

    Exits 1 when no input is readable (after listing every skipped file and why).

    Example: augment check data/phantoms/nifti --size 64
    """
    roots = [*(inputs or []), *(more or [])]
    if not roots:
        raise _fail("check: expected an INPUT folder or file (or --input), got none")
    cfg = _config(
        PreprocessConfig, "preprocess", params,
        size=size, workers=workers, seed=seed, labels_from=labels_from, format=fmt,
    )  # fmt: skip
    train_cfg = _config(TrainConfig, "train", params) if estimate else None
    from augment.preprocessing.check import NothingToStore, summary
    from augment.preprocessing.check import check as run_check

    def check_and_show() -> None:
        try:
            report = run_check(cfg, roots, labels, key_file, train_cfg, json_out)
        except NothingToStore as exc:  # show every skipped file, then fail in one line
            _show(summary(exc.report))
            raise
        _show(summary(report))

    _run(check_and_show)


@app.command()
def train(
    data: Annotated[Path, typer.Option("--data", help="SliceStore directory.")] = Path(
        "data/slices"
    ),
    out: Annotated[Path, typer.Option("--out", help="Model directory.")] = Path("models/dcgan"),
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    loss: Annotated[str | None, typer.Option(help="GAN loss: " + LOSSES.help())] = None,
    fraction: Annotated[float | None, typer.Option(help="Share of train patients.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="A few tiny steps end to end, for smoke tests.")
    ] = False,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--no-overwrite", help="Replace a model at --out (no resume)."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Train in a folder here and move the model to --out when done; an interrupted "
            "run of the same data and settings resumes from it (dvc.yaml: a persisted output).",
        ),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Train the DCGAN on the train split of a SliceStore.

    Example: augment train --data data/slices --out models/dcgan --steps 2000
    """
    cfg = _config(
        TrainConfig, "train", params,
        steps=steps, batch_size=batch_size, loss=loss, fraction=fraction, device=device, seed=seed,
        overwrite=overwrite,
    )  # fmt: skip
    from augment.training.stage import summary_table
    from augment.training.stage import train as run_train

    summary = _run(run_train, cfg, data, out, resume=resume, dry_run=dry_run, state_dir=state_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the first process only
        _show(summary_table(summary))


@app.command()
def sample(
    n: Annotated[int | None, typer.Option("--n", help="Number of synthetic slices.")] = None,
    model: Annotated[Path, typer.Option("--model", help="Model directory.")] = Path("models/dcgan"),
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("data/synthetic"),
    fmt: Annotated[
        str | None, typer.Option("--format", help="Output format: " + FORMATS.help())
    ] = None,
    class_ratio: Annotated[
        str | None,
        typer.Option("--class-ratio", help="Per-class shares or counts, e.g. 'normal=1,lesion=3'."),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", help="Only this class (repeatable; equal shares)."),
    ] = None,
    png_bits: Annotated[int | None, typer.Option(help="PNG bit depth: 8 or 16.")] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed; the same seed gives the same files.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Generator batch size.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, ...")] = None,
    truncation: Annotated[
        float | None, typer.Option(help="Redraw noise entries with |z| above this value.")
    ] = None,
    merge_with_real: Annotated[
        Path | None,
        typer.Option(
            "--merge-with-real",
            help="Real data set to merge the samples into: nnU-Net v2 raw or Decathlon (MSD).",
        ),
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option("--overwrite/--no-overwrite", help="Replace an existing output."),
    ] = None,
    nnunet_raw: Annotated[
        Path | None,
        typer.Option(
            "--nnunet-raw",
            help="Write into DIR/Dataset<id>_<name> (your nnUNet_raw folder) instead of --out.",
        ),
    ] = None,
    dataset_id: Annotated[
        int | None, typer.Option("--dataset-id", help="nnU-Net dataset id (1-999).")
    ] = None,
    dataset_name: Annotated[
        str | None, typer.Option("--dataset-name", help="nnU-Net dataset name.")
    ] = None,
    accept: Annotated[
        str | None,
        typer.Option(
            "--accept",
            help="all (default), or consistent: keep only samples whose mask agrees with "
            "their class, redrawing up to 20x n; the acceptance rate is reported.",
        ),
    ] = None,
    params: ParamsOpt = None,
) -> None:
    """Sample a synthetic data set (nnU-Net layout by default) from a model directory.

    Example: augment sample --n 5000 --model models/dcgan --out data/synthetic
    """
    if class_ratio and classes:
        raise _fail("--class and --class-ratio: expected one of them, got both")
    ratio = _run(_parse_ratio, class_ratio) if class_ratio else None
    ratio = dict.fromkeys(classes, 1.0) if classes else ratio
    cfg = _config(
        SampleConfig, "sample", params,
        n=n, format=fmt, class_ratio=ratio, seed=seed, batch_size=batch_size, device=device,
        truncation=truncation, png_bits=png_bits, overwrite=overwrite, dataset_id=dataset_id,
        dataset_name=dataset_name, accept=accept,
    )  # fmt: skip
    from augment.sampling.stage import nnunet_dataset_dir, summary_table
    from augment.sampling.stage import sample as run_sample

    if nnunet_raw is not None:
        out = _run(nnunet_dataset_dir, cfg, nnunet_raw)

    _show(summary_table(_run(run_sample, cfg, model, out, merge_with_real=merge_with_real)))


def _parse_ratio(text: str) -> dict[str, float]:
    from augment.errors import ConfigError

    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"--class-ratio: expected name=number pairs, got {part!r}")
    return out


@app.command()
def export(
    model: Annotated[Path, typer.Option("--model", help="Model directory.")] = Path("models/dcgan"),
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path(
        "models/dcgan-bundle"
    ),
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="Export format: monai-bundle (configs/metadata.json, configs/inference.json "
            "that samples N slices, models/model.pt; MONAI's bundle tools verify and run it).",
        ),
    ] = "monai-bundle",
    overwrite: Annotated[
        bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing output.")
    ] = False,
) -> None:
    """Export a trained model directory for other tools (a MONAI bundle).

    Example: augment export --model models/dcgan --out models/dcgan-bundle --format monai-bundle
    """
    from augment.export import export as run_export

    summary = _run(run_export, model, out, fmt, overwrite)
    typer.echo(f"{summary['format']} -> {summary['out']}: {', '.join(summary['files'])}")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option("--data", help="SliceStore directory.")] = Path(
        "data/slices"
    ),
    model: Annotated[Path, typer.Option("--model", help="Model directory.")] = Path("models/dcgan"),
    synthetic: Annotated[Path, typer.Option("--synthetic", help="Synthetic set.")] = Path(
        "data/synthetic"
    ),
    out: Annotated[Path, typer.Option("--out", help="Reports directory.")] = Path("reports"),
    seeds: Annotated[int | None, typer.Option(help="Seeds per arm.")] = None,
    classifier: Annotated[str | None, typer.Option(help="small, densenet121 or resnet18.")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Classifier optimisation steps (the same in every arm).")
    ] = None,
    synthetic_ratio: Annotated[
        float | None, typer.Option(help="Synthetic slices per real training slice.")
    ] = None,
    inception_weights: Annotated[
        Path | None, typer.Option(help="Local Inception FID weights (adds standard FID).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, ...")] = None,
    params: ParamsOpt = None,
) -> None:
    """Measure whether synthetic slices help downstream models; check fidelity and copying.

    Exits 1 after writing the report when the memorisation check fails.

    Example: augment evaluate --data data/slices --synthetic data/synthetic --out reports
    """
    cfg = _config(
        EvaluateConfig, "evaluate", params,
        seeds=seeds, classifier=classifier, steps=steps, synthetic_ratio=synthetic_ratio,
        inception_weights=str(inception_weights) if inception_weights else None, device=device,
    )  # fmt: skip
    from augment.evaluation.memorisation import MemorisationError
    from augment.evaluation.stage import evaluate as run_evaluate
    from augment.evaluation.stage import summary_table

    def evaluate_and_show() -> None:
        try:
            summary = run_evaluate(cfg, data, model, synthetic, out)
        except MemorisationError as exc:  # the reports are written: show them, then fail
            _show(summary_table(exc.summary, out))
            raise
        _show(summary_table(summary, out))

    _run(evaluate_and_show)


@app.command()
def plots(
    revs: Annotated[
        list[str] | None,
        typer.Argument(
            help="Revisions to compare (commits, branches, dvc exp names); none: the workspace.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option("--target", help="Plot file or folder (repeat); none: every plot."),
    ] = None,
    x: Annotated[str | None, typer.Option("-x", help="Field for the x axis.")] = None,
    y: Annotated[str | None, typer.Option("-y", help="Field for the y axis.")] = None,
    template: Annotated[
        str | None, typer.Option(help="DVC plot template, e.g. gain_curve (.dvc/plots).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="The page to write.")] = Path(
        "dvc_plots/offline.html"
    ),
) -> None:
    """DVC's plots as one page with no scripts and no network (air-gapped workstations).

    Example: augment plots $(dvc exp ls --name-only) --target reports/plots/gain_classification.csv
    -x fraction -y gain_vs_real --template gain_curve
    """  # fmt: skip
    from augment.io.plots import offline_plots

    options = [a for k, v in (("-x", x), ("-y", y), ("--template", template)) if v for a in (k, v)]
    page, count = _run(offline_plots, revs or [], target or [], options, out)
    typer.echo(f"{count} plots -> {page}")


def main() -> None:
    """Console-script entry point."""
    app()
