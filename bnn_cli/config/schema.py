"""The config file's schema (pydantic models) and its located validation.

A config has three sections, ``model``, ``data`` and ``training`` (and an optional
``runtime``: strategy and precision), plus ``name`` and
``plugins`` (Python files or modules to import so that custom quantizers and layers they
register can be named). Validation collects *every* problem in the file and reports each
with its file, line, column and key path; nothing in a config is ever executed.

The model section is structural here (layers are mappings with a ``type``);
:mod:`bnn_cli.config.checks` checks layer types and arguments against the registry, with
the same locations.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bnn_cli.config.source import (
    Document,
    Location,
    PathKey,
    apply_overrides,
    format_path,
    load_config_document,
)
from bnn_cli.errors import UserError, did_you_mean
from bnn_cli.rundir.run import NAME_PATTERN, safe_name

# ---------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never pass silently. So are NaN and
    infinity, which no setting means."""

    # A field with an alias (a stage's ``from``) is written back as the file spells it.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, serialize_by_alias=True)


# A run or model name: one folder name, and a valid TensorFlow name scope.
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=80)]


class Component(BaseModel):
    """A component named by ``type`` with its own arguments beside it."""

    model_config = ConfigDict(extra="allow")
    type: str

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# --- data section ----------------------------------------------------------------


class Rescale(Strict):
    """Map pixel values linearly from [0, max_value] to ``range`` (default [-1, 1])."""

    type: Literal["rescale"] = "rescale"
    max_value: float = Field(default=255.0, gt=0)
    range: tuple[float, float] = (-1.0, 1.0)


# Image sizes beyond this are typos; TensorFlow would try to allocate them (and can
# crash the process rather than raise) when the pipeline runs.
MAX_IMAGE_SIDE = 8192


