"""Typed configuration, one model per stage, read from a section of ``params.yaml``.

Each stage's defaults live here; ``params.yaml`` overrides them, and command-line options
override ``params.yaml``. Validation is pydantic's: an unknown key, a wrong type or an
out-of-range value becomes a :class:`ConfigError` whose message names the key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from augment.errors import ConfigError
from augment.evaluation.fidelity import FIDELITY
from augment.evaluation.tasks import TASKS
from augment.preprocessing.readers import READERS
from augment.registry import Registry
from augment.sampling.formats import FORMATS
from augment.training.losses import LOSSES

InputFormat = Literal["dicom", "nifti"]
DiffAugPolicy = Literal["translation", "cutout", "color"]
WindowName = Literal["auto", "abdomen", "lung", "brain", "bone", "percentile"]
# The arms of the gain experiment: the training sets every downstream model is compared on.
Arm = Literal["real", "real_classic", "real_synthetic", "real_classic_synthetic"]
ARMS: tuple[Arm, ...] = get_args(Arm)
DEFAULT_ARMS: tuple[Arm, ...] = ("real", "real_classic", "real_synthetic")


def _default_formats() -> list[InputFormat]:
    return ["dicom", "nifti"]


def _default_diffaug() -> list[DiffAugPolicy]:
    return ["translation"]


def registered(registry: Registry[Any]) -> AfterValidator:
    """A pydantic validator admitting exactly the names of ``registry``."""
    return AfterValidator(registry.check)


def _reader_or_auto(name: str) -> str:
    return name if name == "auto" else READERS.check(name)


class _Section(BaseModel):
    # allow_inf_nan=False: a learning rate of .inf or a window of .nan is refused here, by name,
    # instead of training to non-finite weights or writing a NaN data set.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class PhantomsConfig(_Section):
    """The embedded demo data set: CT-like abdominal volumes with lesion masks."""

    patients: int = Field(32, ge=2, le=10_000, description="number of patients")
    size: int = Field(128, ge=32, le=1024, description="in-plane matrix size (pixels)")
    slices: int = Field(40, ge=4, le=2000, description="slices per volume")
    pixel_spacing: float = Field(2.8, gt=0, le=10, description="in-plane spacing (mm)")
    slice_thickness: float = Field(5.0, gt=0, le=20, description="slice spacing (mm)")
    prevalence: float = Field(0.5, ge=0, le=1, description="fraction of patients with lesions")
    noise_hu: float = Field(12.0, ge=0, le=200, description="std of the image noise (HU)")
    formats: list[InputFormat] = Field(default_factory=_default_formats, min_length=1)
    seed: int = Field(0, ge=0)
    workers: int = Field(0, ge=0, le=256, description="processes (0: one per CPU core)")


class WindowConfig(_Section):
    """An explicit intensity window (centre and width, in the image's units)."""

    center: float
    width: float = Field(gt=0)


class SplitConfig(_Section):
    """Fractions of patients per split; they must sum to 1."""

    train: float = Field(0.6, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {total:g}")
        if self.train <= 0:
            raise ValueError("the train fraction must be above 0")
        return self


class PreprocessConfig(_Section):
    """Volumes to patient-split 2D slices (the SliceStore)."""

    format: Annotated[str, AfterValidator(_reader_or_auto)] = Field(
        "auto", description="input reader, or auto: " + READERS.help()
    )
    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    size: Literal[32, 64, 128, 256] = 64
    window: WindowName | WindowConfig = Field(
        "auto",
        description="intensity window; auto: the abdomen preset for CT (HU), percentiles for "
        "MR and other modalities",
    )
    percentiles: tuple[float, float] = (0.5, 99.5)
    spacing: float | None = Field(None, gt=0, description="in-plane resampling (mm)")
    body_threshold: float | Literal["auto"] = Field(
        "auto",
        description="voxels above this count as body; auto: -500 HU for CT, Otsu's threshold of "
        "each volume for MR and other modalities",
    )
    min_body_fraction: float = Field(0.05, ge=0, le=1)
    labels_from: Literal["mask", "csv"] = "mask"
    min_lesion_pixels: int = Field(10, ge=1)
    lesion_labels: list[int] | None = Field(
        None, description="mask label ids that make a slice positive (None: any non-zero)"
    )
    class_names: list[str] = Field(default_factory=lambda: ["normal", "lesion"], min_length=1)
    channels: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        description="image channels to keep, by number (nnU-Net _0000, _0001...; 4D NIfTI); "
        "null: all of them",
    )
    mask_pattern: str | None = Field(
        None, description="mask file beside its image, e.g. '{case}_seg.nii.gz' (NIfTI)"
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_voxels: int = Field(
        2**28,
        ge=1,
        description="most voxels an input's header may declare (checked before reading)",
    )
    seed: int = Field(0, ge=0)
    workers: int = Field(1, ge=1, le=256)
    strict: bool = False
    overwrite: bool = Field(False, description="replace an existing slice store at --out")


class TrainConfig(_Section):
    """The DCGAN and its training run.

    The defaults are the recipe measured to work on the demo phantoms (see params.yaml's
    comment and docs/benchmarks.md): hinge loss, spectral norm in D, Adam(0, 0.9) at 4e-4,
    minibatch-std, class-conditional batch norm in G, soft masks at weight 0.25, balanced
    classes and DiffAugment translation. The plain Radford DCGAN is loss="bce",
    spectral_norm=False, d_batchnorm=True, beta1=0.5, lr 2e-4, diffaug=[]. The demo's
    params.yaml adds d_mask="local" (lesion-class samples then carry lesions; measured in
    docs/benchmarks.md); it stays "none" here because it needs a store with masks and classes.
    """

    nz: int = Field(100, ge=1, le=4096)
    ngf: int = Field(32, ge=4, le=1024)
    ndf: int = Field(32, ge=4, le=1024)
    projection: Literal["dense", "conv"] = "conv"
    loss: Annotated[str, registered(LOSSES)] = Field("hinge", description=LOSSES.help())
    spectral_norm: bool = True
    d_batchnorm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    mbstd_group: int = Field(
        4, ge=0, le=64, description="D's minibatch-std group size against collapse (0 = off)"
    )
    conditional: bool = True
    g_conditioning: Literal["cbn", "concat"] = Field(
        "cbn", description="class input of G: conditional batch norm, or embedding concat to z"
    )
    with_masks: Literal["auto", "yes", "no"] = "auto"
    hard_masks: bool = Field(
        False, description="D sees G's masks as straight-through one-hot (else tanh scores)"
    )
    mask_weight: float = Field(0.25, gt=0, le=1, description="scale of mask channels D sees")
    d_mask: Literal["none", "projection", "local"] = Field(
        "none",
        description="mask/image agreement in D: none; projection (class projection on D's "
        "features of the mask channels); local (a second D on crops around the lesion)",
    )
    attention: int = Field(
        0, ge=0, le=128, description="resolution of a SAGAN self-attention layer in G and D (0 off)"
    )
    grow_from: int = Field(
        0,
        ge=0,
        le=128,
        description="progressive growing (Karras et al. 2018): start at this resolution and "
        "double it every grow_steps steps, fading each new block in over half of them (0: off)",
    )
    grow_steps: int = Field(200, ge=2, description="steps per resolution of progressive growing")
    diffaug: list[DiffAugPolicy] = Field(
        default_factory=_default_diffaug,
        description="DiffAugment policies; translation keeps a small-data GAN off its training set",
    )
    ema_decay: float = Field(0.999, ge=0, lt=1)
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(32, ge=2)
    lr_g: float = Field(4e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    n_critic: int = Field(1, ge=1, le=20)
    gp_weight: float = Field(10.0, ge=0)
    r1_weight: float = Field(
        0.0,
        ge=0,
        description="R1 penalty gamma on D's gradient at real slices (Mescheder et al. 2018; "
        "0: off)",
    )
    r1_every: int = Field(
        16, ge=1, le=1000, description="apply R1 every N D steps, scaled by N (lazy, StyleGAN2)"
    )
    fraction: float = Field(1.0, gt=0, le=1, description="share of train patients used")
    balance_classes: bool = Field(True, description="draw every class equally often")
    seed: int = Field(0, ge=0)
    device: str = "auto"
    threads: int = Field(
        0, ge=0, le=256, description="torch CPU threads (0: the cores other processes leave free)"
    )
    overwrite: bool = Field(False, description="replace a model already at --out (not resuming)")
    compile: bool = False
    log_every: int = Field(50, ge=1)
    fidelity_every: int = Field(
        200,
        ge=0,
        description="score the EMA generator (FID, consistency) every N steps and keep "
        "the best snapshot as the model; 0: keep the last",
    )
    select_min_match: float = Field(
        0.0,
        ge=0,
        le=1,
        description="keep the lowest-FID snapshot among those whose every class's mask "
        "agreement is at least this (0: the lowest FID)",
    )
    fidelity_samples: int = Field(512, ge=16, le=20000)
    sample_every: int = Field(250, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    divergence_patience: int = Field(20, ge=1)


class SampleConfig(_Section):
    """Synthetic data sets from a trained model directory."""

    n: int = Field(1000, ge=1, le=10_000_000)
    format: Annotated[str, registered(FORMATS)] = Field("nnunet", description=FORMATS.help())
    class_ratio: dict[str, float] | None = None
    seed: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    device: str = "auto"
    truncation: float | None = Field(None, gt=0)
    png_bits: Literal[8, 16] = 8
    dataset_id: int = Field(501, ge=1, le=999)
    dataset_name: str = Field("AugmentSynthetic", pattern=r"^[A-Za-z0-9_-]+$")
    overwrite: bool = False
    accept: Literal["all", "consistent"] = Field(
        "all",
        description="all: keep every draw; consistent: keep only samples whose generated mask "
        "agrees with their class, redrawing up to 20x n",
    )

    @model_validator(mode="after")
    def _ratio_shares(self) -> SampleConfig:
        # Class names are checked against the model in augment.sampling.stage (only it knows them).
        shares = list((self.class_ratio or {}).values())
        if any(v < 0 for v in shares) or (shares and sum(shares) <= 0):
            raise ValueError(
                f"class_ratio: expected shares >= 0 with a positive sum, got {self.class_ratio}"
            )
        return self


class EvaluateConfig(_Section):
    """The downstream gain experiment, fidelity and memorisation checks."""

    tasks: list[Annotated[str, registered(TASKS)]] | None = Field(
        None,
        description="downstream tasks (null: every task the store supports; segmentation needs "
        "masks): " + TASKS.help(),
    )
    arms: list[Arm] = Field(
        default_factory=lambda: list(DEFAULT_ARMS),
        description="training sets compared (real and real_synthetic always; "
        "real_classic_synthetic asks whether synthetic slices help on top of classic "
        "augmentation, at a third more time)",
    )
    classifier: Literal["densenet121", "resnet18", "small"] = "small"
    seeds: int = Field(3, ge=1, le=50)
    steps: int = Field(400, ge=1, description="classifier steps, the same in every arm")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-3, gt=0, description="classifier peak learning rate (one-cycle)")
    val_checks: int = Field(4, ge=1, description="val scores per training (the curve)")
    select: Literal["last", "best"] = Field(
        "last", description="keep the last weights, or those of the best val check"
    )
    drop_ambiguous: bool = Field(
        True, description="leave slices with a lesion below min_lesion_pixels out of classification"
    )
    unet_width: int = Field(8, ge=4, le=128, description="segmentation UNet's first channels")
    seg_steps: int = Field(300, ge=1, description="segmentation steps, the same in every arm")
    seg_batch_size: int = Field(32, ge=2)
    seg_lr: float = Field(1e-2, gt=0, description="segmentation peak learning rate")
    synthetic_ratio: float = Field(1.0, ge=0)
    bootstrap: int = Field(1000, ge=100)
    memorisation_threshold: float = Field(0.05, ge=0, le=1)
    near_duplicate_corr: float = Field(
        0.985,
        gt=0,
        le=1,
        description="pixel correlation at which two slices count as one image (copies, leakage)",
    )
    max_leakage: float = Field(
        0.01, ge=0, le=1, description="share of held-out slices duplicating training slices"
    )
    copy_quantile: float = Field(
        0.99, ge=0.5, lt=1, description="share of held-out slices a copy comes closer than"
    )
    k: int = Field(5, ge=1)
    fidelity: list[Annotated[str, registered(FIDELITY)]] = Field(
        default_factory=lambda: list(FIDELITY.names()),
        min_length=1,
        description="fidelity metrics: " + FIDELITY.help(),
    )
    inception_weights: str | None = Field(
        None, description="local Inception-v3 FID weights (torch-fidelity); adds Inception FID"
    )
    device: str = "auto"
    workers: int = Field(
        0, ge=0, le=64, description="processes training arms on the CPU (0: one per core)"
    )
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _arms(self) -> EvaluateConfig:
        missing = [a for a in ("real", "real_synthetic") if a not in self.arms]
        if missing or len(set(self.arms)) != len(self.arms):
            raise ValueError(
                f"arms: expected distinct arms including real and real_synthetic (the headline "
                f"compares them), got {self.arms}"
            )
        return self


STAGES: dict[str, type[_Section]] = {
    "phantoms": PhantomsConfig,
    "preprocess": PreprocessConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
    "evaluate": EvaluateConfig,
}

C = TypeVar("C", bound=_Section)


def read_params(path: Path) -> dict[str, Any]:
    """Read a params file; a missing file means no overrides.

    Raises:
        ConfigError: the file is not a YAML mapping of stage sections.
    """
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{path}: expected a mapping of stage sections, got {kind}")
    for name in data:
        near = difflib.get_close_matches(str(name), list(STAGES), n=1, cutoff=0.75)
        if near and name not in STAGES:
            raise ConfigError(
                f"{path}: unknown section {str(name)[:40]!r}; did you mean {near[0]!r}?"
            )
    return data


def _quote(value: Any, limit: int = 80) -> str:
    """repr of a value, cut to ``limit`` characters (a YAML alias bomb must not flood a line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(cls: type[C], section: str, params: Path, overrides: dict[str, Any] | None = None) -> C:
    """Build one stage's config from its section of ``params`` and option overrides.

    Args:
        cls: the stage's config model.
        section: the key of the stage's section in the params file.
        params: path of the params file (missing: defaults only).
        overrides: values from command-line options; ``None`` values are ignored.

    Returns:
        The validated config.

    Raises:
        ConfigError: an unknown key, a wrong type or an out-of-range value, named.
    """
    found = read_params(params).get(section)
    if found is not None and not isinstance(found, dict):
        kind = type(found).__name__
        raise ConfigError(f"{params}: {section}: expected a mapping of keys, got {kind}")
    values = dict(found or {})
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, params, section, set(given))) from exc


_TYPE_NAMES = {"int", "float", "str", "bool", "list", "dict", "none", "tuple"}


def _is_type_tag(part: object) -> bool:
    """pydantic names the member of a union in ``loc`` ("literal['auto',...]", "WindowConfig",
    "float"): a type, not a key the user wrote."""
    if isinstance(part, int):
        return False
    text = str(part)
    return text in _TYPE_NAMES or not text.isidentifier() or not text.islower()


def _describe(exc: ValidationError, params: Path, section: str, options: set[str]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not _is_type_tag(p)]
    key = ".".join([section, *loc])
    # Blame the source of the value: a command-line option, or the params file.
    option = f"--{loc[0].replace('_', '-')} ({key})" if loc and loc[0] in options else ""
    where = option or f"{params}: {key}"
    if err["type"] == "extra_forbidden":
        return f"{params}: unknown key {key}"
    got = err.get("input")
    if err["type"] == "value_error":  # a registry's message already names the allowed values
        msg = str(err.get("ctx", {}).get("error", err["msg"]))
        return f"{where}: {msg}"
    if err["type"] == "literal_error":  # pydantic's own "literal[...]" text is not for users
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{where}: expected one of {allowed}, got {_quote(got)}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: {err['msg'].lower()}, got {_quote(got)}{more}"