ResizeMethod = Literal["bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                       "gaussian", "mitchellcubic"]
"""The methods ``tf.image.resize`` knows."""


class Resize(Strict):
    """Resize every image to height x width (``tf.image.resize``; the methods it knows)."""

    type: Literal["resize"] = "resize"
    height: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    width: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    method: ResizeMethod = "bilinear"


class Normalize(Strict):
    """(x - mean) / std, per channel (after any rescale)."""

    type: Literal["normalize"] = "normalize"
    mean: list[float] = Field(min_length=1)
    std: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> Normalize:
        # One value for all channels, or one per channel: the lists must pair up.
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("every std must be > 0")
        return self


class ResizeShorter(Strict):
    """Resize keeping the aspect ratio, so that the shorter side is ``size`` pixels."""

    type: Literal["resize_shorter"] = "resize_shorter"
    size: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    method: ResizeMethod = "bilinear"


class CenterCrop(Strict):
    """The centre height x width window of each image.

    With ``crop_fraction``, the centre window of that fraction of the shorter side (at
    the target's aspect ratio), resized to height x width: the Larq zoo's and timm's
    evaluation crop (0.875 = 224/256). JPEG files are then decoded only inside the window.
    """

    type: Literal["center_crop"] = "center_crop"
    height: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    width: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    crop_fraction: float | None = Field(default=None, gt=0, le=1)
    method: ResizeMethod = "bicubic"  # with crop_fraction


class RandomFlip(Strict):
    type: Literal["random_flip"] = "random_flip"
    mode: Literal["horizontal", "vertical", "horizontal_and_vertical"] = "horizontal"


class RandomCrop(Strict):
    """Pad by ``padding`` pixels on every side, then crop a random height x width window."""

    type: Literal["random_crop"] = "random_crop"
    height: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    width: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    padding: int = Field(default=0, ge=0, le=MAX_IMAGE_SIDE)


def _check_rectangle(area: tuple[float, float], aspect: tuple[float, float]) -> None:
    """A random rectangle's ranges: ``area`` a fraction of the image, ``aspect`` > 0."""
    if not 0 < area[0] <= area[1] <= 1:
        raise ValueError(f"area must be [low, high] with 0 < low <= high <= 1, got "
                         f"{list(area)}")
    if not 0 < aspect[0] <= aspect[1]:
        raise ValueError(f"aspect must be [low, high] with 0 < low <= high, got "
                         f"{list(aspect)}")


class RandomResizedCrop(Strict):
    """Inception-style crop: a random window covering ``area`` of the image at an aspect
    ratio (width / height) in ``aspect``, log-uniform, resized to height x width.

    TensorFlow's ``sample_distorted_bounding_box`` (10 attempts; if all fail, the centre
    crop below) as the Larq zoo, ReActNet and BNext train. It must be the first
    augmentation step: it runs on each decoded image before batching, and JPEG files are
    decoded only inside the window. At evaluation it becomes its deterministic
    counterpart, the centre ``eval_crop_fraction`` of the shorter side resized to
    height x width (``center_crop`` with ``crop_fraction``).
    """

    type: Literal["random_resized_crop"] = "random_resized_crop"
    height: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    width: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    area: tuple[float, float] = (0.08, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    method: ResizeMethod = "bicubic"
    eval_crop_fraction: float = Field(default=0.875, gt=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> RandomResizedCrop:
        _check_rectangle(self.area, self.aspect)
        return self


class ColorJitter(Strict):
    """Random brightness, contrast and saturation per image, in this order, on pixels
    in [0, 1] (whatever the preprocessing maps them to), clipped to [0, 1] after each:
    brightness adds a delta from [-brightness, brightness] (``tf.image``'s brightness);
    contrast scales each channel's distance from its mean by a factor from
    [1 - contrast, 1 + contrast] (``tf.image.adjust_contrast``); saturation blends with
    the grey image by a factor from [1 - saturation, 1 + saturation] (PIL's and
    torchvision's saturation; RGB only). 0 turns a part off."""

    type: Literal["color_jitter"] = "color_jitter"
    brightness: float = Field(default=0.0, ge=0, le=1)
    contrast: float = Field(default=0.0, ge=0, le=1)
    saturation: float = Field(default=0.0, ge=0, le=1)


class RandomErasing(Strict):
    """Random erasing (Zhong et al., AAAI 2020; Cutout, DeVries and Taylor 2017): with
    probability ``probability`` an image gets one rectangle set to black (what a black
    pixel becomes after the preprocessing). The rectangle covers a fraction of the image
    drawn uniformly from ``area``, at an aspect ratio (height / width) drawn log-uniformly
    from ``aspect``, at a uniform random place; where its side would exceed the image's
    it is cut to the image (torchvision draws again instead). torchvision's defaults."""

    type: Literal["random_erasing"] = "random_erasing"
    probability: float = Field(default=0.5, ge=0, le=1)
    area: tuple[float, float] = (0.02, 0.33)
    aspect: tuple[float, float] = (0.3, 3.3)

    @model_validator(mode="after")
    def _ranges(self) -> RandomErasing:
        _check_rectangle(self.area, self.aspect)
        return self


# AlexNet's PCA of ImageNet's RGB pixels (Krizhevsky et al. 2012, as fb.resnet.torch,
# ReActNet and BNext use it), for pixels in [0, 1].
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class Lighting(Strict):
    """AlexNet-style PCA lighting noise: each image gets ``eigvec @ (alpha * eigval)``
    added to every pixel, with ``alpha ~ N(0, alphastd)`` per image and component, on
    pixels in [0, 1] (whatever the preprocessing maps them to). RGB only."""

    type: Literal["lighting"] = "lighting"
    alphastd: float = Field(default=0.1, ge=0)
    eigval: tuple[float, float, float] = IMAGENET_EIGVAL
    eigvec: tuple[tuple[float, float, float], tuple[float, float, float],
                  tuple[float, float, float]] = IMAGENET_EIGVEC


PreprocessStep = Annotated[Rescale | Resize | Normalize | ResizeShorter | CenterCrop,
                           Field(discriminator="type")]
AugmentStep = Annotated[RandomFlip | RandomCrop | RandomResizedCrop | ColorJitter | Lighting
                        | RandomErasing, Field(discriminator="type")]
PIXEL_STEPS = (ColorJitter, Lighting, RandomErasing)
"""The augmentation steps that change pixels, never the image's size."""
GEOMETRY_STEPS = (Resize, ResizeShorter, CenterCrop, RandomCrop, RandomResizedCrop)
"""The steps that set an image's height and width."""

CACHE_BUDGET_MB = 2048


class DataConfig(Strict):
    """Where the examples come from and how they are prepared."""

    # A TFDS name, optionally "name:version" ("mnist:3.0.1"); or a folder: of images by
    # class (train/<class>/*.jpg, ...; or <class>/*.png, one split named "train"), or a
    # TFDS dataset directory prepared elsewhere (with dataset_info.json). A relative
    # folder is relative to the config file's folder.
    dataset: str = "sklearn_digits"
    data_dir: str | None = None  # TFDS data_dir; --data-dir wins; unset: $TFDS_DATA_DIR
    # TFDS splits, with slices. The validation split picks the best checkpoint, so by
    # default it is held out of the training data, never the test split.
    train_split: str = "train[:90%]"
    validation_split: str | None = "train[90%:]"  # after each epoch; None = no validation
    test_split: str = "test"  # reported for the chosen checkpoint; `bnn eval`'s default
    input_key: str = "image"
    label_key: str = "label"
    preprocessing: list[PreprocessStep] = Field(default_factory=lambda: [Rescale()])
    augmentation: list[AugmentStep] = Field(default_factory=list)  # training split only
    # Score the mean of the model's outputs on each image and on its mirror image:
    # validation (so the checkpoint chosen), the test, `bnn eval` and `bnn predict`
    # (bnn_cli.assemble.test_time). Training is unchanged; scoring costs twice.
    test_time_augmentation: Literal["horizontal_flip"] | None = None
    one_hot: bool = False  # one-hot labels (for categorical_crossentropy)
    # auto: hold a split in memory when it fits cache_budget_mb (decoded; encoded files
    # where a random_resized_crop decodes them anew each epoch), else read it each epoch.
    cache: bool | Literal["auto"] = "auto"
    cache_budget_mb: int = Field(default=CACHE_BUDGET_MB, ge=0)
    # 0 = no shuffling. Capped: tf.data segfaults on buffers of 2**31 and more.
    shuffle_buffer: int = Field(default=10_000, ge=0, le=10_000_000)
    # Image files of a folder are untrusted: one that is not an image, is truncated, is
    # in a format TensorFlow cannot decode, or claims more than max_pixels (PIL's
    # default budget) is an error naming it, or with `skip`, left out and counted.
    bad_images: Literal["error", "skip"] = "error"
    # At most PIL's own limit (178,956,970, twice its default), beyond which it refuses
    # to open a file at all.
    max_pixels: int = Field(default=89_478_485, gt=0, le=178_956_970)


# --- model section ---------------------------------------------------------------


LayerSpec = dict[str, Any]
"""A layer (``type`` + arguments), a block use (``block`` + parameters); see builder."""


class BlockDef(Strict):
    """A named, parameterized group of layers, used like a layer with ``block: NAME``.

    ``params`` maps parameter names to defaults (``null`` = required); inside ``layers``
    the string ``${name}`` stands for a parameter's value, ``input`` for the block input.
    """

    params: dict[str, Any] = Field(default_factory=dict)
    layers: list[LayerSpec] = Field(min_length=1)


class InputSpec(Strict):
    name: str = "input"
    shape: list[Annotated[int, Field(ge=1)] | None]  # None: any size
    dtype: str = "float32"


class ModelConfig(Strict):
    """The network: layers in order, or a graph of named layers with ``inputs``."""

    name: Name | None = None
    # default: one input shaped like the data
    inputs: list[InputSpec] | None = Field(default=None, min_length=1)
    defaults: dict[str, dict[str, Any]] = Field(default_factory=dict)  # layer type -> args
    blocks: dict[str, BlockDef] = Field(default_factory=dict)
    layers: list[LayerSpec] = Field(min_length=1)
    outputs: list[str] | None = None  # default: the last layer


class Schedule(Strict):
    """A learning-rate schedule over epochs, with optional linear warm-up."""

    type: Literal["constant", "exponential", "piecewise", "cosine", "linear"] = "constant"
    initial: float = Field(default=1e-3, gt=0)
    decay_rate: float = Field(default=0.96, gt=0)  # exponential: lr * rate^(epoch/steps)
    decay_epochs: float = Field(default=1.0, gt=0)
    boundaries: list[int] = Field(default_factory=list)  # piecewise: epoch boundaries
    values: list[float] = Field(default_factory=list)  # piecewise: len(boundaries) + 1
    alpha: float = Field(default=0.0, ge=0)  # cosine, linear: final lr / initial
    warmup_epochs: float = Field(default=0.0, ge=0)
    # step: a new rate every step; epoch: each epoch's rate held through it, as a
    # PyTorch scheduler stepped once an epoch (ReActNet's and AdamBNN's linear decay).
    per: Literal["step", "epoch"] = "step"


WEIGHT_KINDS = ("binary_kernels", "kernels", "norms", "biases", "shifts")
"""The kinds of trainable variable an optimizer's ``weight_decay: {KIND: RATE}`` names:
binary layers' latent kernels, other kernels (and embeddings), normalization layers'
scales and offsets, biases, and everything else (learned shifts and slopes, RPReLU's)."""


class OptimizerSpec(Component):
    """``{type: Adam, ...}``; ``{type: case, binary: {...}, default: {...}}`` pairs Bop
    (or any optimizer) for binary latent weights with another for the rest."""

    type: str = "Adam"


class EarlyStopping(Strict):
    monitor: str | None = None  # default: training.monitor
    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)


class Target(Strict):
    """Time to accuracy: a stage ends once its monitored metric reaches ``value`` (as
    ``training.monitor_mode`` reads better), and run.json's ``target`` records when the
    run's final model did: epoch, seconds and training compute."""

    value: float
    monitor: str | None = None  # default: training.monitor


class TrainingConfig(Strict):
    epochs: int = Field(default=10, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=1_000_000)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    learning_rate: Annotated[float, Field(gt=0)] | Schedule = 1e-3
    loss: str = "sparse_categorical_crossentropy"
    # Targets (1 - s) for the class and s / classes spread over all (Szegedy et al. 2016);
    # with the cross-entropy losses.
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    monitor: str = "val_accuracy"  # the metric that picks the best checkpoint
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    early_stopping: EarlyStopping | None = None
    target: Target | None = None
    seed: int | None = 0
    deterministic: bool = False  # TF op determinism: same seed -> same metrics
    steps_per_epoch: int | None = Field(default=None, ge=1)  # cap, for quick runs
    flip_ratio: bool = False  # track the flip ratio of binary kernels


# --- runtime section ---------------------------------------------------------------


class RuntimeConfig(Strict):
    """Where and in what precision training runs (see :mod:`bnn_cli.assemble.strategy`
    and :mod:`bnn_cli.assemble.mixed_precision`). ``training.batch_size`` is the global
    batch: it is split evenly over the replicas, so it must divide by their number."""

    # default: one device; mirrored: every local GPU (or `devices`); multi_worker_mirrored:
    # the hosts TF_CONFIG names; tpu: the TPU cores of TPUClusterResolver.
    strategy: Literal["default", "mirrored", "multi_worker_mirrored", "tpu"] = "default"
    # mirrored only: the devices to train on ("/gpu:0", ...); "/cpu:N" beyond the CPUs
    # the machine has splits the CPU into virtual devices (to try a config without GPUs).
    devices: list[Annotated[str, Field(pattern=r"^/?(device:)?(cpu|gpu|CPU|GPU):\d+$")]] \
        | None = Field(default=None, min_length=1)
    # Keras mixed precision: layers compute in float16/bfloat16, variables stay float32.
    # auto: mixed_float16 where every GPU trained on has tensor cores, float32 elsewhere
    # (bnn_cli.assemble.strategy.precision says why; run.json records the choice).
    mixed_precision: Literal["auto", "mixed_float16", "mixed_bfloat16"] | None = None
    # Compile the training step with XLA (`model.compile(jit_compile=...)`). Off by
    # default: on this project's 2-core CPU it made BNNs slower (scripts/benchmark.py).
    jit_compile: bool = False
    # Training steps per call into TensorFlow (`model.compile(steps_per_execution=...)`):
    # fewer Python round trips for small networks; batch hooks (the signal and NaN
    # checks) then run once per call.
    steps_per_execution: int = Field(default=1, ge=1, le=10_000)


class AttentionPair(Strict):
    """Attention transfer between a student layer and a teacher layer of the same
    spatial size (Zagoruyko & Komodakis, 2017; Real-to-Binary's stages)."""

    student: str
    teacher: str | None = None  # default: the layer of the same name


class TeacherInput(Strict):
    """How a teacher from elsewhere sees the student's input ``x`` (what the data
    pipeline gives): resized to ``size`` (bilinear), its channels reversed if ``channels:
    bgr``, then ``x * scale + offset`` per channel (in the teacher's channel order).
    E.g. a student normalized with ImageNet's ``mean`` and ``std`` and a teacher that
    takes RGB in 0-255 need ``scale = 255 * std``, ``offset = 255 * mean``; one with
    caffe preprocessing (BGR, 0-255, minus ``caffe_mean``) needs ``channels: bgr``,
    then ``scale = 255 * std`` and ``offset = 255 * mean - caffe_mean``, both reversed."""

    size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = None
    channels: Literal["rgb", "bgr"] = "rgb"
    scale: float | list[float] = 1.0
    offset: float | list[float] = 0.0


class Teacher(Strict):
    """One teacher: an earlier stage of this run, a run directory, or a Keras model
    file (``.h5``/``.keras``, vetted before loading: nothing in it runs), frozen."""

    model: str
    weight: float = Field(default=1.0, ge=0)  # its share of the soft-target term
    input: TeacherInput | None = None  # a model file's own preprocessing


class Distill(Strict):
    """Learn from one teacher or several: loss = label_weight * training.loss(labels)
    + kd_weight * sum over teachers of weight_i * T^2 * KL(softmax(teacher_i/T) ||
    softmax(student/T)) + attention_weight * sum over pairs of |a_s - a_t|_2, with a =
    the L2-normalized map of squared activations summed over channels
    (``attention_form: paper``); or the Larq zoo's form (``zoo``): the mean over pairs
    of the mean squared difference of the max-normalized maps of mean squared
    activations. ``teacher: NAME`` is ``teacher: [{model: NAME}]``."""

    teacher: str | Annotated[list[Teacher], Field(min_length=1)] = Field(
        union_mode="left_to_right")

    @property
    def teachers(self) -> list[Teacher]:
        return [Teacher(model=self.teacher)] if isinstance(self.teacher, str) \
            else self.teacher

    temperature: float = Field(default=1.0, gt=0)
    kd_weight: float = Field(default=1.0, ge=0)
    label_weight: float = Field(default=1.0, ge=0)
    attention: list[AttentionPair] = Field(default_factory=list)
    attention_weight: float = Field(default=1.0, ge=0)
    attention_form: Literal["paper", "zoo"] = "paper"


class Stage(Strict):
    """One step of a multi-stage recipe: the config with ``set`` applied (``KEY.PATH:
    VALUE``, as command-line overrides), starting from the weights of the stage before:
    the checkpoint it selected on validation (``from: best``), its last one (``last``,
    as ReActNet's step 2 starts), or none (fresh weights)."""

    name: Name
    set: dict[str, Any] = Field(default_factory=dict)
    distill: Distill | None = None
    start: Literal["best", "last", "none"] = Field(default="best", alias="from")


class ConfigFile(Strict):
    """A whole config file."""

    name: Name | None = None  # run name; default: the file's stem
    # The config this file changes (resolved when the file is read; listed for editors).
    extends: str | None = None
    plugins: list[str] = Field(default_factory=list)
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    stages: list[Stage] | None = Field(default=None, min_length=1)


# ---------------------------------------------------------------------------------------
# Validation with locations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a config, with where it is."""

    path: PathKey
    message: str
    location: Location

    def __str__(self) -> str:
        return f"{self.location}: {format_path(self.path)}: {self.message}"


class ConfigError(UserError):
    """Every problem found in a config, each with file, line, column and key path."""

    def __init__(self, problems: list[Problem], document: Document | None = None):
        self.document = document
        # A bad `defaults` entry applies to many layers: report each place once.
        unique = {(str(p.location), p.path): p for p in reversed(problems)}
        self.problems = sorted(unique.values(),
                               key=lambda p: (p.location.line or 0, str(p.path)))
        if len(self.problems) == 1:
            text = str(self.problems[0])
        else:
            lines = "\n".join(f"  {p}" for p in self.problems)
            text = f"the config has {len(self.problems)} problems:\n{lines}"
        super().__init__(text)


@dataclass
class Config:
    """A validated config together with the document it came from."""

    spec: ConfigFile
    document: Document
    path: Path | None

    @property
    def name(self) -> str:
        return self.spec.name or safe_name(self.path.stem if self.path else "run")

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> Problem:
        return Problem(path, message, self.document.locate(path, key=key))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config file; raise :class:`ConfigError` on problems."""
    doc = load_config_document(path)
    apply_overrides(doc, list(overrides or []))
    return validate(doc, Path(path))


def validate(doc: Document, path: Path | None = None) -> Config:
    if not isinstance(doc.data, dict):
        message = "a config must be a mapping with at least a `model:` section"
        raise ConfigError([Problem((), message, doc.locate(()))])
    try:
        spec = ConfigFile.model_validate(doc.data)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(err, doc) for err in exc.errors()]
        raise ConfigError(problems, doc) from None
    return Config(spec=spec, document=doc, path=path)


def _problem_from_pydantic(err: dict[str, Any], doc: Document) -> Problem:
    path = _data_path(doc.data, err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = _known_keys(err["loc"][:-1])
        message = f"unknown key {key!r}{did_you_mean(key, known)}"
        if known and not did_you_mean(key, known):
            message += f"; valid keys: {', '.join(sorted(known))}"
        return Problem(path, message, doc.locate(path, key=True))
    if kind == "missing":
        return Problem(path, f"required key {str(path[-1])!r} is missing", doc.locate(path))
    if kind == "union_tag_invalid":
        tag = err.get("ctx", {}).get("tag")
        expected = err.get("ctx", {}).get("expected_tags", "")
        return Problem(path, f"unknown type {tag!r}; expected one of {expected}",
                       doc.locate(path))
    if kind == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return Problem(path, f"{err.get('input')!r} is not a valid name: use letters, digits, "
                       "'_', '.' and '-', starting with a letter or digit", doc.locate(path))
    got = repr(err.get("input"))
    got = got if len(got) < 60 else got[:57] + "..."
    return Problem(path, f"{err['msg'].rstrip('.')} (got {got})", doc.locate(path))


def _data_path(data: Any, loc: tuple) -> PathKey:
    """Pydantic's location minus the parts that aren't in the data (union tags...)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict):
            pass  # a missing or unknown key: keep it as the last part
        else:
            continue  # a union member's tag, e.g. 'rescale' or 'float'
        path.append(part)
    return tuple(path)


def _known_keys(loc: tuple) -> set[str]:
    """Field names of the schema model(s) found at a pydantic location."""
    candidates: list[Any] = [ConfigFile]
    for part in loc:
        nxt: list[Any] = []
        for tp in candidates:
            for inner in _unwrap(tp):
                if _is_model(inner) and isinstance(part, str) and part in inner.model_fields:
                    nxt.extend(_unwrap(inner.model_fields[part].annotation))
                elif _is_model(inner) and isinstance(part, str):
                    continue
                else:
                    nxt.append(inner)  # list index / dict key / union tag: stay put
        candidates = nxt or candidates
    # (as the file spells them: a field's alias, e.g. a stage's `from`)
    return {field.alias or name for tp in candidates for inner in _unwrap(tp)
            if _is_model(inner) for name, field in inner.model_fields.items()}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> list[Any]:
    """Element/member types of Optional, Union, Annotated, list[...] and dict[str, ...]."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin in (list, tuple):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    return [tp]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file, from the same models that validate it.

    Layer ``type`` values are enumerated from the registry so editors can complete them.
    """
    schema = ConfigFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "bnn config"
    defs = schema.setdefault("$defs", {})
    defs["LayerSpec"] = _layer_json_schema()
    for name in ("ModelConfig", "BlockDef"):
        defs[name]["properties"]["layers"]["items"] = {"$ref": "#/$defs/LayerSpec"}
    return schema


def _layer_json_schema() -> dict[str, Any]:
    """A layer spec: ``type`` from the registry's layers, or a block use."""
    from bnn_cli.registry import REGISTRY, load_builtins  # imports TF: only for `bnn schema`

    load_builtins()
    quantizer = {"oneOf": [{"type": "string", "enum": REGISTRY.names("quantizer")},
                           {"type": "object", "required": ["type"]}, {"type": "null"}]}
    return {
        "type": "object",
        "description": "A layer (`type` + the layer's own arguments) or a block use "
                       "(`block` + parameters). `name`, `inputs` and `repeat` are "
                       "available on both.",
        "properties": {
            "type": {"type": "string", "enum": REGISTRY.names("layer")},
            "block": {"type": "string"},
            "name": {"type": "string"},
            "inputs": {"oneOf": [{"type": "string"},
                                 {"type": "array", "items": {"type": "string"}}]},
            "repeat": {"type": "integer", "minimum": 1},
            **{arg: quantizer for arg in ("input_quantizer", "kernel_quantizer",
                                          "depthwise_quantizer", "pointwise_quantizer")},
        },
        "oneOf": [{"required": ["type"]}, {"required": ["block"]}],
        "additionalProperties": True,
    }


def ensure_valid(problems: list[Problem]) -> None:
    if problems:
        raise ConfigError(problems)
